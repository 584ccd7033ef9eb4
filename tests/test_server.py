"""The HTTP server (`infire serve`) end to end on the CPU, through the official `openai`
client: a live server process on the default model, small max_tokens throughout."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import infire

API_KEY = "test-key"
MODEL = "smol"
MAX_MODEL_LEN = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Response:
    """What the raw-HTTP helper returns: status, lower-cased headers and body text."""

    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status, headers, text

    def json(self):
        return json.loads(self.text)


def _request(
    base: str, method: str, path: str, body: bytes | dict | None = None, key: str | None = None
) -> _Response:
    """One request over a fresh connection (stdlib only, so no extra test dependency)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        return _Response(r.status, {k.lower(): v for k, v in r.getheaders()}, text)
    finally:
        conn.close()


def _get(base: str, path: str) -> _Response:
    return _request(base, "GET", path)


def _start_server(
    model_path: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "infire", "serve", "--model", model_path, "--port", str(port)]
    cmd += ["--served-model-name", MODEL, "--max-model-len", str(MAX_MODEL_LEN), *extra]
    given = env or {}
    env = {k: v for k, v in os.environ.items() if k not in ("INFIRE_API_KEY", "RUST_LOG")}
    env.update(given)
    # The server logs a line per request: into a file, which (unlike an unread pipe) never
    # fills up and blocks it. `proc.log_path` names it.
    log = tempfile.NamedTemporaryFile(prefix="infire-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stderr=log, text=True, env=env)
    log.close()
    proc.log_path = log.name
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {_log_text(proc)}")
        try:
            if _get(base, "/health").status_code == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy in 120 s")


def _log_text(proc: subprocess.Popen) -> str:
    """What a server started by `_start_server` wrote to stderr so far."""
    with open(proc.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    os.unlink(proc.log_path)


@pytest.fixture(scope="module")
def server(default_model_path):
    proc, base = _start_server(default_model_path, "--api-key", API_KEY)
    yield base
    _stop(proc)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return infire.load_tokenizer(default_model_path)


CHAT = [{"role": "user", "content": "Name three colors."}]


def _metrics(base: str) -> dict[str, float]:
    text = _get(base, "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # One model: its `model` label is left out of the key.
            labels = {k: v for k, v in s.labels.items() if k != "model"}
            key = s.name + (json.dumps(labels, sort_keys=True) if labels else "")
            out[key] = s.value
    return out


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id == MODEL
    # infire's fields: the default GGUF model on the CPU has no FP8 weights and an f32 cache.
    assert (model.quantization, model.kv_cache_dtype) == (None, "float32")


def test_health(server):
    assert _get(server, "/health").status_code == 200


def test_completion_usage_counts_prompt_tokens(client, tokenizer):
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=True))
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].text


def test_completion_prompt_forms(client, tokenizer):
    ids = tokenizer.encode("Once upon a time", add_special_tokens=True)
    by_text = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0
    )
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = client.completions.create(
        model=MODEL, prompt=["Hello", "Once upon a time"], max_tokens=4, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == by_text.choices[0].text
    lists = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=4, temperature=0)
    assert [c.text for c in lists.choices] == [by_text.choices[0].text] * 2
    echo = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, echo=True
    )
    assert echo.choices[0].text == "Once upon a time" + by_text.choices[0].text


def test_chat_usage_and_greedy_stream_matches(client, tokenizer):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert full.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))
    assert full.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_stream_matches(client):
    full = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=10, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="1, 2, 3,", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "stream": True}
    r = _request(server, "POST", "/v1/completions", body, key=API_KEY)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"


def test_n_and_seeds(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.0)
    two = client.chat.completions.create(n=2, seed=7, **kw)
    assert [c.index for c in two.choices] == [0, 1]
    again = client.chat.completions.create(n=2, seed=7, **kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    assert two.usage.completion_tokens > 8  # both choices count
    a = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=8, seed=3)
    b = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=8, seed=3)
    assert a.choices[0].text == b.choices[0].text


