"""The batch pipeline of ``mf retarget`` on Ray Data (design §3, §5).

Stages (rows are windows, never frames or whole videos)::

    requests (driver) ─ skip finished ─▶ plan (flat_map, CPU): probe, length map, windows, alignment once per request
        ─▶ prepare (fixed actor pool, CPU): decode the window's frames only, poses, masks, renders → payload bytes
        ─▶ edit (fixed actor pool holding the model, num_gpus per actor, batch_size=1): edit, write window frames
           atomically to ``<out>/windows/<request_id>/<window_id>.npz``, emit a small row
        ─▶ driver: collects small rows per request; when a request's windows are all in, a stitch task (CPU)
           blends them in frame order (crossfade) and streams frames into ffmpeg → result row
        ─▶ ``<out>/results.parquet`` (atomic)

The per-row stage functions (:func:`plan_rows`, :func:`prepare_row`, :func:`edit_row`, :func:`finish_request`) are
plain functions shared with :func:`pipelines.single.edit_request`, which runs the same code in-process for one request
(the Serve app); the Ray classes below only wrap them.

Resources: :func:`fit_resources` sizes the stages from ``ray.cluster_resources()``. When the edit and prepare pools
plus one plan and one stitch task do not fit in the cluster's CPUs (a laptop, this 2-core box), the actors get a
fractional share and plan/stitch tasks a quarter CPU, so the pools can never starve the tasks that feed and drain
them (the deadlock of a 2-CPU node with two 1-CPU actors).

Failures never raise out of a stage: a bad request or window becomes a row with ``status="failed"`` and its
``error``; the request fails, the job goes on. Ray Data's fail-hard defaults are kept on purpose
(``max_errored_blocks=0``: an exception escaping a stage is a bug and stops the run; application errors are not
retried, ``actor_task_retry_on_errors=False``: they are deterministic). System failures are retried: Ray Data's actor
pool restarts a dead actor and resubmits its window (its defaults, ``max_restarts=-1, max_task_retries=-1``; the
per-operator ``**ray_remote_args`` that could change them are deprecated in Ray 2.60). The bound is ours: the edit
actor counts attempts per window and run in ``<window>.npz.attempts-<run_id>`` and fails the window (not the job)
after ``1 + max_retries`` attempts. Keeping Ray's restarts unbounded also avoids the hang of a permanently dead
actor in a fixed-size pool (ray#62746).

Restart: a finished request has ``<out>/requests/<request_id>.json`` (written after its video is committed);
re-running skips it (status ``skipped``). Finished windows (their ``.npz`` exists) are not edited again. IDs are
deterministic and the initial noise is frame-indexed, so a re-run produces identical outputs.
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import json
import logging
import os
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.encode import VideoWriter, fraction_str, to_fraction
from pipelines.manifest import Request, ResultRow, read_manifest, write_results
from pipelines.metrics import PipelineMetrics
from pipelines.stitch import iter_stitched, side_by_side, stitch_to_writer
from pipelines.windows import plan_windows, window_id

log = logging.getLogger(__name__)

WINDOW_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("request_json", pa.string()), ("window_id", pa.string()),
    ("window_index", pa.int32()), ("num_windows", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
    ("source_indices", pa.string()), ("driving_indices", pa.string()), ("transform_json", pa.string()),
    ("info_json", pa.string()), ("window_uri", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("seconds_probe", pa.float64()), ("seconds_prepare", pa.float64()), ("seconds_edit", pa.float64()),
    ("seconds_write", pa.float64()), ("edit_seconds", pa.float64()), ("actor_busy_seconds", pa.float64()),
    ("edit_started_at", pa.float64()), ("edit_ended_at", pa.float64()), ("gpu_memory_peak_bytes", pa.float64()),
    ("identity_json", pa.string()), ("payload", pa.large_binary()),
])
PAYLOAD_KEYS = ("source_frames", "source_poses", "target_poses", "source_masks", "target_masks")
PLAN_FAILED = -1  # window_index of the single row a failed plan emits


@dataclass
class RunConfig:
    """Everything one ``mf retarget`` run needs (serialisable: it is shipped to the stages)."""

    manifest: str
    out: str
    weights: Optional[str] = None  # None: the preset with seeded random weights
    preset: str = "tiny"
    dtype: str = "fp32"
    device: str = "cpu"
    actors: int = 1  # edit actors (fixed pool)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    prepare_actors: int = 1
    prepare_cpus: float = 1.0  # per prepare actor
    plan_cpus: float = 0.5  # per plan task (probe + reference alignment)
    stitch_cpus: float = 1.0  # per stitch task (ffmpeg runs inside)
    auto_resources: bool = True  # shrink the CPU fields above to fit the cluster (see fit_resources)
    max_retries: int = 2  # extra attempts of a window whose edit actor died (system failures only)
    crossfade: bool = True
    output_scale: str = "source"  # "source": edit upscaled to the source resolution; "model": model scale
    pose_backend: str = "mediapipe"
    fit_mode: str = "pad"
    compress_windows: bool = False
    encode_preset: str = "medium"
    encode_crf: int = 18
    prepare_module: str = "pipelines.prepare"  # a module with probe_video/driving_index_map/... (tests swap it)
    results_name: str = "results.parquet"
    run_id: str = ""  # set per run by run_pipeline (scopes the attempt counters)
    die_once_marker: Optional[str] = None  # tests only: the edit actor os._exit()s once, recorded in this local file

    @property
    def results_uri(self) -> str:
        return storage.join(self.out, self.results_name)

    def marker_uri(self, request_id: str) -> str:
        return storage.join(self.out, "requests", f"{request_id}.json")

    def window_uri(self, request_id: str, wid: str) -> str:
        return storage.join(self.out, "windows", request_id, f"{wid}.npz")


def fit_resources(cfg: RunConfig, cluster_cpus: float) -> RunConfig:
    """CPU shares that fit the cluster: both actor pools plus one plan and one stitch task must fit at once.

    On a big enough cluster ``cfg`` is returned unchanged. Otherwise plan and stitch tasks get
    ``min(0.25, cpus / 8)`` CPU each and the actors share the rest equally (never more than asked). Raises
    ``ValueError`` when the pools cannot fit at all (less than 0.05 CPU per actor).
    """
    if not cfg.auto_resources:
        return cfg
    n_actors = max(1, cfg.actors) + max(1, cfg.prepare_actors)
    need = (max(1, cfg.actors) * cfg.cpus_per_actor + max(1, cfg.prepare_actors) * cfg.prepare_cpus
            + cfg.plan_cpus + cfg.stitch_cpus)
    if need <= cluster_cpus:
        return cfg
    task = round(min(0.25, cluster_cpus / 8), 3)
    per = (cluster_cpus - 2 * task) / n_actors
    if per < 0.05:
        raise ValueError(f"a cluster with {cluster_cpus:g} CPUs cannot hold {cfg.actors} edit and "
                         f"{cfg.prepare_actors} prepare actors; use fewer --actors/--prepare-actors")
    per = float(np.floor(per * 1000) / 1000)
    fitted = dataclasses.replace(cfg, plan_cpus=min(cfg.plan_cpus, task), stitch_cpus=min(cfg.stitch_cpus, task),
                                 cpus_per_actor=min(cfg.cpus_per_actor, per), prepare_cpus=min(cfg.prepare_cpus, per))
    log.info("cluster has %g CPUs: edit actors %g CPU, prepare actors %g CPU, plan/stitch tasks %g/%g CPU",
             cluster_cpus, fitted.cpus_per_actor, fitted.prepare_cpus, fitted.plan_cpus, fitted.stitch_cpus)
    return fitted


def configure_data_context(cfg: RunConfig):
    """Set Ray Data's failure behaviour deliberately (see the module docstring)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.max_errored_blocks = 0  # stages turn input errors into failed rows; anything escaping is a bug: stop
    ctx.actor_task_retry_on_errors = False  # application errors are deterministic: no retries
    ctx.enable_progress_bars = False  # the driver shows its own progress
    ctx.wait_for_min_actors_s = 600  # the model may take a while to load on a cold node
    return ctx


