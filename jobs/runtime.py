"""Runtime setup, in one place: which Ray cluster to use, what it can grow to (:func:`cluster_shape`, for
:meth:`pipelines.batch.config.StageResources.for_cluster`), how many GPUs a model actor asks for
(:func:`gpus_per_actor`), and two checks the deployment files run (``python -m jobs.runtime check-storage`` in the
KubeRay pods' init containers, ``python -m jobs.runtime cron-tick-date`` in the RayCronJob's entrypoint). The storage
check (:func:`check_access`) is also what the run pre-flight (:mod:`jobs.preflight`) runs on a worker.

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

import json
import logging
import os
import posixpath
import re
import secrets
import sys
from collections.abc import Sequence
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


AUTOSCALING_CONFIG_VAR = "MF_AUTOSCALING_CONFIG"  # a cluster-launcher YAML describing the cluster's node types
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the autoscaler's config on the head


def cluster_shape():
    """The connected Ray cluster as a :class:`pipelines.batch.config.ClusterShape`: what is up now, and whether
    (and to which node types) an autoscaler can grow it. The node types come from the first of:

    1. ``$MF_AUTOSCALING_CONFIG``, a cluster-launcher YAML (``available_node_types``) the operator points at;
    2. Ray's own cluster config in the GCS (node groups with min/max counts; reported where the platform does);
    3. the config the head's autoscaler runs, on this node: the monitor process's ``--autoscaling-config`` (``ray
       up``, ``ray start --head --autoscaling-config``), else ``~/ray_bootstrap_config.yaml`` (``ray up``'s head).

    Without any of them, a running autoscaler (its status in the GCS: KubeRay's in-tree autoscaler) makes the shape
    autoscaling with node types unknown; no autoscaler at all makes it static (a local Ray, a plain ``ray start``
    cluster). The result is logged. Call it after :func:`connect_ray`."""
    import ray

    from pipelines.batch.config import ClusterShape

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    now = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    shape = None
    path = os.environ.get(AUTOSCALING_CONFIG_VAR)
    if path:
        shape = _shape_from_file(path, nodes, now, f"${AUTOSCALING_CONFIG_VAR}")
    if shape is None:
        shape = _shape_from_gcs(nodes, now)
    if shape is None:
        try:
            gcs = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001
            gcs = None
        for source, file in _local_autoscaler_configs(gcs):
            shape = _shape_from_file(file, nodes, now, source)
            if shape is not None:
                break
    if shape is None:
        autoscaler = _autoscaler_running()
        shape = ClusterShape(nodes=max(1, nodes), resources=tuple(sorted(now.items())), autoscaling=autoscaler,
                             source="autoscaler status" if autoscaler else "static")
    log.info("Ray cluster: %s", shape.describe())
    return shape


def _shape_from_file(path: str, nodes: int, now: dict, source: str):
    import yaml

    from pipelines.batch.config import ClusterShape

    try:
        with open(os.path.expanduser(path)) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read the autoscaling config %s (%s): %s", path, source, exc)
        return None
    if not isinstance(config, dict) or not config.get("available_node_types"):
        return None
    return ClusterShape.from_autoscaler_config(config, nodes=nodes, resources=now, source=f"{source}: {path}")


def _shape_from_gcs(nodes: int, now: dict):
    """Ray's cluster config (``ray._private.state.state.get_cluster_config()``), where one was reported."""
    from pipelines.batch.config import ClusterShape, NodeType

    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception as exc:  # noqa: BLE001 - a private API: absent or changed means "not known"
        log.debug("no cluster config from the GCS: %s", exc)
        return None
    groups = list(getattr(config, "node_group_configs", None) or [])
    if not groups:
        return None
    types = tuple(NodeType(name=g.name or f"group-{i}", resources=tuple(sorted((k, float(v)) for k, v in
                                                                               g.resources.items())),
                           max_count=int(g.max_count), min_count=int(g.min_count)) for i, g in enumerate(groups))
    grows = any(t.max_count < 0 or t.max_count > t.min_count for t in types)
    return ClusterShape(nodes=max(1, nodes), resources=tuple(sorted(now.items())), autoscaling=grows,
                        node_types=types, source="Ray's cluster config")


def _local_autoscaler_configs(gcs_address: Optional[str] = None) -> list[tuple[str, str]]:
    """``[(source, path)]`` of autoscaler configs on this node: the ``--autoscaling-config`` of the running monitor of
    the cluster at ``gcs_address`` (its ``--gcs-address``; another cluster's on the same machine is not this one's),
    visible where the driver shares the head's process table (a Ray Job's driver, ``ray up``'s head container), then
    ``ray up``'s bootstrap file."""
    found = []
    try:
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if gcs_address and f"--gcs-address={gcs_address}" not in cmd:
                continue
            if any(part.endswith(("monitor.py", "autoscaler._private.monitor")) for part in cmd):
                for i, part in enumerate(cmd):
                    if part.startswith("--autoscaling-config="):
                        found.append(("the head's autoscaler", part.split("=", 1)[1]))
                    elif part == "--autoscaling-config" and i + 1 < len(cmd):
                        found.append(("the head's autoscaler", cmd[i + 1]))
    except Exception as exc:  # noqa: BLE001 - best effort: no psutil, no access
        log.debug("cannot look for the autoscaler's process: %s", exc)
    if os.path.exists(os.path.expanduser(BOOTSTRAP_CONFIG)):
        found.append(("ray up's bootstrap config", BOOTSTRAP_CONFIG))
    return found


READONLY_NODE_TYPE = re.compile(r"node_[0-9a-f]+")  # the monitor's names for nodes of a cluster it cannot scale


def _autoscaler_running() -> bool:
    """Whether an autoscaler that can add nodes reports to this cluster's GCS (its status, as `ray status` reads
    it). Every Ray head runs the monitor; without an autoscaling config it is read-only and names each node
    ``node_<id>`` instead of a node type (or reports no nodes at all)."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        raw = _internal_kv_initialized() and _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception as exc:  # noqa: BLE001
        log.debug("cannot read the autoscaler status: %s", exc)
        return False
    return autoscaler_status_scales(raw)


def autoscaler_status_scales(raw) -> bool:
    """Whether an autoscaler status (the JSON the monitor writes) comes from an autoscaler with node types."""
    if not raw:
        return False
    try:
        report = json.loads(raw).get("autoscaler_report") or {}
    except (ValueError, AttributeError):
        return False
    kinds = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
    kinds |= set(report.get("pending_launches") or {})
    kinds |= {n[1] for n in report.get("pending_nodes") or [] if len(n) > 1}
    return any(not READONLY_NODE_TYPE.fullmatch(str(k)) for k in kinds)


def cluster_gpus() -> float:
    """GPUs up in the cluster now (a snapshot: an autoscaling cluster may add more, see :func:`cluster_shape`)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_per_actor(requested: Optional[float], shape=None) -> float:
    """The GPUs each model actor asks for (:meth:`ClusterShape.gpus_per_actor` on ``shape``, default
    :func:`cluster_shape`): as requested, else 1 when the cluster has GPUs or can add a node type that has them,
    else 0. Warns where an autoscaling cluster's node types are unknown and nothing was requested."""
    if requested is not None:
        return float(requested)
    shape = shape if shape is not None else cluster_shape()
    if shape.can_have("GPU") is None:
        log.warning("the Ray cluster autoscales but mf cannot see its node types: edit actors run the model on the "
                    "CPU; pass --gpus-per-actor 1 (or a spec's gpus_per_actor) to ask for GPU nodes, or point "
                    "$%s at the cluster's config", AUTOSCALING_CONFIG_VAR)
    return shape.gpus_per_actor(None)


# -- storage credentials pre-flight (KubeRay init containers: python -m jobs.runtime check-storage URI...) -------------
CREDENTIALS_HINT = ("give the pod credentials: the secret mf-s3 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and "
                    "AWS_ENDPOINT_URL for an S3-compatible server), or IRSA / pod identity on the service account "
                    "mf-ray (eks.amazonaws.com/role-arn); see docs/cluster.md")


def s3_credentials_problem() -> Optional[str]:
    """Why botocore's credential chain (the one s3fs uses: environment, profile files, web identity / IRSA, pod
    identity, the instance profile) finds no credentials here; None when it finds some. Makes no S3 call."""
    try:
        import botocore.session
    except ImportError:
        return "botocore is not installed: s3:// URIs cannot be read (pip install s3fs)"
    try:
        creds = botocore.session.Session().get_credentials()
    except Exception as exc:  # noqa: BLE001 - a broken profile file, an unreachable metadata service
        return f"botocore could not look up credentials: {type(exc).__name__}: {exc}"
    if creds is None:
        return "no AWS credentials found (environment, profile files, web identity, instance metadata)"
    return None


def check_storage(uris: list[str], *, timeout_s: float = 60.0) -> list[str]:
    """Problems reaching each URI as this process would (``[]``: all fine): for ``s3://`` first the credentials,
    then a listing of the URI (a folder or prefix) or of its parent, each within ``timeout_s``."""
    return check_access(listed=uris, timeout_s=timeout_s)


def check_access(*, listed: Sequence[str] = (), read: Sequence[str] = (), write: Sequence[str] = (),
                 inputs: Sequence[str] = (),
                 timeout_s: float = 60.0) -> list[str]:
    """Problems using storage as this process would (``[]``: all fine), one line each naming the URI and the error:
    for ``s3://`` first the credential chain (:func:`s3_credentials_problem`), then, in parallel, each within
    ``timeout_s``: ``listed`` folders or prefixes listed (one not written yet counts where its nearest existing
    ancestor lists), ``read`` files opened and their first byte read, and under each ``write`` folder a probe file
    written atomically and removed (:func:`pipelines.media.storage.check_writable`). The one storage check of
    ``python -m jobs.runtime check-storage`` and of the run pre-flight (:mod:`jobs.preflight`)."""
    import concurrent.futures

    from pipelines.media import storage

    probes = ([(u, "list", _probe_list) for u in listed] + [(u, "read", _probe_read) for u in read]
              + [(u, "read", _probe_input) for u in inputs] + [(u, "write", storage.check_writable) for u in write])
    if not probes:
        return []
    if any(storage.protocol_of(u) in ("s3", "s3a") for u, _, _ in probes):
        why = s3_credentials_problem()
        if why:
            return [f"s3: {why}: {CREDENTIALS_HINT}"]
    verbs = {"list": "cannot list it", "read": "cannot read it", "write": "cannot write a file under it"}
    problems = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(probes)))
    try:
        futures = [(u, kind, pool.submit(fn, u)) for u, kind, fn in probes]
        for uri, kind, fut in futures:
            try:
                fut.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                problems.append(f"{uri}: no answer within {timeout_s:.0f} s (endpoint, network policy?)")
            except Exception as exc:  # noqa: BLE001 - reported, one line each
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                hint = f": {CREDENTIALS_HINT}" if storage.protocol_of(uri) in ("s3", "s3a") else ""
                problems.append(f"{uri}: {verbs[kind]}: {type(exc).__name__}: {first}{hint}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return problems


def _probe_list(uri: str) -> None:
    """List ``uri``; a folder or prefix not written yet (an output root) is fine where its nearest existing ancestor
    lists (on S3, at the latest the bucket)."""
    from pipelines.media import storage

    fs, path = storage.open_fs(uri)
    while True:
        try:
            fs.ls(path, detail=False)
            return
        except FileNotFoundError:
            up = posixpath.dirname(path.rstrip("/"))
            if not up or up == path.rstrip("/"):
                raise
            path = up


def _probe_read(uri: str) -> None:
    """Open the file ``uri`` and read its first byte (on S3 a HEAD and a ranged GET: the object's read permission,
    not just the bucket's listing)."""
    from pipelines.media import storage

    fs, path = storage.open_fs(uri)
    with fs.open(path, "rb") as f:
        f.read(1)


def _probe_input(uri: str) -> None:
    """:func:`_probe_read` for a request's input: one that is missing, or a frame folder, is its own row's matter
    (the run fails that row with the reason), not the storage's; permissions, credentials and timeouts still are."""
    try:
        _probe_read(uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return


def cron_tick_date(cronjob: str, cluster_name: Optional[str] = None, now=None) -> tuple[str, str]:
    """``(YYYY-MM-DD, how)``: the UTC date of the RayCronJob tick this run was created for. KubeRay (v1.7.0) names
    a tick's RayJob ``<cronjob>-<minutes since the epoch of the tick>``, its job id ``<RayJob>-<5 characters>``
    (``RAY_JOB_SUBMISSION_ID`` in the submitter pod, whose shell expands the entrypoint: K8sJobMode) and its
    RayCluster alike (``RAY_CLUSTER_NAME`` in every Ray container); so a catch-up run created after operator downtime
    for a missed tick generates that tick's date, not today's. Without such a name: today (UTC)."""
    import datetime as dt

    names = ([cluster_name] if cluster_name is not None else
             [os.environ.get("RAY_JOB_SUBMISSION_ID", ""), os.environ.get("RAY_CLUSTER_NAME", "")])
    for name in names:
        m = re.fullmatch(re.escape(cronjob) + r"-(\d+)(?:-[a-z0-9]{5})?", name or "")
        if m:
            tick = dt.datetime.fromtimestamp(int(m.group(1)) * 60, tz=dt.timezone.utc)
            return tick.date().isoformat(), f"the tick {tick.isoformat()} of RayCronJob {cronjob} ({name})"
    today = (now or dt.datetime.now(dt.timezone.utc)).date().isoformat()
    return today, f"today (no tick of RayCronJob {cronjob} in RAY_JOB_SUBMISSION_ID/RAY_CLUSTER_NAME: {names})"


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m jobs.runtime check-storage URI...``: exit 0 when every URI can be listed with this process's
    credentials, else print one line per problem and exit 1 (KubeRay init containers run it before Ray starts).
    ``python -m jobs.runtime cron-tick-date NAME``: print :func:`cron_tick_date` (the RayCronJob's entrypoint)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m jobs.runtime")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-storage", help="check this pod can reach its storage before Ray starts")
    c.add_argument("uris", nargs="+", help="folders or prefixes to list (s3://bucket/prefix/, gs://..., paths)")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds per URI")
    d = sub.add_parser("cron-tick-date", help="print the date of the RayCronJob tick this cluster runs for")
    d.add_argument("cronjob", help="the RayCronJob's name (metadata.name)")
    args = p.parse_args(argv)
    if args.command == "cron-tick-date":
        day, how = cron_tick_date(args.cronjob)
        print(f"mf: run date {day}: {how}", file=sys.stderr, flush=True)
        print(day, flush=True)
        return 0
    problems = check_storage(args.uris, timeout_s=args.timeout)
    for line in problems:
        print(f"mf storage check: {line}", file=sys.stderr, flush=True)
    if not problems:
        print(f"mf storage check: {', '.join(args.uris)} reachable", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