def test_stop_string(client):
    full = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=10, temperature=0)
    text = full.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    cut = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=10, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completion_logprobs(client):
    r = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) == 3 for t in lp.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert max(top.values()) == pytest.approx(chosen)
        assert tok in top
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_completion_echo_with_logprobs_covers_the_prompt(client, tokenizer, engine):
    """echo + logprobs: the prompt's tokens come first, the first with null (nothing predicts
    it), the others with the engine's prompt log-probabilities; streamed chunks add up to the
    same tokens and log-probabilities."""
    prompt = "The capital of France is"
    ids = tokenizer.encode(prompt)
    kw = dict(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=2, echo=True)
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(prompt)
    assert len(lp.tokens) == len(ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    want = engine.generate(
        ids, infire.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    )[0].prompt_logprobs
    for pos in range(1, len(ids)):
        assert abs(lp.token_logprobs[pos] - want[pos][ids[pos]]) < 1e-4, pos
    chunks = list(client.completions.create(stream=True, **kw))
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_echo_with_max_tokens_0_scores_the_prompt(client, tokenizer, engine):
    """echo + max_tokens 0 (vLLM's prompt scoring, as lm-evaluation-harness asks for
    log-likelihoods): the prompt with its log-probabilities, no generated token, streamed or
    not."""
    prompt = "The capital of France is Paris"
    ids = tokenizer.encode(prompt)
    kw = dict(model=MODEL, prompt=prompt, max_tokens=0, temperature=0, logprobs=1, echo=True)
    r = client.completions.create(**kw)
    (c,) = r.choices
    assert c.text.startswith(prompt) and c.finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    lp = c.logprobs
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == c.text
    assert lp.token_logprobs[0] is None
    want = engine.generate(
        ids, infire.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)
    )[0].prompt_logprobs
    for pos in range(1, len(ids)):
        assert abs(lp.token_logprobs[pos] - want[pos][ids[pos]]) < 1e-4, pos
        assert ids[pos] in want[pos] and len(lp.top_logprobs[pos]) in (1, 2)
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(ch.choices[0].text for ch in chunks) == c.text
    tokens = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert tokens == lp.tokens
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=0)


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)


def test_auth(server):
    for key in ("wrong", None):
        c = openai.OpenAI(base_url=f"{server}/v1", api_key=key or "x", max_retries=0)
        if key is None:
            r = _get(server, "/v1/models")
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
            continue
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    # /health and /metrics stay open.
    assert _get(server, "/metrics").status_code == 200


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("n", 0),
        ("presence_penalty", 5.0),
        ("max_tokens", 0),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", **{"max_tokens": 4, field: value})
    assert field in str(e.value)
    assert e.value.body["param"] == field


def test_unsupported_chat_fields_are_400(client):
    # The deprecated `functions` form of tools (tools and response_format: test_tools.py,
    # test_structured.py).
    functions = [{"name": "f", "parameters": {}}]
    with pytest.raises(openai.BadRequestError, match="functions"):
        client.chat.completions.create(model=MODEL, messages=CHAT, functions=functions)
    ok = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=2, response_format={"type": "text"}
    )
    assert ok.choices[0].finish_reason == "length"


