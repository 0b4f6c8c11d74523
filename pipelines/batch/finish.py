"""The last stage of a request: its windows blended in frame order into the output video, and its result row.

:func:`finish_request` takes all :class:`~pipelines.batch.tasks.WindowTask` of a request once they are in: a failed
plan or window gives a failed row; otherwise :func:`stitch_request` streams the crossfaded windows into ffmpeg
(memory O(window)), writes the optional side-by-side preview, commits the video atomically and then writes the
request's done marker, ``<out>/requests/<request_id>.json``, then deletes the request's intermediate windows (unless
``keep_windows``). :func:`skipped_row` reads that marker back on a re-run and trusts it only while the request's
content key (:mod:`pipelines.batch.identity`) is unchanged.
A fused request's tasks are groups (:attr:`~pipelines.batch.tasks.WindowTask.members`): the stitcher sees their
member windows, all in frame order, read from the same per-window files (inside a group the windows agree on their
shared frames, so the crossfade there is the identity; it blends consecutive groups as it blends windows).
No Ray here: the driver runs :func:`finish_request` as a Ray task, :mod:`pipelines.batch.single` calls it directly.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np

from pipelines.batch.cancel import Cancel, Cancelled, check_cancel
from pipelines.batch.config import RunConfig
from pipelines.batch.identity import RequestIdentity
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.status import FAILED, SKIPPED, SUCCEEDED
from pipelines.batch.tasks import RequestPlan, WindowTask, error_text
from pipelines.media import storage
from pipelines.media.encode import VideoWriter
from pipelines.media.timeline import to_fraction
from pipelines.windows.planning import Window
from pipelines.windows.stitch import iter_stitched, side_by_side, stitch_to_writer

log = logging.getLogger(__name__)


def output_geometry(plan: RequestPlan, size: int, output_scale: str):
    """(crop box in the model frame, output (h, w)): the letterbox removed; at source or model scale."""
    geo = plan.geometry
    sh, sw = plan.source_hw
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


def _windows_of(tasks: list[WindowTask]) -> tuple[list[Window], dict[int, str]]:
    """Every window of a request's tasks (group members expanded), in frame order, and each window's file."""
    members = sorted((m for t in tasks for m in t.members), key=lambda m: m.index)
    return [Window(m.index, m.start, m.end) for m in members], {m.index: m.uri for m in members}


def _window_count(tasks: list[WindowTask]) -> int:
    return sum(len(t.members) for t in tasks)


def _model_identity_of(tasks: list[WindowTask], uri: str) -> dict[str, Any]:
    for t in tasks:
        if t.model_identity:
            return t.model_identity
    z = storage.read_npz(uri)  # all windows came from an earlier run: their files know
    return json.loads(str(z["identity"])) if "identity" in z else {}


class _Resizer:
    """Model-frame window frames → output frames (letterbox cropped, resized to the output size)."""

    def __init__(self, plan: RequestPlan, size: int, output_scale: str) -> None:
        (self.y0, self.y1, self.x0, self.x1), self.out_hw = output_geometry(plan, size, output_scale)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[self.y0:self.y1, self.x0:self.x1]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        from PIL import Image

        frame = self.crop(frame)
        if frame.shape[:2] != self.out_hw:
            frame = np.asarray(Image.fromarray(frame).resize(self.out_hw[::-1], Image.LANCZOS))
        return frame


def _audio_of(req: Request, plan: RequestPlan) -> tuple[Optional[str], float]:
    """The source's audio from the first edited frame's time on (frames are sampled by time on every grid, so the
    audio stays in sync whatever the rate)."""
    return (req.source, plan.audio_offset) if plan.has_audio else (None, 0.0)


def _write_preview(req: Request, plan: RequestPlan, wins: list[Window], uris: dict[int, str], resize: _Resizer,
                   cfg: RunConfig, cancel: Optional[Cancel]) -> None:
    def read_preview(w: Window) -> np.ndarray:
        z = storage.read_npz(uris[w.index])
        return np.stack([side_by_side(resize.crop(a), resize.crop(b), resize.crop(c))
                         for a, b, c in zip(z["source_frames"], z["target_poses"], z["frames"])])

    with VideoWriter(req.preview_output, plan.fps, preset=cfg.processing.encode_preset,
                     crf=cfg.processing.encode_crf) as pw:
        for _, frame in iter_stitched(wins, read_preview, crossfade=cfg.processing.crossfade):
            pw.write(frame)
        check_cancel(cancel)


def stitch_request(tasks: list[WindowTask], cfg: RunConfig, cancel: Optional[Cancel] = None) -> ResultRow:
    """Blend a request's windows in order into its video (+ preview); commit; write the done marker. ``cancel`` is
    checked before each commit (:class:`~pipelines.batch.cancel.Cancelled`): nothing is written after it."""
    tasks = sorted(tasks, key=lambda t: t.index)
    wins, uris = _windows_of(tasks)
    model_identity = _model_identity_of(tasks, uris[wins[0].index])
    req, plan = tasks[0].request, tasks[0].plan
    t0 = time.perf_counter()
    resize = _Resizer(plan, req.size, cfg.processing.output_scale)
    audio, offset = _audio_of(req, plan)
    with VideoWriter(req.output, plan.fps, audio_from=audio, audio_offset=offset,
                     preset=cfg.processing.encode_preset, crf=cfg.processing.encode_crf) as writer:
        stats = stitch_to_writer(wins, lambda w: storage.read_npz(uris[w.index])["frames"], writer,
                                 crossfade=cfg.processing.crossfade, transform=resize)
        check_cancel(cancel)  # raising here aborts the writer: the video is not committed
    if req.preview and req.preview_output:
        _write_preview(req, plan, wins, uris, resize, cfg, cancel)
    res = writer.result
    row = result_row(
        req, tasks[0].identity, SUCCEEDED, frames=res.frames, fps=float(to_fraction(res.fps)), fps_rational=res.fps,
        width=res.width, height=res.height, windows=len(wins), seam_score=stats.seam_score,
        source_fps=plan.source_fps, resampled=plan.resampled, rotation=plan.rotation, rescaled=plan.rescaled,
        tone_mapped=plan.tone_mapped,
        seconds_probe=_total(tasks, "probe"), seconds_prepare=_total(tasks, "prepare"),
        seconds_edit=_total(tasks, "edit"), seconds_stitch=time.perf_counter() - t0,
        model=model_identity.get("model"), weights_id=model_identity.get("weights_id"),
        bytes_written=_bytes_of(req.output, req.preview_output if req.preview else None),
        finished_at=datetime.now(timezone.utc))
    marker = {**row.to_dict(), "finished_at": row.finished_at.isoformat()}
    check_cancel(cancel)
    storage.atomic_write_text(cfg.marker_uri(req.request_id), json.dumps(marker, sort_keys=True))
    _drop_windows(req, cfg)
    return row


def result_row(req: Request, identity: RequestIdentity, status: str, **kw: Any) -> ResultRow:
    """A result row of ``req`` with its identities."""
    return ResultRow.for_request(req, status, source_identity=identity.source, driving_identity=identity.driving,
                                 content_key=identity.key, **kw)


def _bytes_of(*uris: Optional[str]) -> int:
    total = 0
    for uri in uris:
        if uri:
            fs, path = storage.open_fs(uri)
            total += int(fs.size(path) or 0)
    return total


def _drop_windows(req: Request, cfg: RunConfig) -> None:
    """The request's intermediate windows, once its video and marker are committed (never fails the request)."""
    if cfg.processing.keep_windows:
        return
    uri = storage.join(cfg.out, "windows", req.request_id)
    try:
        storage.remove_tree(uri)
    except Exception as exc:  # noqa: BLE001 - the output is committed; a leftover window folder is only space
        log.warning("could not delete %s: %s", uri, exc)


