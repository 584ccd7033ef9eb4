"""The cluster's configuration, from ``cluster.toml``::

[cluster]
address = "auto"          # a running Ray cluster ("auto", "ray://host:10001"), or "local"
host = "127.0.0.1"        # where the OpenAI ingress listens
port = 8000
router = "affinity"       # or "pow2" (Ray Serve's default power-of-two-choices router)
saturation = 8            # queued requests at which a replica's affinity yields to load
max_tries = 3             # replicas a request may try before its first token
first_token_timeout_s = 120
otlp_traces_endpoint = "http://collector:4318"   # request traces (OTLP/HTTP); left out: none

[[models]]
name = "smollm2"
path = "/models/SmolLM2-135M-Instruct"   # left out: the default model; "$MODELS/smollm2":
                          # $MODELS as each node's environment sets it (nodes' own stores)
fingerprint = "fp_..."    # left out: computed from `path` where `cluster up` runs
num_cpus = 2              # the replica's share of the cores (engine threads)
num_gpus = 0              # 1: one engine per GPU
replicas = 2              # or an [models.autoscaling] table
max_ongoing_requests = 32
max_replicas_per_node = 1
engine = { max_model_len = 2048 }        # engine options, as for `infire serve`

[models.autoscaling]      # Ray Serve's autoscaler, on requests queued and running
min_replicas = 1
max_replicas = 4
target_ongoing_requests = 8
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields

from ..errors import InvalidConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROUTERS = ("affinity", "pow2")


@dataclass
class ModelSpec:
    """One model's deployment (see the module docs for each field)."""

    name: str
    path: str
    fingerprint: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    replicas: int = 1
    max_ongoing_requests: int = 32
    max_replicas_per_node: int | None = None
    autoscaling: dict | None = None
    engine: dict = field(default_factory=dict)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 60.0
    startup_timeout_s: float = 600.0
    # Failed starts (the constructor or the first health check: other model files, a bad
    # option) before Serve gives up, while no replica of the model has run; after one has,
    # Serve starts a failing replica again without end.
    max_constructor_retry_count: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClusterConfig:
    """The whole cluster: where Ray is, the ingress, the router and the models."""

    models: list[ModelSpec]
    address: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    router: str = "affinity"
    saturation: int = 8
    max_tries: int = 3
    first_token_timeout_s: float = 120.0
    app_name: str = "infire"
    # Where request traces go (else $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else nowhere).
    otlp_traces_endpoint: str | None = None

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _model(entry: dict, index: int) -> ModelSpec:
    where = f"models[{index}]"
    _check_keys(entry, {f.name for f in fields(ModelSpec)}, where)
    if "name" not in entry:
        raise InvalidConfigError(f"{where}: a model needs a name")
    entry = dict(entry)
    if not entry.get("path"):
        from ..model_resolution import default_model_path

        entry["path"] = str(default_model_path())
    entry["path"] = os.path.expanduser(entry["path"])
    if not entry["path"].startswith("$"):
        # One that starts with a variable is absolute once each node expands it.
        entry["path"] = os.path.abspath(entry["path"])
    spec = ModelSpec(**entry)
    if spec.replicas < 1 and not spec.autoscaling:
        raise InvalidConfigError(f"{where}: replicas must be at least 1")
    if spec.num_cpus <= 0 and spec.num_gpus <= 0:
        raise InvalidConfigError(f"{where}: num_cpus or num_gpus must be positive")
    return spec


def node_path(path: str) -> str:
    """A model's ``path`` as this node sees it: its environment variables expanded, so that
    nodes which keep their models in places of their own share one config."""
    expanded = os.path.expandvars(path)
    if "$" in expanded:
        raise InvalidConfigError(f"model path {path}: a variable in it is not set on this node")
    return expanded


def from_dict(doc: dict) -> ClusterConfig:
    """A validated config from a parsed ``cluster.toml``."""
    _check_keys(doc, {"cluster", "models"}, "cluster.toml")
    cluster = doc.get("cluster", {})
    allowed = {f.name for f in fields(ClusterConfig)} - {"models"}
    _check_keys(cluster, allowed, "[cluster]")
    models = [_model(m, i) for i, m in enumerate(doc.get("models", []))]
    if not models:
        raise InvalidConfigError("cluster.toml: no [[models]] given")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"cluster.toml: model names repeat: {names}")
    config = ClusterConfig(models=models, **cluster)
    if config.router not in ROUTERS:
        raise InvalidConfigError(f"[cluster] router must be one of {ROUTERS}: {config.router!r}")
    if config.max_tries < 1:
        raise InvalidConfigError("[cluster] max_tries must be at least 1")
    return config


def load(path: str | os.PathLike) -> ClusterConfig:
    """Reads and validates ``cluster.toml`` at ``path``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidConfigError(f"cannot read the cluster config {path}: {e}") from e
    return from_dict(doc)
