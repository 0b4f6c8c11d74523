"""Runtime setup, in one place: which Ray cluster to use, and how many GPUs a model actor asks for.

Every entry point (``mf retarget``, ``mf dataset``, ``mf serve``, ``mf demo``, the benchmarks) calls
:func:`connect_ray`; nothing else calls ``ray.init``. The device/dtype rule lives in
:meth:`pipelines.batch.config.ModelSpec.for_gpus`.

Which cluster (Ray's convention): ``address`` if given, else ``RAY_ADDRESS`` (set by Ray Jobs and KubeRay for
entrypoints), else a local Ray started here. A local Ray runs without auth unless ``RAY_AUTH_MODE`` says otherwise,
writes no usage stats and skips the dashboard.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

log = logging.getLogger(__name__)


def connect_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None, **local_options: Any) -> str:
    """Join or start Ray (see the module docstring); a no-op when this process is connected already.

    ``num_cpus`` and ``local_options`` (e.g. ``object_store_memory``, ``_temp_dir``) apply to a local start only.
    Returns ``"joined"``, ``"local"`` or ``"connected"``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return "connected"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
        return "joined"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **local_options)
    return "local"


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_per_actor(requested: Optional[float]) -> float:
    """The GPUs each model actor asks for: as requested, else 1 when the cluster has GPUs, else 0."""
    if requested is not None:
        return float(requested)
    return 1.0 if cluster_gpus() else 0.0