def _err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:500]


def _window_row(**kw: Any) -> dict[str, Any]:
    row = {name: None for name in WINDOW_SCHEMA.names}
    row.update(kw)
    return row


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA)


def request_of(row: dict[str, Any]) -> Request:
    return Request(**json.loads(row["request_json"]))


# ------------------------------------------------------------------------------------------------ plan

def plan_rows(req: Request, cfg: RunConfig, prep: Any = None) -> list[dict[str, Any]]:
    """Probe one request and plan its windows (one row each, ``status`` pending or skipped when its frames exist).

    The alignment transform is computed once here and carried in every row. A failure gives one failed row with
    ``window_index == PLAN_FAILED``.
    """
    request_json = json.dumps(req.to_dict())
    t0 = time.perf_counter()
    try:
        prep = prep or importlib.import_module(cfg.prepare_module)
        s_info = prep.probe_video(req.source)
        track = None
        if req.driving.lower().endswith((".parquet", ".json")):
            track = prep.read_pose_track(req.driving)
        d_info = track if track is not None else prep.probe_video(req.driving)
        start = min(req.frame_start, s_info.frames)
        stop = s_info.frames if req.frame_end is None else min(req.frame_end, s_info.frames)
        if stop <= start:
            raise ValueError(f"frame range [{req.frame_start}, {req.frame_end}) is empty for a "
                             f"{s_info.frames}-frame source")
        ranged = dataclasses.replace(s_info, frames=stop - start)
        n, dmap = prep.driving_index_map(ranged, d_info, req.length_policy)
        if n <= 0:
            raise ValueError("no output frames (empty driving motion?)")
        src_idx = [start + k for k in range(n)]
        transform = prep.reference_alignment(req.source, req.driving, src_idx, dmap, req.size, cfg.fit_mode,
                                             backend=cfg.pose_backend)
        wins = plan_windows(n, req.window, req.overlap)
        fps = to_fraction(req.fps) if req.fps else to_fraction(s_info.fps)
        from pipelines.media import fit_geometry

        geo = fit_geometry((s_info.height, s_info.width), req.size, cfg.fit_mode)
        info = {"frames": n, "fps": fraction_str(fps), "source_fps": float(s_info.fps),
                "has_audio": bool(getattr(s_info, "has_audio", False)), "geometry": geo,
                "source_hw": [int(s_info.height), int(s_info.width)]}
    except Exception as exc:  # noqa: BLE001 - one bad request fails its own row
        log.info("plan failed for %s: %s", req.request_id, exc)
        return [_window_row(request_id=req.request_id, request_json=request_json, window_index=PLAN_FAILED,
                            num_windows=0, status="failed", error=f"plan: {_err(exc)}",
                            seconds_probe=time.perf_counter() - t0)]
    secs = time.perf_counter() - t0
    rows = []
    params = req.edit_params()
    for w in wins:
        wid = window_id(req.request_id, req.source, w, params)
        uri = cfg.window_uri(req.request_id, wid)
        done = storage.exists(uri)
        rows.append(_window_row(
            request_id=req.request_id, request_json=request_json, window_id=wid, window_index=w.index,
            num_windows=len(wins), start=w.start, end=w.end,
            source_indices=json.dumps(src_idx[w.start:w.end]), driving_indices=json.dumps(dmap[w.start:w.end]),
            transform_json=json.dumps(transform), info_json=json.dumps(info), window_uri=uri,
            status="skipped" if done else "pending", error=None, seconds_probe=secs / len(wins)))
    return rows


