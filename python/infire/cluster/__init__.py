"""``infire.cluster``: Infire on a Ray Serve cluster (``pip install "infire[cluster]"``).

One deployment per model, whose replicas each run an Infire engine; a request router with
prefix-cache and session affinity, region preference and fingerprint pinning; an OpenAI ingress
that retries a request whose replica fails before its first token. ``infire cluster up
--config cluster.toml`` deploys it; ``infire cluster status`` shows it. See ``config`` for the
file's format.
"""

from .config import ClusterConfig, ModelSpec, from_dict, load

__all__ = ["ClusterConfig", "ModelSpec", "build_app", "from_dict", "load", "status", "up"]


def __getattr__(name: str):
    # Ray is imported only when the cluster is used: `infire.cluster.config` works without it.
    if name in ("build_app", "up", "status"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
