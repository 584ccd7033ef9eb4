"""A node of several models in one server (`infire serve --config node.toml`) on the CPU:
routing by name, outputs identical to each model alone, budgets checked at start, sleep /
wake / load / unload with the memory measured, on-demand loading with LRU sleep, and no request
lost on the way (each completes or gets an error naming why)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from node_server import Node, admin, complete, request, run_to_exit, write_config
from prometheus_client.parser import text_string_to_metric_families

import infire

ROOT = "root-key"
BATCH = "batch-key"
PROMPT = "The capital of France is"
MiB = 1 << 20


def _config(path: str) -> str:
    # a and b fit beside each other in node_memory; c (on demand) needs one of them asleep.
    return write_config(
        f"""
[server]
api_key = "{ROOT},{BATCH}=batch"
node_memory = {1700 * MiB}
max_waiting_batch = 0
wake_timeout = 120

[[models]]
model = "{path}"
served_model_name = "a"
aliases = ["alpha"]
memory = "500MiB"
max_model_len = 512

[[models]]
model = "{path}"
served_model_name = "b"
dtype = "float32"
memory = "1000MiB"
max_model_len = 512
max_num_seqs = 4

[[models]]
model = "{path}"
served_model_name = "c"
on_demand = true
memory = "500MiB"
max_model_len = 512
"""
    )


@pytest.fixture(scope="module")
def node(default_model_path):
    n = Node("--config", _config(default_model_path))
    n.key = ROOT
    yield n
    n.stop()


def _text(r) -> str:
    assert r.status == 200, r.text
    return r.json()["choices"][0]["text"]


def _alone(path: str, **options) -> str:
    """The greedy completion of PROMPT by the model served alone, in process."""
    engine = infire.Engine(model=path, device="cpu", max_model_len=512, **options)
    params = infire.SamplingParams(max_tokens=8, temperature=0)
    return engine.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].text


def test_models_answer_by_name_as_each_alone(node, default_model_path):
    models = node.models()
    assert [models[m]["state"] for m in "abc"] == ["ready", "ready", "unloaded"]
    assert models["a"]["aliases"] == ["alpha"]
    a = _text(complete(node.base, "a", PROMPT, key=ROOT))
    assert _text(complete(node.base, "alpha", PROMPT, key=ROOT)) == a
    b = _text(complete(node.base, "b", PROMPT, key=ROOT))
    assert a == _alone(default_model_path)
    assert b == _alone(default_model_path, dtype="float32", max_num_seqs=4)
    r = complete(node.base, "b", PROMPT, key=ROOT)
    assert r.json()["model"] == "b"


def test_an_unknown_model_is_a_404_in_openais_shape(node):
    r = complete(node.base, "nope", PROMPT, key=ROOT)
    assert r.status == 404
    err = r.json()["error"]
    assert (err["code"], err["type"], err["param"]) == (
        "model_not_found",
        "not_found_error",
        "model",
    )
    assert "`a`" in err["message"] and "`c`" in err["message"]


def test_metrics_are_labelled_by_model_and_class(node):
    complete(node.base, "a", PROMPT, key=ROOT)
    text = request(node.base, "GET", "/metrics").text
    samples = {
        (s.name, s.labels.get("model"), s.labels.get("class")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("infire_generation_tokens_total", "a", None)] > 0
    assert ("infire_generation_tokens_total", "c", None) in samples
    assert samples[("infire_model_ready", "c", None)] == 0
    assert samples[("infire_class_generation_tokens_total", "a", "interactive")] > 0


def test_classes_keys_and_priority_are_checked(node):
    # max_waiting_batch = 0: every batch request is refused, naming its class.
    r = complete(node.base, "a", PROMPT, key=BATCH)
    assert r.status == 429 and "batch" in r.json()["error"]["message"]
    assert admin(node.base, "a", "sleep", key=BATCH).status == 403
    assert admin(node.base, "a", "sleep").status == 401
    assert admin(node.base, "a", "nap", key=ROOT).status == 404
    assert admin(node.base, "zz", "sleep", key=ROOT).status == 404
    # A browser's request (cross-site form posts need no preflight) is refused, key or not.
    r = admin(node.base, "a", "unload", key=ROOT, headers={"Origin": "https://example.com"})
    assert r.status == 403 and "browsers" in r.json()["error"]["message"]
    assert node.models()["a"]["state"] != "unloaded"
    r = complete(node.base, "a", PROMPT, key=ROOT, priority=1 << 40)
    assert r.status == 400 and r.json()["error"]["param"] == "priority"
    assert _text(complete(node.base, "a", PROMPT, key=ROOT, priority=-3))


def test_sleep_then_wake_gives_the_same_greedy_output(node):
    before = _text(complete(node.base, "a", PROMPT, key=ROOT))
    rss = node.rss()
    r = admin(node.base, "a", "sleep", key=ROOT)
    assert r.status == 200 and r.json()["state"] == "sleeping", r.text
    assert node.rss() < rss - 50 * MiB, "sleep frees the weights and the KV pool"
    # Requests to a sleeping model wake it and wait: none is lost.
    with ThreadPoolExecutor(4) as pool:
        texts = list(
            pool.map(lambda _: _text(complete(node.base, "a", PROMPT, key=ROOT)), range(4))
        )
    assert texts == [before] * 4
    assert node.models()["a"]["state"] == "ready"
    r = admin(node.base, "a", "wake", key=ROOT)
    assert r.status == 200 and r.json()["memory"]["last_load_s"] > 0


def test_on_demand_loads_and_puts_the_least_recently_used_to_sleep(node):
    b = _text(complete(node.base, "b", PROMPT, key=ROOT))
    _text(complete(node.base, "a", PROMPT, key=ROOT))  # b is now the least recently used
    c = _text(complete(node.base, "c", PROMPT, key=ROOT))
    states = {m: v["state"] for m, v in node.models().items()}
    assert states == {"a": "ready", "b": "sleeping", "c": "ready"}, states
    assert _text(complete(node.base, "b", PROMPT, key=ROOT)) == b
    states = {m: v["state"] for m, v in node.models().items()}
    assert states["b"] == "ready" and sorted(states.values()).count("sleeping") >= 1
    assert c == _text(complete(node.base, "a", PROMPT, key=ROOT))  # same weights as a


def test_unload_frees_memory_and_an_unloaded_model_is_refused_until_loaded(node):
    _text(complete(node.base, "a", PROMPT, key=ROOT))
    rss = node.rss()
    r = admin(node.base, "a", "unload", key=ROOT)
    assert r.status == 200 and r.json()["state"] == "unloaded"
    freed = rss - node.rss()
    assert freed > 50 * MiB, f"unload freed {freed / MiB:.0f} MiB"
    r = complete(node.base, "a", PROMPT, key=ROOT)
    assert r.status == 503 and "unloaded" in r.json()["error"]["message"]
    r = admin(node.base, "a", "load", key=ROOT)
    assert r.status == 200 and r.json()["state"] == "ready", r.text
    assert _text(complete(node.base, "a", PROMPT, key=ROOT))


def test_a_budget_that_does_not_fit_is_an_error_at_start(default_model_path):
    one = f'[[models]]\nmodel = "{default_model_path}"\nserved_model_name = "x"\n'
    rc, err = run_to_exit("--config", write_config(one + 'memory = "8MiB"\n'))
    assert rc != 0 and "does not fit" in err and "x" in err, err
    two = "".join(
        f'[[models]]\nmodel = "{default_model_path}"\nserved_model_name = "m{i}"\n'
        'memory = "600MiB"\n'
        for i in range(2)
    )
    rc, err = run_to_exit("--config", write_config(two), "--node-memory", str(1000 * MiB))
    assert rc != 0 and "node_memory" in err and "m0" in err and "m1" in err, err
    rc, err = run_to_exit("--config", write_config(one + 'memory = "lots"\n'))
    assert rc != 0 and "memory" in err, err


def test_the_python_api_checks_models_and_config_files():
    with pytest.raises(infire.InvalidConfigError, match="path, a name or a dict"):
        infire.serve(models=[42])
    with pytest.raises(infire.InvalidConfigError, match="unknown table"):
        infire.serve(config=write_config("[modles]\n"))
    with pytest.raises(infire.InvalidConfigError, match="cannot read"):
        infire.serve(config=write_config("[[models]\n"))