def test_text_parts_content(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name three colors."}]}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=5, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_overlong_prompt_is_400(client):
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.completions.create(model=MODEL, prompt="hello " * 2 * MAX_MODEL_LEN, max_tokens=2)


def test_body_too_large_is_413(server):
    body = json.dumps({"model": MODEL, "prompt": "x" * (9 << 20)}).encode()
    # The server reads (and drops) the body before answering, so the client always gets to
    # read the 413 rather than a broken pipe.
    for _ in range(5):
        r = _request(server, "POST", "/v1/completions", body, key=API_KEY)
        assert r.status_code == 413
        assert "exceeds the limit" in r.json()["error"]["message"]


def test_malformed_json_is_400(server):
    r = _request(server, "POST", "/v1/completions", b"{not json", key=API_KEY)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_32_concurrent_streams(client):
    def one(i: int) -> tuple[str, str]:
        stream = client.completions.create(
            model=MODEL, prompt=f"Count to {i}:", max_tokens=6, temperature=0, stream=True
        )
        chunks = list(stream)
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32
    assert all(reason in ("stop", "length") for _, reason in results)


def test_disconnect_mid_stream_frees_blocks(server):
    body = {
        "model": MODEL,
        "prompt": "Write a long story.",
        "max_tokens": 800,
        "ignore_eos": True,
        "stream": True,
    }
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    got = [r.readline() for _ in range(6)]
    assert any(line.startswith(b"data: ") for line in got)
    assert _metrics(server)["infire_kv_cache_blocks_used"] > 0
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = _metrics(server)
        if m["infire_kv_cache_blocks_used"] == 0 and m["infire_num_requests_running"] == 0:
            break
        time.sleep(0.1)
    m = _metrics(server)
    assert m["infire_kv_cache_blocks_used"] == 0
    assert m["infire_num_requests_running"] == 0


def _wait_idle(server: str, seconds: float = 10) -> dict[str, float]:
    """The server's metrics once no request runs and no KV block is used (or at the deadline)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = _metrics(server)
        if m["infire_kv_cache_blocks_used"] == 0 and m["infire_num_requests_running"] == 0:
            break
        time.sleep(0.1)
    return _metrics(server)


def test_disconnect_before_a_whole_answer_aborts_it(server):
    """A non-streamed request whose client leaves is aborted too (vLLM's with_cancellation), not
    run to its max_tokens for nobody."""
    body = {"model": MODEL, "prompt": "Write a long story.", "max_tokens": 800}
    body["ignore_eos"] = True
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    deadline = time.monotonic() + 30
    while _metrics(server)["infire_num_requests_running"] == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)
    started = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    m = _wait_idle(server)
    assert m["infire_num_requests_running"] == 0 and m["infire_kv_cache_blocks_used"] == 0
    # 800 tokens take this model several seconds on the CPU; the abort takes a step or two.
    assert time.monotonic() - started < 5


def test_completion_top_logprobs_hold_the_sampled_token_and_offsets_count_characters(client):
    """As vLLM's completions: each position's top_logprobs has the top k and the token itself
    (k + 1 entries where it is not among them); text_offset counts characters, not bytes."""
    r = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=24, temperature=1.5, seed=7, logprobs=0
    )
    lp = r.choices[0].logprobs
    assert all(list(top) == [tok] for tok, top in zip(lp.tokens, lp.top_logprobs, strict=True))
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[tok] == pytest.approx(chosen)
    prompt = "Café, élève, naïve: déjà vu"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=0, echo=True
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]


def test_stream_options_need_stream(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(
            model=MODEL, prompt="Hi", max_tokens=2, stream_options={"include_usage": True}
        )
    assert e.value.body["param"] == "stream_options"


def test_tool_choice_auto_without_tools_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, tool_choice="auto")
    assert e.value.body["param"] == "tool_choice"
    ok = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=2, tool_choice="none"
    )
    assert ok.choices[0].message.content is not None


def test_response_ids_are_random(client):
    ids = [client.completions.create(model=MODEL, prompt="Hi", max_tokens=1).id for _ in range(3)]
    ids.append(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1).id)
    assert len(set(ids)) == 4
    for i in ids:
        prefix, _, suffix = i.rpartition("-")
        assert prefix in ("cmpl", "chatcmpl") and len(suffix) == 32, i
        int(suffix, 16)


def test_streamed_chunks_carry_usage_null_until_the_last(server):
    """With include_usage, every chunk but the last has "usage": null (OpenAI's stream), and no
    chunk is empty (held-back text sends nothing)."""
    for path, body in [
        ("/v1/completions", {"prompt": "Count: one, two,", "stop": [" five"]}),
        ("/v1/chat/completions", {"messages": CHAT, "stop": ["blue"]}),
    ]:
        body = {"model": MODEL, "max_tokens": 24, "temperature": 0, "stream": True, **body}
        body["stream_options"] = {"include_usage": True}
        text = _request(server, "POST", path, body, key=API_KEY).text
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        *chunks, last = events
        assert last["usage"]["completion_tokens"] > 0 and last["choices"] == []
        assert chunks and all("usage" in c and c["usage"] is None for c in chunks), path
        for c in chunks[1:] if path.endswith("chat/completions") else chunks:
            (choice,) = c["choices"]
            delta = choice.get("delta", choice)
            assert delta.get("content") or delta.get("text") or choice["finish_reason"], c


def test_text_parts_are_joined_by_newlines(client):
    """As vLLM joins a message's text parts."""
    parts = [{"type": "text", "text": "Name three"}, {"type": "text", "text": "colors."}]
    a = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    joined = [{"role": "user", "content": "Name three\ncolors."}]
    b = client.chat.completions.create(model=MODEL, messages=joined, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_unsatisfiable_regex_is_400(client):
    """A valid regex that no text matches is refused when the request arrives (not a 500 at
    its first step)."""
    with pytest.raises(openai.BadRequestError, match="regex"):
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=4,
            extra_body={"guided_regex": "[^\\s\\S]"},
        )


def test_metrics_parse(server, client):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    text = _get(server, "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "infire_requests",
        "infire_prompt_tokens",
        "infire_generation_tokens",
        "infire_time_to_first_token_seconds",
        "infire_inter_token_latency_seconds",
        "infire_e2e_request_latency_seconds",
        "infire_num_requests_running",
        "infire_num_requests_waiting",
        "infire_kv_cache_usage_ratio",
        "infire_prefix_cache_hit_rate",
        "infire_preemptions",
    ):
        assert name in families, name
    # The gauges a vLLM scraper reads (llm-d's endpoint picker, dashboards), by vLLM's names.
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
    ):
        assert name in families, name
    usage = families["vllm:kv_cache_usage_perc"].samples[0]
    assert usage.labels == {"model_name": MODEL} and 0.0 <= usage.value <= 1.0
    info = families["vllm:cache_config_info"].samples[0].labels
    assert int(info["block_size"]) > 0 and int(info["num_gpu_blocks"]) > 0
    # The CPU's cache holds f32; its capacity is labelled with that type.
    assert info["cache_dtype"] == "float32"
    (capacity,) = families["infire_kv_cache_capacity_tokens"].samples
    assert capacity.labels == {"model": MODEL, "dtype": "float32"}
    assert capacity.value == int(info["block_size"]) * int(info["num_gpu_blocks"])
    m = _metrics(server)
    assert m['infire_requests_total{"status": "200"}'] > 0
    assert m['infire_requests_total{"status": "401"}'] > 0
    assert m["infire_generation_tokens_total"] > 0
    assert m["infire_time_to_first_token_seconds_count"] > 0


def test_full_waiting_queue_is_429(default_model_path):
    proc, base = _start_server(default_model_path, "--max-waiting", "0")
    try:
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        r = _request(base, "POST", "/v1/completions", body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        # Ctrl-C with nothing running: a prompt, clean exit.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc)


def test_sigterm_lets_running_stream_finish(default_model_path):
    proc, base = _start_server(default_model_path)
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    stream = c.completions.create(
        model=MODEL,
        prompt="Write a story.",
        max_tokens=40,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    first = next(it)
    proc.send_signal(signal.SIGTERM)
    rest = list(it)
    chunks = [first, *rest]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices[0].text) > 1
    assert proc.wait(timeout=30) == 0


def test_usage_reports_the_prompt_tokens_served_from_the_prefix_cache(client):
    """OpenAI's ``usage.prompt_tokens_details.cached_tokens``: none the first time a long prompt
    is seen, its full blocks the second time (also in a stream's usage chunk)."""
    prompt = "The history of the printing press in Europe. " * 12
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < again.usage.prompt_tokens, again.usage
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
