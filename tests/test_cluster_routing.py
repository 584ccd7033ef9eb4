"""The cluster's routing rules without Ray: block hashes as the engine's prefix cache keys
them, the affinity table, the first-token rule of the ingress, and the config file."""

from __future__ import annotations

import os

import pytest

from infire import InvalidConfigError, _core
from infire.cluster.affinity import AffinityTable, routing_keys
from infire.cluster.config import from_dict
from infire.cluster.streaming import first_token_seen


def test_block_hashes_are_chained_over_full_blocks():
    a = _core.prefix_block_hashes(list(range(40)), 16)
    assert len(a) == 2  # the partial third block has no hash
    # Equal prefixes, equal hashes; a change in block 1 changes block 1's hash and every later
    # one (the chain), never an earlier one.
    b = _core.prefix_block_hashes(list(range(20)) + [999] + list(range(21, 48)), 16)
    assert b[0] == a[0] and b[1] != a[1] and len(b) == 3
    assert _core.prefix_block_hashes(list(range(40)), 16, max_blocks=1) == a[:1]
    # The same block after another parent is another key.
    assert _core.prefix_block_hashes(list(range(16, 32)), 16)[0] != a[1]
    with pytest.raises(ValueError):
        _core.prefix_block_hashes([1, 2], 0)


def test_affinity_prefers_the_session_then_the_longest_prefix_covering_most():
    table = AffinityTable()
    table.record(routing_keys([1, 2, 3], None), "r1")
    table.record(routing_keys([1, 2, 3, 4, 5], "s"), "r2")
    everyone = {"r1", "r2"}
    # The longest known prefix wins; a session outranks it.
    assert table.lookup(routing_keys([1, 2, 3, 4, 5, 6], None), everyone) == "r2"
    assert table.lookup(routing_keys([9], "s"), everyone) == "r2"
    # r2 owns blocks 1..3 too now (it was sent them last): without r2, nothing matches.
    assert table.lookup(routing_keys([1, 2, 3, 4], None), {"r1"}) is None
    # A prompt mostly new (1 known block of 4) goes by load.
    assert table.lookup(routing_keys([1, 8, 9, 10], None), everyone) is None
    assert table.lookup(routing_keys([1, 2, 3, 10], None), everyone) == "r2"


def test_affinity_table_is_bounded_and_forgets_dead_replicas():
    table = AffinityTable(capacity=3)
    table.record(routing_keys([1, 2, 3, 4], None), "r1")
    assert len(table) == 3
    assert table.lookup(routing_keys([1], None), {"r1"}) is None  # evicted, oldest first
    table.forget("r1")
    assert len(table) == 0


def test_first_token_rule():
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    token = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    text = b'data: {"choices":[{"index":0,"text":"Hi","finish_reason":null}]}\n\n'
    assert not first_token_seen(role)
    assert not first_token_seen(role + token[:-2])  # an event not yet complete
    assert first_token_seen(role + token)
    assert first_token_seen(text)
    assert first_token_seen(b"data: [DONE]\n\n")
    assert first_token_seen(b'data: {"error": {"message": "x"}}\n\n')


def test_config_defaults_and_errors(default_model_path):
    config = from_dict({"models": [{"name": "m", "path": default_model_path}]})
    assert config.router == "affinity" and config.models[0].replicas == 1
    bad = [
        {"models": []},
        {"models": [{"path": default_model_path}]},
        {"models": [{"name": "m", "colour": 1}]},
        {"models": [{"name": "m"}, {"name": "m"}]},
        {"cluster": {"router": "random"}, "models": [{"name": "m"}]},
        {"cluster": {"max_tries": 0}, "models": [{"name": "m"}]},
    ]
    for doc in bad:
        with pytest.raises(InvalidConfigError):
            from_dict(doc)


def test_a_model_path_may_name_each_nodes_store(monkeypatch, tmp_path):
    from infire.cluster.config import node_path

    config = from_dict({"models": [{"name": "m", "path": "$STORE/m.gguf"}]})
    # Kept as written: each node expands it with its own environment.
    assert config.models[0].path == "$STORE/m.gguf"
    monkeypatch.setenv("STORE", str(tmp_path))
    assert node_path(config.models[0].path) == f"{tmp_path}/m.gguf"
    monkeypatch.delenv("STORE")
    with pytest.raises(InvalidConfigError, match="not set on this node"):
        node_path(config.models[0].path)
    relative = from_dict({"models": [{"name": "m", "path": "m.gguf"}]}).models[0].path
    assert relative == os.path.abspath("m.gguf")


def test_cluster_cli_reports_a_bad_config(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nrouter = "random"\n[[models]]\nname = "m"\n')
    for args in (["up", "--config", str(config)], ["status", "--config", str(tmp_path / "no")]):
        run = subprocess.run(
            [sys.executable, "-m", "infire", "cluster", *args], capture_output=True, text=True
        )
        assert run.returncode == 2 and "infire: error:" in run.stderr, run.stderr


def test_tracing_is_off_without_an_endpoint_and_urls_get_the_otlp_path(monkeypatch):
    import sys

    from infire.cluster import tracing

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    sdk_loaded = "opentelemetry.sdk.trace" in sys.modules
    assert tracing.setup(None, "infire-test") is None
    # No endpoint, no exporter: the SDK is not even imported.
    assert ("opentelemetry.sdk.trace" in sys.modules) == sdk_loaded
    assert tracing.endpoint_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.endpoint_url("http://c:4318/x/traces") == "http://c:4318/x/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/")
    assert tracing.endpoint_url(None) == "http://env:4318/v1/traces"
    assert tracing.client_carrier({"traceparent": "00-a-b-01", "x": "y"}) == {
        "traceparent": "00-a-b-01"
    }
    config = from_dict(
        {
            "cluster": {"otlp_traces_endpoint": "http://c:4318"},
            "models": [{"name": "m", "path": "/m.gguf"}],
        }
    )
    assert config.otlp_traces_endpoint == "http://c:4318"
