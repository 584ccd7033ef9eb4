"""The server as vLLM and OpenAI clients use it (through the official ``openai`` client where
the route is OpenAI's): unknown fields refused by name (or ignored with
``--allow-unknown-fields``), vLLM's extension fields honoured, ``GET /v1/models/{id}``, JSON
bodies on 405, and the logs: one access line per request, errors, shutdown, ``RUST_LOG`` and
JSON lines."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import openai
import pytest
from test_server import MODEL, _log_text, _request, _start_server, _stop

TINY = Path(__file__).parent / "fixtures" / "tiny_models" / "qwen3_qk_norm"
QWEN3_END = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def json_server(default_model_path):
    proc, base = _start_server(default_model_path, "--log-format", "json")
    yield proc, base
    _stop(proc)


@pytest.fixture(scope="module")
def client(json_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{json_server[1]}/v1", api_key="unused", max_retries=0)


def _log_records(proc, wait_for: str | None = None) -> list[dict]:
    """The server's JSON log lines so far (waiting up to 5 s for one containing ``wait_for``:
    a stream's line is written once its body is done)."""
    deadline = time.monotonic() + 5
    while True:
        text = _log_text(proc)
        if wait_for is None or wait_for in text or time.monotonic() > deadline:
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        time.sleep(0.05)


def test_unknown_fields_are_a_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(
            model=MODEL, prompt="Hi", max_tokens=2, extra_body={"foo": 1, "top_kk": 5}
        )
    assert "foo" in e.value.message and "top_kk" in e.value.message
    assert e.value.body["param"] == "foo"
    with pytest.raises(openai.BadRequestError, match="guided_decoding_backend"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            extra_body={"guided_decoding_backend": "xgrammar"},
        )


def test_vllm_fields_are_honoured(client):
    # Without the chat template the model ends this question at once.
    r = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=20, temperature=0)
    assert r.usage.completion_tokens < 5 and r.choices[0].finish_reason == "stop"
    r = client.completions.create(
        model=MODEL, prompt=QUESTION, max_tokens=20, temperature=0, extra_body={"min_tokens": 8}
    )
    assert r.usage.completion_tokens >= 8
    prompt = "1, 2, 3, 4,"
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    text = free.choices[0].text
    assert " 7" in text
    r = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        stop=[" 7"],
        extra_body={"include_stop_str_in_output": True},
    )
    assert r.choices[0].text == text[: text.index(" 7") + 2]
    assert r.choices[0].model_extra["stop_reason"] == " 7"
    msgs = [{"role": "user", "content": "Say hello."}]
    kept = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=60,
        temperature=0,
        extra_body={"ignore_eos": True, "skip_special_tokens": False},
    )
    assert "<|im_end|>" in kept.choices[0].message.content


def test_models_by_id_and_405_bodies(client, json_server):
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    with pytest.raises(openai.NotFoundError, match="org/other"):
        client.models.retrieve("org/other")
    r = _request(json_server[1], "GET", "/v1/completions")
    assert r.status_code == 405
    assert "GET" in r.json()["error"]["message"]


def test_access_log_lines(client, json_server):
    proc = json_server[0]
    r = client.completions.create(model=MODEL, prompt="The capital", max_tokens=3, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    streamed = sum(1 for c in stream if c.choices and c.choices[0].delta.content)
    assert streamed > 0
    records = _log_records(proc, wait_for="/v1/chat/completions")
    access = [x for x in records if x.get("target") == "infire::access"]
    # The health checks that waited for the server are probes: debug level, not logged here.
    assert not [x for x in access if x["path"] == "/health"]
    done = [x for x in access if x["path"] == "/v1/completions" and x["status"] == 200]
    assert done, access
    line = done[-1]
    assert line["method"] == "POST" and line["model"] == MODEL
    assert line["prompt_tokens"] == r.usage.prompt_tokens and line["output_tokens"] == 3
    assert line["ttft_ms"] > 0 and line["total_ms"] >= line["ttft_ms"]
    chat = [x for x in access if x["path"] == "/v1/chat/completions"]
    assert chat and chat[-1]["output_tokens"] == 4 and chat[-1]["status"] == 200
    # Refused requests get their line and the error's message.
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    records = _log_records(proc, wait_for="does not exist")
    assert any(x.get("status") == 404 and x.get("target") == "infire::access" for x in records)
    assert any(x["level"] == "WARN" and "does not exist" in x["message"] for x in records)


def test_rust_log_unknown_fields_allowed_kwargs_and_shutdown(tmp_path):
    model = tmp_path / "qwen3"
    shutil.copytree(TINY, model)
    (model / "chat_template.jinja").write_text(QWEN3_END)
    proc, base = _start_server(
        str(model),
        "--allow-unknown-fields",
        "--max-model-len",  # the tiny model's context
        "256",
        env={"RUST_LOG": "info,infire::access=off"},
    )
    try:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        plain = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
        off = c.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=1,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}, "foo": 1},
        )
        # The template wrote the empty thinking block: more prompt tokens.
        assert off.usage.prompt_tokens > plain.usage.prompt_tokens
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = _log_text(proc)
    finally:
        _stop(proc)
    assert "ignoring unknown request fields" in log and "foo" in log
    assert "infire::access" not in log  # RUST_LOG turned the access lines off
    assert "shutdown signal received" in log and "server stopped" in log
