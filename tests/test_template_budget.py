"""Chat templates that grow a value without bound: each fails fast with the memory-budget error,
having allocated at most about the budget, and the same tokenizer, engine or server then serves
a normal chat. Each growing render runs in a process of its own so that its peak memory can be
read (VmHWM)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_server import _request, _start_server, _stop

import infire

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_models" / "llama_tied_mha"

BUDGET_ERROR = "memory budget of 128 MiB"

NS = "{% set ns = namespace(s='x') %}"
NESTED = (
    "{% set ns = namespace(l=['x']) %}"
    "{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
)
GROWING = {
    "namespace-concat": NS
    + "{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "string-plus": NS + "{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "string-repeat": NS + "{% for i in range(100) %}{% set ns.s = ns.s * 2 %}{% endfor %}",
    "list-plus": "{% set ns = namespace(l=[1]) %}"
    "{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    "list-building": NESTED + "{% set c %}{{ ns.l }}{% endset %}{{ c|length }}",
    "join": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000)|join|length }}",
    "str-join": "{% set s = 'x' * 1000000 %}{{ ''.join([s] * 100000)|length }}",
    "replace": NS + "{% for i in range(100) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}",
    "format": "{% set s = 'x' * 1000000 %}{{ ('{0}' * 100000).format(s)|length }}",
    "tojson": NESTED + "{{ (ns.l|tojson)|length }}",
    "macro-recursion": "{% macro grow(s, n) %}{% if n > 0 %}{{ grow(s ~ s, n - 1) }}"
    "{% endif %}{% endmacro %}{{ grow('x', 100) }}",
}

# Renders the model's template in a fresh process and reports the error, the time it took and
# how far the process's peak memory rose above where it stood before rendering.
RENDER = """
import json, sys, time, infire
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
tok = infire.load_tokenizer(sys.argv[1])
before = kib("VmRSS:")
started = time.monotonic()
try:
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
    error = None
except infire.TokenizerError as e:
    error = str(e)
seconds = time.monotonic() - started
growth_mb = (kib("VmHWM:") - before) / 1024
print(json.dumps({"error": error, "seconds": seconds, "growth_mb": growth_mb}))
"""


def _model_with_template(tmp_path: Path, template: str) -> Path:
    d = tmp_path / "model"
    shutil.copytree(TINY, d)
    (d / "chat_template.jinja").write_text(template)
    return d


@pytest.mark.parametrize("name", sorted(GROWING))
def test_growing_template_fails_fast_within_the_budget(tmp_path, name):
    d = _model_with_template(tmp_path, GROWING[name])
    out = subprocess.run(
        [sys.executable, "-c", RENDER, str(d)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["error"] is not None and BUDGET_ERROR in got["error"], got
    assert got["growth_mb"] < 300, got
    assert got["seconds"] < 1, got


# A template that grows only when the conversation says so: the same engine or server must
# then render the next, normal conversation.
TRIGGERED = (
    "{% set ns = namespace(s='x') %}{% for m in messages %}{% if m.content == 'grow' %}"
    "{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}"
)


def test_engine_serves_after_a_growing_template(tmp_path):
    d = _model_with_template(tmp_path, TRIGGERED)
    engine = infire.Engine(model=str(d), kv_cache_tokens=1024)
    with pytest.raises(infire.TokenizerError, match=BUDGET_ERROR):
        engine.chat([{"role": "user", "content": "grow"}])
    params = infire.SamplingParams(max_tokens=2, temperature=0.0)
    out = engine.chat([{"role": "user", "content": "hi"}], params)
    assert len(out[0].outputs[0].token_ids) == 2


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_server_answers_400_then_serves(tmp_path):
    d = _model_with_template(tmp_path, TRIGGERED)
    proc, base = _start_server(str(d), "--max-model-len", "256")
    try:
        path = "/v1/chat/completions"
        chat = {"model": "smol", "max_tokens": 2, "temperature": 0.0}
        peak = _peak_mb(proc.pid)
        started = time.monotonic()
        hostile = {**chat, "messages": [{"role": "user", "content": "grow"}]}
        grow = _request(base, "POST", path, hostile)
        assert time.monotonic() - started < 2
        assert grow.status_code == 400, grow.text
        assert BUDGET_ERROR in json.loads(grow.text)["error"]["message"]
        assert _peak_mb(proc.pid) - peak < 300
        normal = {**chat, "messages": [{"role": "user", "content": "hi"}]}
        ok = _request(base, "POST", path, normal)
        assert ok.status_code == 200, ok.text
        assert json.loads(ok.text)["usage"]["completion_tokens"] == 2
    finally:
        _stop(proc)
