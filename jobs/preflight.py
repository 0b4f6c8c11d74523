"""The run pre-flight of ``mf retarget`` and ``mf dataset run``: before any work starts, check *from a worker* that the
run's storage works there, and fail at once with one message naming the URI and the error.

A worker's credentials are not the driver's: on a cluster the driver runs on the head (or a submitter pod) while the
stages run on worker nodes with their own instance profile, service account or secret. A worker that cannot read the
inputs or write ``--out`` would otherwise fail every window, one by one, after the models have loaded. So
:func:`preflight` (called after :func:`jobs.runtime.connect_ray` and :func:`jobs.runtime.cluster_shape`, before
:func:`pipelines.batch.driver.run_pipeline`):

1. samples the manifest on the driver: its first :data:`HEAD_ROWS` rows (a bounded read: the head of a CSV/JSONL
   file, the first batch of a Parquet file), their ``source``/``driving`` URIs resolved as the run resolves them,
   the first :data:`SAMPLE` distinct ones kept;
2. runs one Ray task with the **edit stage's resources** (CPUs, GPUs and custom resources of an edit actor, as
   :meth:`pipelines.batch.config.RunConfig.for_cluster` fits them), so it lands where edit actors land: on a worker
   node wherever the head cannot hold an edit actor (a head with ``CPU: 0``, GPU or custom-resource pinned edit
   actors), and an autoscaler starts that node for it, as it will for the run; where the prepare actors are pinned to
   other nodes (``--prepare-resource``), a second task with the prepare stage's resources checks the inputs there;
3. each task runs :func:`jobs.runtime.check_access` (the one storage check, shared with ``python -m jobs.runtime
   check-storage``): the S3 credential chain, the manifest (except a local manifest on a multi-node cluster: only
   the driver reads it) and the sampled inputs opened and their first byte read, and under ``--out`` a probe file
   written atomically and removed.

Any problem raises :class:`PreflightError`; the commands report it and exit 2 with nothing run. On a local Ray it
costs one short task (well under a second once Ray is up). ``--no-preflight`` skips it.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

SAMPLE = 8  # distinct input URIs checked
HEAD_ROWS = 256  # manifest rows read for the sample
HEAD_BYTES = 1 << 20  # of a CSV/JSONL manifest
SCHEDULE_TIMEOUT_S = 900.0  # for the task to get a worker (an autoscaler may have to start a node first)
PROBE_TIMEOUT_S = 60.0  # per URI, on the worker


class PreflightError(RuntimeError):
    """The pre-flight found a problem (its message names the URI and the error); ``problems``: one line each."""

    def __init__(self, message: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])


def sample_inputs(manifest: str, limit: int = SAMPLE) -> list[str]:
    """The first ``limit`` distinct ``source``/``driving`` URIs of the manifest's valid rows among its first
    :data:`HEAD_ROWS`, resolved against the manifest's folder as the run resolves them. ``PreflightError`` when the
    driver cannot read the manifest at all."""
    from pipelines.batch.manifest_limits import ManifestError
    from pipelines.batch.requests import parse_row
    from pipelines.media import storage

    try:
        rows = _head_rows(manifest)
    except ManifestError as exc:
        raise PreflightError(f"pre-flight: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - one line naming the manifest
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PreflightError(f"pre-flight: {manifest}: the driver cannot read the manifest: "
                             f"{type(exc).__name__}: {first}") from None
    base, out, seen = storage.parent(manifest), storage.parent(manifest), []
    for n, raw in enumerate(rows, 1):
        try:
            req = parse_row(raw, n, out, base)
        except (ValueError, TypeError):  # an invalid row: the run reports it, it reads nothing
            continue
        for uri in (req.source, req.driving):
            if uri not in seen:
                seen.append(uri)
        if len(seen) >= limit:
            break
    return seen[:limit]


def _head_rows(manifest: str) -> list[dict[str, Any]]:
    """The first :data:`HEAD_ROWS` raw rows of the manifest, reading only its head."""
    from pipelines.batch.manifest_files import format_of
    from pipelines.media import storage

    fmt = format_of(manifest)
    fs, path = storage.open_fs(manifest)
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f).iter_batches(batch_size=HEAD_ROWS):
                return batch.to_pylist()
            return []
        data = f.read(HEAD_BYTES + 1)
    if len(data) > HEAD_BYTES:
        data = data[:data.rfind(b"\n", 0, HEAD_BYTES) + 1]
    text = data.decode("utf-8-sig", errors="replace")
    if fmt == "csv":
        return [dict(r) for _, r in zip(range(HEAD_ROWS), csv.DictReader(io.StringIO(text)))]
    rows = []
    for line in text.splitlines():
        if len(rows) >= HEAD_ROWS:
            break
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _probe_task(read: list[str], inputs: list[str], write: list[str], timeout_s: float) -> dict[str, Any]:
    """On the worker: :func:`jobs.runtime.check_access`, and where it ran."""
    import ray

    from jobs.runtime import check_access

    return {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "problems": check_access(read=read, inputs=inputs, write=write, timeout_s=timeout_s)}


def _options(demand: dict[str, float]) -> dict[str, Any]:
    custom = {k: v for k, v in demand.items() if k not in ("CPU", "GPU", "memory") and v > 0}
    opts: dict[str, Any] = {"num_cpus": demand.get("CPU", 0.0), "num_gpus": demand.get("GPU", 0.0) or 0,
                            "max_retries": 0}
    if demand.get("memory"):
        opts["memory"] = int(demand["memory"])
    if custom:
        opts["resources"] = custom
    return opts


def preflight(cfg, shape=None, *, sample: int = SAMPLE, schedule_timeout_s: float = SCHEDULE_TIMEOUT_S,
              probe_timeout_s: float = PROBE_TIMEOUT_S, runtime_env: Optional[dict] = None) -> dict[str, Any]:
    """Check from a worker that the run ``cfg`` (a :class:`pipelines.batch.config.RunConfig` with absolute paths)
    can read its manifest and inputs and write its ``out`` on the connected Ray cluster of shape ``shape`` (default:
    ``cfg.cluster``, else static as it is now); see the module docstring. Returns what was checked, where and how long
    it took; raises :class:`PreflightError` with the problems, or ``ValueError`` where the run's config does not fit
    the cluster (:meth:`RunConfig.for_cluster`: the run would refuse it too). ``runtime_env``: the tasks' own (tests;
    by default the job's)."""
    import ray

    from pipelines.batch.config import ClusterShape
    from pipelines.media import storage

    t0 = time.perf_counter()
    if shape is None:
        shape = cfg.cluster or ClusterShape.static(sum(1 for n in ray.nodes() if n.get("Alive")),
                                                   float(ray.cluster_resources().get("CPU", 1.0)))
    fitted = cfg.for_cluster(shape)
    inputs = sample_inputs(cfg.manifest, sample)
    driver_only = storage.is_local(cfg.manifest) and shape.multi_node and not cfg.shared_fs
    read = [] if driver_only else [cfg.manifest]
    demands = fitted.resources.demands()
    checks = {"edit": (demands["edit"], read, inputs, [cfg.out])}
    if fitted.resources.prepare_resources:
        checks["prepare"] = (demands["prepare"], [], inputs, [])
    refs = {}
    for stage, (demand, r, i, w) in checks.items():
        opts = _options(demand)
        if runtime_env is not None:
            opts["runtime_env"] = runtime_env
        refs[stage] = ray.remote(_probe_task).options(name=f"mf-preflight-{stage}", **opts).remote(
            r, i, w, probe_timeout_s)
    ready, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=schedule_timeout_s)
    problems, nodes = [], {}
    for stage, ref in refs.items():
        demand = checks[stage][0]
        if ref in pending:
            ray.cancel(ref, force=True)
            problems.append(f"no worker took the {stage} stage's storage check ({_demand(demand)}) within "
                            f"{schedule_timeout_s:.0f} s: the cluster has no node for it and did not start one")
            continue
        try:
            got = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the task itself failed (a broken worker environment)
            first = (str(exc).strip().splitlines() or [""])[-1][:300]
            problems.append(f"the {stage} stage's storage check failed on its worker: {type(exc).__name__}: {first}")
            continue
        nodes[stage] = got["node"]
        problems += [f"from a worker with the {stage} stage's resources (node {got['node']}): {p}"
                     for p in got["problems"]]
    seconds = time.perf_counter() - t0
    if problems:
        lines = "\n  ".join(problems)
        raise PreflightError(f"pre-flight failed, nothing was run:\n  {lines}\n(skip the check with "
                             "--no-preflight)", problems)
    log.info("pre-flight: %d input(s), the manifest%s and --out %s reachable from node(s) %s in %.2f s",
             len(inputs), " (driver only)" if driver_only else "", cfg.out,
             ", ".join(f"{k} {v}" for k, v in nodes.items()), seconds)
    return {"read": read + inputs, "write": [cfg.out], "nodes": nodes, "seconds": seconds}


def _demand(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 2**30:.2g} GiB" if k == "memory" else f"{k} {v:g}" for k, v in d.items() if v > 0) \
        or "nothing"
