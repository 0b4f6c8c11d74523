"""Runtime setup, in one place: which Ray cluster to use, and how many GPUs a model actor asks for.

Every entry point (``mf retarget``, ``mf dataset``, ``mf serve``, ``mf demo``, the benchmarks) calls
:func:`connect_ray`; nothing else calls ``ray.init``. The device/dtype rule lives in
:meth:`pipelines.batch.config.ModelSpec.for_gpus`.

Which cluster (Ray's convention): ``address`` if given, else ``RAY_ADDRESS`` (set by Ray Jobs and KubeRay for
entrypoints), else a local Ray started here. Which one is logged. A local Ray uses token authentication unless
``RAY_AUTH_MODE`` says otherwise (:func:`local_auth`), writes no usage stats and skips the dashboard. mf writes no
token file: without a configured token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) the token
lives in this process's environment and the Ray it starts, also when Ray was imported before :func:`connect_ray`
(then Ray itself turns token mode on for the new local cluster, and finds the token there instead of writing
``~/.ray/auth_token``). An existing ``~/.ray/auth_token`` that others can read is used, with a warning. Ray 2.60 cannot
be held to the loopback address (``ray.init`` resolves 127.0.0.1 to the node's reachable address, and its GCS and
raylet listen on every interface), so the token is what keeps other hosts out; ``RAY_AUTH_MODE=disabled`` runs it
open, for trusted networks only. The Serve HTTP proxy of ``mf serve`` binds to ``--host`` (127.0.0.1 by default);
the Serve proxies of a local Ray get mf's HTTP limits (:data:`PROXY_CALLBACK`, :mod:`jobs.serve.http_guard`) unless
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` is set already.

Console (set by :mod:`jobs.cli`, see its docstring): :func:`quiet_native_env` sets the variables that quiet native
libraries' logging (a local Ray started afterwards passes them on to its workers: they inherit this process's
environment; a joined cluster's runtime env is left as its owner set it), and :func:`route_ray_logs` makes
:func:`connect_ray` hand Ray's and Ray Data's Python log records to the root logger's handlers instead of Ray's own
stderr handlers. Ray workers' output stays in Ray's session logs (``log_to_driver=False``).
"""
from __future__ import annotations

import logging
import os
import secrets
import sys
from typing import Any, Optional

log = logging.getLogger(__name__)

# native libraries' log thresholds where they honour them: glog (INFO/WARNING off), TensorFlow/TFLite (errors only)
QUIET_NATIVE_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
# Ray's Python loggers that print through their own stderr handlers and do not propagate
RAY_LOGGERS = ("ray", "ray.data")
_route = {"ray_logs": False}
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"  # where Ray looks for a token (and writes one, were it left to it)


def quiet_native_env() -> None:
    """Set :data:`QUIET_NATIVE_ENV` where not set already (call before the native libraries load)."""
    for key, value in QUIET_NATIVE_ENV.items():
        os.environ.setdefault(key, value)


def route_ray_logs(enabled: bool = True) -> None:
    """Whether :func:`connect_ray` routes Ray's Python loggers (:data:`RAY_LOGGERS`) to the root logger; applied
    at once when Ray is connected already."""
    _route["ray_logs"] = bool(enabled)
    if enabled:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            _route_ray_loggers()


def _route_ray_loggers() -> None:
    """Drop the stream (console) handlers of :data:`RAY_LOGGERS` (Ray Data's session file handler stays) and let
    their records propagate to the root logger, whose handlers decide what the console shows."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger on import: route it after that

    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True


PROXY_CALLBACK_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # read by every Ray Serve proxy at its start
PROXY_CALLBACK = "jobs.serve.http_guard:proxy_middlewares"  # the proxies' own HTTP limits


def connect_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None, **local_options: Any) -> str:
    """Join or start Ray (see the module docstring); a no-op when this process is connected already.

    ``num_cpus`` and ``local_options`` (e.g. ``object_store_memory``, ``_temp_dir``) apply to a local start only.
    Returns ``"joined"``, ``"local"`` or ``"connected"``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    imported = sys.modules.get("ray")
    if not address and (imported is None or not imported.is_initialized()):
        local_auth()  # best before ray is imported: the driver reads RAY_AUTH_MODE at import
        os.environ.setdefault(PROXY_CALLBACK_VAR, PROXY_CALLBACK)  # the Serve proxies of the Ray started here
    import ray

    if _route["ray_logs"]:
        _route_ray_loggers()
    if ray.is_initialized():
        return "connected"
    if address:
        ray.init(address=address, log_to_driver=False)
        log.info("joined the Ray cluster at %s", address)
        return "joined"
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **local_options)
    log.info("started a local Ray (auth: %s)", os.environ.get("RAY_AUTH_MODE", "Ray's default"))
    return "local"


def local_auth() -> str:
    """Token authentication for a local Ray unless ``RAY_AUTH_MODE`` says otherwise: with no token configured
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) a random one is made for this process and
    the Ray it starts, and nobody else; nothing is written to disk. Once Ray is imported an unset ``RAY_AUTH_MODE``
    stays unset (the driver read it at import; ``ray.init`` turns token mode on for a new local cluster itself).
    Returns the mode."""
    if "ray" in sys.modules:
        mode = os.environ.get("RAY_AUTH_MODE") or "token"
    else:
        mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    default = os.path.expanduser(DEFAULT_TOKEN_FILE)
    configured = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.exists(default)
    if mode == "token" and not configured:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    elif mode == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        _warn_readable(os.environ.get("RAY_AUTH_TOKEN_PATH") or default)
    return mode


def _warn_readable(path: str) -> None:
    """Warn when the token file Ray will use can be read by other users."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("the Ray token file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_per_actor(requested: Optional[float]) -> float:
    """The GPUs each model actor asks for: as requested, else 1 when the cluster has GPUs, else 0."""
    if requested is not None:
        return float(requested)
    return 1.0 if cluster_gpus() else 0.0

