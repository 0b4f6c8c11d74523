"""The application builders: :func:`build_app` (typed, from a :class:`ServeConfig`) and :func:`app_builder` (the
import path ``jobs.serve:app_builder`` of ``serve run`` / a Serve config file / KubeRay's RayService)."""
from typing import Any

from ray.serve import Application

from jobs.serve.api import EditAPI
from jobs.serve.config import ServeConfig
from jobs.serve.worker import EditWorker
from pipelines.media import storage


def build_app(cfg: ServeConfig) -> Application:
    """The Serve application: the :class:`EditAPI` ingress over ``cfg.replicas`` :class:`EditWorker` model replicas
    (``max_ongoing_requests=1``, ``cfg.gpus_per_replica`` GPUs and ``cfg.cpus_per_replica`` CPUs each). A local
    ``root`` is made absolute here (the replicas do not share the caller's working directory)."""
    if not cfg.tokens:
        raise ValueError("no API token configured: set MF_SERVE_TOKENS (comma-separated bearer tokens)")
    cfg = cfg.model_copy(update={"root": storage.absolute(cfg.root)})
    worker = EditWorker.options(num_replicas=cfg.replicas, ray_actor_options={
        "num_gpus": cfg.gpus_per_replica, "num_cpus": cfg.cpus_per_replica})
    return EditAPI.bind(worker.bind(cfg), cfg)


def app_builder(args: dict[str, Any]) -> Application:
    """Builder for Serve's ``import_path``: ``args`` (the Serve config's ``args:``, or ``key=value`` of ``serve
    run``) are :class:`ServeConfig` fields over the MF_SERVE_* environment (where the tokens come from, as secrets)."""
    return build_app(ServeConfig.from_env(**args))
