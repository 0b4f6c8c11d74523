"""The batch pipeline of ``mf retarget`` on Ray Data (design §3, §5).

Stages (rows are windows, never frames or whole videos)::

    requests (driver) ─ skip finished ─▶ plan (flat_map, CPU): probe, length map, windows, alignment once per request
        ─▶ prepare (actor pool, CPU): decode the window's frames only, poses, masks, renders → payload bytes
        ─▶ edit (fixed actor pool holding the model, num_gpus per actor, batch_size=1): edit, write window frames
           atomically to ``<out>/windows/<request_id>/<window_id>.npz``, emit a small row
        ─▶ driver: collects small rows per request; when a request's windows are all in, a stitch task (CPU)
           blends them in frame order (crossfade) and streams frames into ffmpeg → result row
        ─▶ ``<out>/results.parquet`` (atomic)

No groupby/shuffle in the streaming DAG. Failures never raise out of a stage: a bad request or window becomes a row
with ``status="failed"`` and its ``error``; the request fails, the job goes on. Therefore Ray Data's fail-hard
defaults are kept on purpose (``max_errored_blocks=0``: an exception escaping a stage is a bug and stops the run),
application errors are not retried (``actor_task_retry_on_errors=False``: they are deterministic), while system
failures are: a dead edit actor is restarted (``max_restarts``) and its window retried (``max_task_retries``),
both bounded by ``RunConfig.max_retries``.

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
import time
import traceback
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
from pipelines.stitch import iter_stitched, npz_window_reader, side_by_side, stitch_to_writer
from pipelines.windows import plan_windows, window_id

log = logging.getLogger(__name__)

WINDOW_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("request_json", pa.string()), ("window_id", pa.string()),
    ("window_index", pa.int32()), ("num_windows", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
    ("source_indices", pa.string()), ("driving_indices", pa.string()), ("transform_json", pa.string()),
    ("info_json", pa.string()), ("window_uri", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("seconds_probe", pa.float64()), ("seconds_prepare", pa.float64()), ("seconds_edit", pa.float64()),
    ("edit_seconds", pa.float64()), ("actor_busy_seconds", pa.float64()), ("gpu_memory_peak_bytes", pa.float64()),
    ("identity_json", pa.string()), ("payload", pa.large_binary()),
])
PAYLOAD_KEYS = ("source_frames", "source_poses", "target_poses", "source_masks", "target_masks")


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
    max_retries: int = 2  # edit-actor restarts and window retries after a system failure
    crossfade: bool = True
    pose_backend: str = "mediapipe"
    fit_mode: str = "pad"
    compress_windows: bool = False
    encode_preset: str = "medium"
    encode_crf: int = 18
    prepare_module: str = "pipelines.prepare"  # a module with probe_video/driving_index_map/... (tests swap it)
    results_name: str = "results.parquet"

    @property
    def results_uri(self) -> str:
        return storage.join(self.out, self.results_name)

    def marker_uri(self, request_id: str) -> str:
        return storage.join(self.out, "requests", f"{request_id}.json")

    def window_uri(self, request_id: str, wid: str) -> str:
        return storage.join(self.out, "windows", request_id, f"{wid}.npz")


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


# ------------------------------------------------------------------------------------------------ plan

def plan_request(item: dict[str, Any], cfg: RunConfig) -> list[dict[str, Any]]:
    """Probe one request and plan its windows; a failure gives one failed row (window_index -1)."""
    req = Request(**json.loads(item["request_json"]))
    t0 = time.perf_counter()
    try:
        prep = importlib.import_module(cfg.prepare_module)
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
        return [_window_row(request_id=req.request_id, request_json=item["request_json"], window_index=-1,
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
            request_id=req.request_id, request_json=item["request_json"], window_id=wid, window_index=w.index,
            num_windows=len(wins), start=w.start, end=w.end,
            source_indices=json.dumps(src_idx[w.start:w.end]), driving_indices=json.dumps(dmap[w.start:w.end]),
            transform_json=json.dumps(transform), info_json=json.dumps(info), window_uri=uri,
            status="skipped" if done else "pending", error=None, seconds_probe=secs / len(wins)))
    return rows


# ------------------------------------------------------------------------------------------------ prepare

class PrepareStage:
    """CPU actor: decode the window's frames, poses, masks and renders; pack them into ``payload``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.prep = importlib.import_module(cfg.prepare_module)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["status"] != "pending":
                out.append(row)
                continue
            req = Request(**json.loads(row["request_json"]))
            t0 = time.perf_counter()
            try:
                arrays = self.prep.prepare_window(
                    req.source, req.driving, json.loads(row["source_indices"]), json.loads(row["driving_indices"]),
                    json.loads(row["transform_json"]), req.size, self.cfg.fit_mode, self.cfg.pose_backend)
                buf = io.BytesIO()
                np.savez(buf, **{k: np.asarray(arrays[k]) for k in PAYLOAD_KEYS})
                row.update(payload=buf.getvalue(), seconds_prepare=time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                row.update(status="failed", error=f"prepare window {row['window_index']}: {_err(exc)}",
                           seconds_prepare=time.perf_counter() - t0)
            out.append(row)
        return _table(out)


# ------------------------------------------------------------------------------------------------ edit

class EditStage:
    """The GPU actor: holds the model for its lifetime, edits one window per call, writes its frames."""

    def __init__(self, cfg: RunConfig) -> None:
        import mf_model

        self.cfg = cfg
        t0 = time.perf_counter()
        self.model = mf_model.load_model(cfg.weights, preset_name=cfg.preset, dtype=cfg.dtype, device=cfg.device)
        self.identity = self.model.identity()
        log.info("edit actor loaded %s in %.1fs", self.identity, time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import mf_model

        out = []
        for row in batch.to_pylist():
            payload = row.pop("payload", None)
            row["payload"] = None
            if row["status"] != "pending":
                out.append(row)
                continue
            t0 = time.perf_counter()
            try:
                req = Request(**json.loads(row["request_json"]))
                with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                window = mf_model.EditWindow(
                    source_frames=arrays["source_frames"], source_poses=arrays["source_poses"],
                    target_poses=arrays["target_poses"], source_masks=arrays["source_masks"],
                    target_masks=arrays["target_masks"], frame_indices=list(range(row["start"], row["end"])),
                    name=f"{req.request_id}[{row['start']}:{row['end']}]")
                opts = mf_model.EditOptions(steps=req.steps, cfg=req.cfg, camera=req.camera, seed=req.seed)
                t1 = time.perf_counter()
                result = self.model.edit(window, opts)
                edit_s = time.perf_counter() - t1
                extra = {}
                if req.preview:
                    extra = {"source_frames": arrays["source_frames"], "target_poses": arrays["target_poses"]}
                storage.write_npz(row["window_uri"], compress=self.cfg.compress_windows, frames=result.frames,
                                  **extra)
                row.update(status="succeeded", edit_seconds=edit_s, gpu_memory_peak_bytes=_gpu_peak(),
                           identity_json=json.dumps(self.identity))
            except Exception as exc:  # noqa: BLE001
                row.update(status="failed", error=f"edit window {row['window_index']}: {_err(exc)}")
                log.debug("edit failed: %s", traceback.format_exc())
            busy = time.perf_counter() - t0
            row.update(seconds_edit=busy, actor_busy_seconds=busy)
            out.append(row)
        return _table(out)


def _gpu_peak() -> float:
    try:
        import torch

        return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


# ------------------------------------------------------------------------------------------------ stitch

def stitch_request(rows: list[dict[str, Any]], cfg: RunConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """Blend a request's windows in order into its video (+ preview); commit; write the done marker."""
    rows = sorted(rows, key=lambda r: r["window_index"])
    edited = [json.loads(r["identity_json"]) for r in rows if r.get("identity_json")]
    if edited:
        identity = edited[0]
    req = Request(**json.loads(rows[0]["request_json"]))
    info = json.loads(rows[0]["info_json"])
    t0 = time.perf_counter()
    wins = [(r["start"], r["end"]) for r in rows]
    uris = [r["window_uri"] for r in rows]
    geo = info["geometry"]
    sh, sw = info["source_hw"]
    s = geo["scale"]
    nh, nw = max(1, round(sh * s)), max(1, round(sw * s))
    y0, x0 = max(0, geo["oy"]), max(0, geo["ox"])
    y1, x1 = min(req.size, y0 + nh), min(req.size, x0 + nw)

    def crop(frame: np.ndarray) -> np.ndarray:  # undo the letterbox: the source's aspect at model scale
        return frame[y0:y1, x0:x1]

    audio = req.source if info["has_audio"] and req.frame_start == 0 and not req.fps else None
    kw = dict(preset=cfg.encode_preset, crf=cfg.encode_crf)
    with VideoWriter(req.output, info["fps"], audio_from=audio, **kw) as writer:
        stats = stitch_to_writer(wins, lambda w: np.stack([crop(f) for f in npz_window_reader(uris)(w)]), writer,
                                 crossfade=cfg.crossfade)
    if req.preview and req.preview_output:
        def read_preview(w):
            z = storage.read_npz(uris[w.index])
            return np.stack([side_by_side(crop(a), crop(b), crop(c))
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


# ------------------------------------------------------------------------------------------------ driver

@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    edit_busy_seconds: float = 0.0
    actors: int = 1
    results_uri: str = ""

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def edit_busy_share(self) -> float:
        denom = self.actors * self.wall_seconds
        return self.edit_busy_seconds / denom if denom > 0 else 0.0


def _skipped_row(req: Request, cfg: RunConfig) -> Optional[dict[str, Any]]:
    marker = cfg.marker_uri(req.request_id)
    if not (storage.exists(marker) and storage.exists(req.output)):
        return None
    row = json.loads(storage.read_bytes(marker))
    row["status"] = "skipped"
    row["finished_at"] = datetime.fromisoformat(row["finished_at"]) if row.get("finished_at") else None
    return row


def run_pipeline(cfg: RunConfig, metrics: Optional[PipelineMetrics] = None,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> RunSummary:
    """Run a manifest end to end on the current Ray cluster (the caller initialises Ray)."""
    import ray
    import ray.data

    metrics = metrics or PipelineMetrics()
    metrics.start_run()
    t_start = time.perf_counter()
    man = read_manifest(cfg.manifest, cfg.out)
    results: list[dict[str, Any]] = [ResultRow.for_invalid(b).to_dict() for b in man.invalid]
    todo: list[Request] = []
    for req in man.requests:
        skipped = _skipped_row(req, cfg)
        if skipped is not None:
            results.append(skipped)
        else:
            todo.append(req)
    for r in results:
        metrics.record_result_row(r)
    summary = RunSummary(actors=cfg.actors, results_uri=cfg.results_uri)
    window_counts: Counter = Counter()
    if todo:
        configure_data_context(cfg)
        items = [{"request_json": json.dumps(r.to_dict())} for r in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(plan_request, fn_kwargs={"cfg": cfg}, num_cpus=cfg.plan_cpus)
        ds = ds.map_batches(PrepareStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.prepare_actors)),
                            num_cpus=cfg.prepare_cpus)
        ds = ds.map_batches(
            EditStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.actors)), num_gpus=cfg.gpus_per_actor or None,
            num_cpus=cfg.cpus_per_actor,
            # bounded recovery from actor death (Ray Data's default is unbounded)
            max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries)
        identity = _identity(cfg)
        stitch_remote = ray.remote(num_cpus=cfg.stitch_cpus, max_retries=cfg.max_retries)(stitch_request)
        pending: dict[str, list[dict]] = defaultdict(list)
        futures: dict[Any, Request] = {}
        by_id = {r.request_id: r for r in todo}
        total_windows = 0

        def collect(block: bool) -> None:
            if not futures:
                return
            done, _ = ray.wait(list(futures), num_returns=len(futures) if block else 1,
                               timeout=None if block else 0)
            for f in done:
                req = futures.pop(f)
                try:
                    row = ray.get(f)
                except Exception as exc:  # noqa: BLE001
                    row = ResultRow.for_request(req, "failed", error=f"stitch: {_err(exc)}").to_dict()
                row["seconds_total"] = time.perf_counter() - t_start
                results.append(row)
                metrics.record_result_row(row)
                if progress:
                    progress("request", len(results), len(man))

        for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow"):
            for row in batch.to_pylist():
                row.pop("payload", None)
                rid = row["request_id"]
                if row["window_index"] == -1:  # the plan failed
                    results.append(ResultRow.for_request(by_id[rid], "failed", error=row["error"],
                                                         seconds_probe=row["seconds_probe"]).to_dict())
                    metrics.record_result_row(results[-1])
                    continue
                metrics.record_window_row(row)
                window_counts[row["status"]] += 1
                summary.edit_busy_seconds += row["actor_busy_seconds"] or 0.0
                total_windows += 1
                if progress:
                    progress("window", total_windows, 0)
                pending[rid].append(row)
                if len(pending[rid]) == row["num_windows"]:
                    rows = pending.pop(rid)
                    failed = [r for r in rows if r["status"] == "failed"]
                    if failed:
                        first = min(failed, key=lambda r: r["window_index"])
                        results.append(ResultRow.for_request(by_id[rid], "failed", error=first["error"],
                                                             windows=len(rows)).to_dict())
                        metrics.record_result_row(results[-1])
                    else:
                        futures[stitch_remote.remote(rows, cfg, identity)] = by_id[rid]
            collect(block=False)
        collect(block=True)
        for rid, rows in pending.items():  # cannot happen unless rows were lost
            results.append(ResultRow.for_request(by_id[rid], "failed",
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
    return summary


def _identity(cfg: RunConfig) -> dict[str, Any]:
    """Model identity without loading weights on the driver where possible."""
    return {"model": cfg.preset if cfg.weights is None else "sd15", "weights_id": cfg.weights or f"random:{cfg.preset}"}
