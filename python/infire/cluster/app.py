"""Building and running the cluster's Ray Serve application: one deployment per model (its
replicas each run an Infire engine; see ``replica``), routed by ``PrefixAffinityRouter`` (or
Ray's power-of-two-choices router), behind the OpenAI ingress (see ``ingress``), which runs on
the head node so that losing a worker node loses no request in flight at the front.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from .. import _core
from .config import ClusterConfig, ModelSpec, node_path
from .ingress import OpenAIIngress
from .replica import InfireReplica
from .router import PrefixAffinityRouter

logger = logging.getLogger("infire.cluster")

POW2_ROUTER = "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"
# Ray's own resource of the head node: a sliver of it pins the ingress there.
HEAD_RESOURCE = "node:__internal_head__"


def _deployment_options(spec: ModelSpec, config: ClusterConfig) -> dict:
    if config.router == "affinity":
        router = RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs={"saturation": config.saturation},
        )
    else:
        router = RequestRouterConfig(request_router_class=POW2_ROUTER)
    options = {
        "name": f"model-{spec.name}",
        "max_ongoing_requests": spec.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
        "health_check_period_s": spec.health_check_period_s,
        "health_check_timeout_s": spec.health_check_timeout_s,
        "graceful_shutdown_timeout_s": 30,
        "max_constructor_retry_count": spec.max_constructor_retry_count,
        "request_router_config": router,
    }
    if spec.autoscaling:
        options["autoscaling_config"] = spec.autoscaling
    else:
        options["num_replicas"] = spec.replicas
    if spec.max_replicas_per_node:
        options["max_replicas_per_node"] = spec.max_replicas_per_node
    return options


def pin_fingerprints(config: ClusterConfig) -> ClusterConfig:
    """``config`` with each model's fingerprint filled in from its files where it is left out
    (so every replica must load exactly the files seen here)."""
    models = [
        m
        if m.fingerprint
        else dataclasses.replace(m, fingerprint=_core.fingerprint(node_path(m.path)))
        for m in config.models
    ]
    return dataclasses.replace(config, models=models)


class _Replica(InfireReplica):
    """The replica class as Ray Serve deploys it."""

    async def info(self) -> dict:
        return self.record_replica_metadata()


def build_app(config: ClusterConfig):
    """The Serve application of ``config`` (fingerprints must be filled in)."""
    handles = {}
    for spec in config.models:
        deployment = serve.deployment(_Replica).options(**_deployment_options(spec, config))
        replica_spec = dict(spec.to_dict(), otlp_traces_endpoint=config.otlp_traces_endpoint)
        handles[spec.name] = deployment.bind(replica_spec)
    ingress = serve.deployment(OpenAIIngress)
    ingress = ingress.options(
        name="ingress",
        num_replicas=1,
        max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}},
    )
    models = {m.name: m.to_dict() for m in config.models}
    options = {
        "max_tries": config.max_tries,
        "first_token_timeout_s": config.first_token_timeout_s,
        "otlp_traces_endpoint": config.otlp_traces_endpoint,
    }
    return ingress.bind(models, handles, options)


def connect(config: ClusterConfig) -> None:
    """Joins the Ray cluster at ``config.address``: ``"auto"`` joins a running one or, when
    there is none, starts a local one; ``"local"`` always starts a local one."""
    if ray.is_initialized():
        return
    if config.address == "local":
        ray.init(log_to_driver=False)
        return
    try:
        ray.init(address=config.address, log_to_driver=False)
    except ConnectionError:
        if config.address != "auto":
            raise
        ray.init(log_to_driver=False)


def up(config: ClusterConfig) -> str:
    """Connects to Ray (``config.address``; ``"local"`` starts a local cluster), deploys the
    application and returns the ingress URL once every replica is ready, or once every model
    has a ready replica while others fail to start (see ``_deploy``)."""
    connect(config)
    config = pin_fingerprints(config)
    serve.start(proxy_location="HeadOnly", http_options={"host": config.host, "port": config.port})
    _deploy(config)
    return f"http://{config.host}:{config.port}"


def _deploy(config: ClusterConfig) -> None:
    """``serve.run`` of the application, which returns once every replica runs. A replica that
    keeps failing to start (its node holds other model files) while another of its model runs
    makes Serve start it again and again, and ``serve.run`` wait forever: the deployment is
    then up, short of that replica, and ``_deploy`` says so and returns."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(build_app(config), name=config.app_name, route_prefix="/")
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="infire-serve-run", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=1)
        short = _failing_to_start(config)
        if short:
            for name, message in short.items():
                logger.warning("infire cluster: %s runs short of replicas: %s", name, message)
            return
    if failed:
        raise failed[0]


def _failing_to_start(config: ClusterConfig) -> dict[str, str]:
    """Each model whose replicas fail to start, with Serve's message, once every model and the
    ingress have a running replica (else nothing: the deployment is not up yet)."""
    app = serve.status().applications.get(config.app_name)
    if app is None or "ingress" not in app.deployments:
        return {}
    deployments = [app.deployments["ingress"]]
    deployments += [app.deployments.get(f"model-{m.name}") for m in config.models]
    if any(d is None or d.replica_states.get("RUNNING", 0) < 1 for d in deployments):
        return {}
    return {
        m.name: d.message
        for m, d in zip(config.models, deployments[1:], strict=True)
        if "failed to start" in d.message
    }


def status(config: ClusterConfig) -> dict:
    """The application's and each model's state: Ray Serve's status of every deployment, and
    each running replica's fingerprint, region and engine gauges."""
    connect(config)
    app = serve.status().applications.get(config.app_name)
    if app is None:
        return {"app": config.app_name, "status": "NOT_DEPLOYED", "models": {}}
    models = {}
    for spec in config.models:
        dep = app.deployments.get(f"model-{spec.name}")
        models[spec.name] = {
            "status": dep.status.value if dep else "MISSING",
            "replicas": dict(dep.replica_states) if dep else {},
            "message": dep.message if dep else "",
        }
    return {"app": config.app_name, "status": app.status.value, "models": models}