def _total(tasks: list[WindowTask], stage: str) -> float:
    return sum(getattr(t.times, stage) or 0.0 for t in tasks)


def finish_request(tasks: list[WindowTask], cfg: RunConfig, cancel: Optional[Cancel] = None) -> ResultRow:
    """The result row of a request whose tasks are all in: failed (first failed window's error) or stitched."""
    req, identity = tasks[0].request, tasks[0].identity
    if tasks[0].plan_failed:
        return result_row(req, identity, FAILED, error=tasks[0].error, seconds_probe=tasks[0].times.probe)
    failed = [t for t in tasks if t.status == FAILED]
    if failed:
        first = min(failed, key=lambda t: t.index)
        return result_row(req, identity, FAILED, error=first.error, windows=_window_count(tasks))
    try:
        return stitch_request(tasks, cfg, cancel)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001
        log.info("stitch failed for %s: %s", req.request_id, exc)
        return result_row(req, identity, FAILED, error=f"stitch: {error_text(exc)}", windows=_window_count(tasks))


def skipped_row(req: Request, identity: RequestIdentity, cfg: RunConfig) -> Optional[ResultRow]:
    """The result row of a request an earlier run finished (status ``skipped``), or None: it needs the done marker,
    the output, and the same content key (same model, parameters, output options and input contents)."""
    marker = cfg.marker_uri(req.request_id)
    try:
        if not (storage.exists(marker) and storage.exists(req.output)):
            return None
        row = json.loads(storage.read_bytes(marker))
    except Exception as exc:  # noqa: BLE001 - an unreadable marker: the request runs again
        log.warning("done marker %s does not load (%s): running %s again", marker, exc, req.request_id)
        return None
    if row.get("content_key") != identity.key:
        log.info("%s changed since it was finished (model, parameters, output options or inputs): running it again",
                 req.request_id)
        return None
    finished_at = datetime.fromisoformat(row["finished_at"]) if row.get("finished_at") else None
    return ResultRow.from_dict({**row, "status": SKIPPED, "finished_at": finished_at})