def plan_request(item: dict[str, Any], cfg: RunConfig) -> list[dict[str, Any]]:
    """The Ray Data ``flat_map`` of the plan stage."""
    return plan_rows(Request(**json.loads(item["request_json"])), cfg)


# ------------------------------------------------------------------------------------------------ prepare

def prepare_row(row: dict[str, Any], cfg: RunConfig, prep: Any) -> dict[str, Any]:
    """Decode the window's frames only, poses, masks, renders → ``row["payload"]`` (npz bytes). Rows that are not
    pending pass through."""
    if row["status"] != "pending":
        return row
    req = request_of(row)
    t0 = time.perf_counter()
    try:
        arrays = prep.prepare_window(
            req.source, req.driving, json.loads(row["source_indices"]), json.loads(row["driving_indices"]),
            json.loads(row["transform_json"]), req.size, cfg.fit_mode, cfg.pose_backend)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(arrays[k]) for k in PAYLOAD_KEYS})
        row.update(payload=buf.getvalue(), seconds_prepare=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", error=f"prepare window {row['window_index']}: {_err(exc)}",
                   seconds_prepare=time.perf_counter() - t0)
    return row


class PrepareStage:
    """CPU actor of the prepare stage (wraps :func:`prepare_row`)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.prep = importlib.import_module(cfg.prepare_module)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _table([prepare_row(row, self.cfg, self.prep) for row in batch.to_pylist()])


# ------------------------------------------------------------------------------------------------ edit

def load_model(cfg: RunConfig):
    import mf_model

    return mf_model.load_model(cfg.weights, preset_name=cfg.preset, dtype=cfg.dtype, device=cfg.device)


def edit_row(row: dict[str, Any], model: Any, identity: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """Edit one prepared window with ``model`` and write its frames atomically to ``row["window_uri"]``.

    Consumes ``row["payload"]``; the returned row is small. Rows that are not pending pass through.
    """
    import mf_model

    payload = row.get("payload")
    row["payload"] = None
    if row["status"] != "pending":
        return row
    t0 = time.perf_counter()
    row["edit_started_at"] = time.time()
    try:
        req = request_of(row)
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        window = mf_model.EditWindow(
            source_frames=arrays["source_frames"], source_poses=arrays["source_poses"],
            target_poses=arrays["target_poses"], source_masks=arrays["source_masks"],
            target_masks=arrays["target_masks"], frame_indices=list(range(row["start"], row["end"])),
            name=f"{req.request_id}[{row['start']}:{row['end']}]")
        opts = mf_model.EditOptions(steps=req.steps, cfg=req.cfg, camera=req.camera, seed=req.seed)
        t1 = time.perf_counter()
        result = model.edit(window, opts)
        edit_s = time.perf_counter() - t1
        extra = {}
        if req.preview:
            extra = {"source_frames": arrays["source_frames"], "target_poses": arrays["target_poses"]}
        t2 = time.perf_counter()
        storage.write_npz(row["window_uri"], compress=cfg.compress_windows, frames=result.frames,
                          identity=np.array(json.dumps(identity, sort_keys=True)), **extra)
        row.update(status="succeeded", edit_seconds=edit_s, seconds_write=time.perf_counter() - t2,
                   gpu_memory_peak_bytes=_gpu_peak(), identity_json=json.dumps(identity, sort_keys=True))
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", error=f"edit window {row['window_index']}: {_err(exc)}")
        log.debug("edit failed: %s", traceback.format_exc())
    busy = time.perf_counter() - t0
    row.update(seconds_edit=busy, actor_busy_seconds=busy, edit_ended_at=time.time())
    return row


class EditStage:
    """The GPU actor: holds the model for its lifetime, edits one window per call (wraps :func:`edit_row`), and
    bounds the attempts of a window whose actor died (see the module docstring)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        t0 = time.perf_counter()
        self.model = load_model(cfg)
        self.identity = self.model.identity()
        log.info("edit actor loaded %s in %.1fs", self.identity, time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["status"] == "pending":
                counter = f"{row['window_uri']}.attempts-{self.cfg.run_id}"
                attempts = int(storage.read_bytes(counter)) if storage.exists(counter) else 0
                if attempts > self.cfg.max_retries:
                    row.update(payload=None, status="failed",
                               error=f"edit window {row['window_index']}: the edit actor died {attempts} times on "
                                     f"this window (max_retries={self.cfg.max_retries})")
                    out.append(row)
                    continue
                storage.atomic_write_text(counter, str(attempts + 1))
                self._maybe_die()
                row = edit_row(row, self.model, self.identity, self.cfg)
                storage.remove(counter)
            else:
                row["payload"] = None
            out.append(row)
        return _table(out)

    def _maybe_die(self) -> None:
        marker = self.cfg.die_once_marker
        if marker and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            log.warning("test hook: edit actor %d exits", os.getpid())
            os._exit(1)


def _gpu_peak() -> float:
    try:
        import torch

        return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


# ------------------------------------------------------------------------------------------------ stitch

def _output_geometry(info: dict[str, Any], size: int, output_scale: str):
    """(crop box in the model frame, output (h, w)): the letterbox removed; at source or model scale."""
    geo = info["geometry"]
    sh, sw = info["source_hw"]
    s = geo["scale"]
    nh, nw = max(1, round(sh * s)), max(1, round(sw * s))
    y0, x0 = max(0, geo["oy"]), max(0, geo["ox"])
    y1, x1 = min(size, geo["oy"] + nh), min(size, geo["ox"] + nw)
    if output_scale == "model":
        return (y0, y1, x0, x1), (y1 - y0, x1 - x0)
    # the part of the source the model saw, in source pixels (all of it in "pad" mode)
    oh = sh if (y0, y1) == (geo["oy"], geo["oy"] + nh) else max(1, round((y1 - y0) / s))
    ow = sw if (x0, x1) == (geo["ox"], geo["ox"] + nw) else max(1, round((x1 - x0) / s))
    return (y0, y1, x0, x1), (oh, ow)


def _identity_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    for r in rows:
        if r.get("identity_json"):
            return json.loads(r["identity_json"])
    z = storage.read_npz(rows[0]["window_uri"])  # all windows came from an earlier run: their files know
    return json.loads(str(z["identity"])) if "identity" in z else {}


def stitch_request(rows: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Blend a request's windows in order into its video (+ preview); commit; write the done marker."""
    from PIL import Image

    rows = sorted(rows, key=lambda r: r["window_index"])
    identity = _identity_of(rows)
    req = request_of(rows[0])
    info = json.loads(rows[0]["info_json"])
    t0 = time.perf_counter()
    wins = [(r["start"], r["end"]) for r in rows]
    uris = [r["window_uri"] for r in rows]
    (y0, y1, x0, x1), (oh, ow) = _output_geometry(info, req.size, cfg.output_scale)

    def to_output(frame: np.ndarray) -> np.ndarray:
        frame = frame[y0:y1, x0:x1]
        if frame.shape[:2] != (oh, ow):
            frame = np.asarray(Image.fromarray(frame).resize((ow, oh), Image.LANCZOS))
        return frame

    def read_window(w):
        return storage.read_npz(uris[w.index])["frames"]

    # audio: the source's track from the first edited frame, unless the frame rate was changed (re-timed frames)
    audio, offset = None, 0.0
    if info["has_audio"] and (not req.fps or to_fraction(req.fps) == to_fraction(info["source_fps"])):
        audio, offset = req.source, req.frame_start / float(info["source_fps"])
    kw = dict(preset=cfg.encode_preset, crf=cfg.encode_crf)
    with VideoWriter(req.output, info["fps"], audio_from=audio, audio_offset=offset, **kw) as writer:
        stats = stitch_to_writer(wins, read_window, writer, crossfade=cfg.crossfade,
                                 transform=to_output)
    if req.preview and req.preview_output:
        def read_preview(w):
            z = storage.read_npz(uris[w.index])
            crop = (slice(y0, y1), slice(x0, x1))
            return np.stack([side_by_side(a[crop], b[crop], c[crop])
                             for a, b, c in zip(z["source_frames"], z["target_poses"], z["frames"])])

        with VideoWriter(req.preview_output, info["fps"], **kw) as pw:
            for _, frame in iter_stitched(wins, read_preview, crossfade=cfg.crossfade):
                pw.write(frame)
    res = writer.result
    row = ResultRow.for_request(
        req, "succeeded", frames=res.frames, fps=float(to_fraction(res.fps)), fps_rational=res.fps,
        width=res.width, height=res.height, windows=len(rows), seam_score=stats.seam_score,
        seconds_probe=sum(r["seconds_probe"] or 0 for r in rows),
        seconds_prepare=sum(r["seconds_prepare"] or 0 for r in rows),
        seconds_edit=sum(r["seconds_edit"] or 0 for r in rows), seconds_stitch=time.perf_counter() - t0,
        model=identity.get("model"), weights_id=identity.get("weights_id"),
        finished_at=datetime.now(timezone.utc)).to_dict()
    marker = dict(row, finished_at=row["finished_at"].isoformat())
    storage.atomic_write_text(cfg.marker_uri(req.request_id), json.dumps(marker, sort_keys=True))
    return row


def finish_request(rows: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """The result row of a request whose window rows are all in: failed (first failed window's error) or stitched.

    A failed plan (one row with ``window_index == PLAN_FAILED``) gives its failed row."""
    req = request_of(rows[0])
    if rows[0]["window_index"] == PLAN_FAILED:
        return ResultRow.for_request(req, "failed", error=rows[0]["error"],
                                     seconds_probe=rows[0]["seconds_probe"]).to_dict()
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        first = min(failed, key=lambda r: r["window_index"])
        return ResultRow.for_request(req, "failed", error=first["error"], windows=len(rows)).to_dict()
    try:
        return stitch_request(rows, cfg)
    except Exception as exc:  # noqa: BLE001
        log.info("stitch failed for %s: %s", req.request_id, exc)
        return ResultRow.for_request(req, "failed", error=f"stitch: {_err(exc)}", windows=len(rows)).to_dict()


def skipped_row(req: Request, cfg: RunConfig) -> Optional[dict[str, Any]]:
    """The result row of a request an earlier run finished (status ``skipped``), or None."""
    marker = cfg.marker_uri(req.request_id)
    if not (storage.exists(marker) and storage.exists(req.output)):
        return None
    row = json.loads(storage.read_bytes(marker))
    row["status"] = "skipped"
    row["finished_at"] = datetime.fromisoformat(row["finished_at"]) if row.get("finished_at") else None
    return row


# ------------------------------------------------------------------------------------------------ driver

@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    edit_busy_seconds: float = 0.0  # inside the edit actors (load, model, write)
    model_seconds: float = 0.0  # inside model.edit
    first_window_seconds: Optional[float] = None  # run start → first window edited
    edit_span_seconds: float = 0.0  # first edit started → last edit ended
    actors: int = 1
    results_uri: str = ""
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def edit_busy_share(self) -> float:
        """Share of the run (from the first edit on) the edit actors were busy."""
        denom = self.actors * self.edit_span_seconds
        return self.edit_busy_seconds / denom if denom > 0 else 0.0

    @property
    def model_share(self) -> float:
        """Share of the whole wall time the edit actors spent inside the model."""
        denom = self.actors * self.wall_seconds
        return self.model_seconds / denom if denom > 0 else 0.0


def run_pipeline(cfg: RunConfig, metrics: Optional[PipelineMetrics] = None,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> RunSummary:
    """Run a manifest end to end on the current Ray cluster (the caller initialises Ray)."""
    import ray
    import ray.data

    if storage.protocol_of(cfg.out) == "memory":
        raise ValueError("memory:// is private to one process and Ray stages run in others: use a shared "
                         "filesystem (local path, s3://, gs://) for --out, or pipelines.single.edit_request")
    cfg = fit_resources(cfg, float(ray.cluster_resources().get("CPU", 1.0)))
    cfg = dataclasses.replace(cfg, run_id=cfg.run_id or uuid.uuid4().hex[:12])
    metrics = metrics or PipelineMetrics()
    metrics.start_run()
    t_start = time.perf_counter()
    wall_start = time.time()
    man = read_manifest(cfg.manifest, cfg.out)
    results: list[dict[str, Any]] = [ResultRow.for_invalid(b).to_dict() for b in man.invalid]
    todo: list[Request] = []
    for req in man.requests:
        skipped = skipped_row(req, cfg)
        if skipped is not None:
            results.append(skipped)
        else:
            todo.append(req)
    for r in results:
        metrics.record_result_row(r)
    summary = RunSummary(actors=cfg.actors, results_uri=cfg.results_uri,
                         resources={"edit_actor_cpus": cfg.cpus_per_actor, "prepare_actor_cpus": cfg.prepare_cpus,
                                    "plan_cpus": cfg.plan_cpus, "stitch_cpus": cfg.stitch_cpus,
                                    "gpus_per_actor": cfg.gpus_per_actor})
    window_counts: Counter = Counter()
    edit_starts: list[float] = []
    edit_ends: list[float] = []
    if todo:
        configure_data_context(cfg)
        items = [{"request_json": json.dumps(r.to_dict())} for r in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(plan_request, fn_kwargs={"cfg": cfg}, num_cpus=cfg.plan_cpus)
        ds = ds.map_batches(PrepareStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.prepare_actors)),
                            num_cpus=cfg.prepare_cpus)
        ds = ds.map_batches(EditStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.actors)),
                            num_gpus=cfg.gpus_per_actor or None, num_cpus=cfg.cpus_per_actor)
        finish_remote = ray.remote(num_cpus=cfg.stitch_cpus, max_retries=cfg.max_retries)(finish_request)
        pending: dict[str, list[dict]] = defaultdict(list)
        futures: dict[Any, Request] = {}
        by_id = {r.request_id: r for r in todo}
        windows_known = windows_done = 0

        def add_result(row: dict[str, Any]) -> None:
            row["seconds_total"] = time.perf_counter() - t_start
            results.append(row)
            metrics.record_result_row(row)
            if progress:
                progress("request", len(results), len(man))

        def collect(block: bool) -> None:
            if not futures:
                return
            done, _ = ray.wait(list(futures), num_returns=len(futures) if block else 1,
                               timeout=None if block else 0)
            for f in done:
                req = futures.pop(f)
                try:
                    row = ray.get(f)
                except Exception as exc:  # noqa: BLE001 - the stitch task itself died (retries exhausted)
                    row = ResultRow.for_request(req, "failed", error=f"stitch: {_err(exc)}").to_dict()
                add_result(row)

        for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow"):
            for row in batch.to_pylist():
                row.pop("payload", None)
                rid = row["request_id"]
                if row["window_index"] == PLAN_FAILED:
                    add_result(finish_request([row], cfg))
                    continue
                if not pending[rid]:
                    windows_known += row["num_windows"]
                windows_done += 1
                metrics.record_window_row(row)
                metrics.add_busy(row.get("seconds_prepare"), "prepare")
                metrics.set_queue_depth(windows_known - windows_done)
                window_counts[row["status"]] += 1
                summary.edit_busy_seconds += row["actor_busy_seconds"] or 0.0
                summary.model_seconds += row["edit_seconds"] or 0.0
                if row.get("edit_started_at"):
                    edit_starts.append(row["edit_started_at"])
                    edit_ends.append(row["edit_ended_at"])
                if progress:
                    progress("window", windows_done, windows_known)
                pending[rid].append(row)
                if len(pending[rid]) == row["num_windows"]:
                    futures[finish_remote.remote(pending.pop(rid), cfg)] = by_id[rid]
            collect(block=False)
        collect(block=True)
        metrics.set_queue_depth(0)
        for rid, rows in pending.items():  # cannot happen unless rows were lost
            add_result(ResultRow.for_request(by_id[rid], "failed",
                                             error=f"only {len(rows)} of {rows[0]['num_windows']} windows "
                                                   "came back").to_dict())
    order = {r.request_id: r.row for r in man.requests}
    order.update({b.request_id: b.row for b in man.invalid})
    results.sort(key=lambda r: order.get(r["request_id"], 0))
    write_results(results, cfg.results_uri)
    summary.wall_seconds = time.perf_counter() - t_start
    summary.counts = dict(Counter(r["status"] for r in results))
    summary.frames = sum(r.get("frames") or 0 for r in results if r["status"] == "succeeded")
    summary.windows = dict(window_counts)
    if edit_starts:
        summary.first_window_seconds = min(edit_ends) - wall_start
        summary.edit_span_seconds = max(edit_ends) - min(edit_starts)
    return summary
