"""The per-window stage functions of the batch pipeline: plan, prepare, edit. Plain functions, no Ray.

The Ray stage classes (:mod:`pipelines.batch.ray_stages`, on :mod:`pipelines.batch.stage_base`) and the in-process
single-request path (:mod:`pipelines.batch.single`) both call exactly these, so a request gives the same files and
rows either way.
Stitching a finished request is in :mod:`pipelines.batch.finish`.

- :func:`plan_row` — the request's identity and done check (a finished request: one ``skipped`` task), then
  :func:`plan_request` — probe each input once, map driving frames to output frames, compute the alignment once,
  plan the windows: one :class:`~pipelines.batch.tasks.WindowTask` per window (``skipped`` when its frames are
  already written, load and have the right shape; window ids derive from the request's identity key).
- :func:`prepare_task` — decode the window's frames only, poses, masks, renders → the task's npz payload.
- :func:`edit_task` — edit a prepared window with a model and write its frames atomically.

A ``fused`` request (``Request.fusion``) is planned as one task per fusion group (``mf_model.fusion_plan.
fusion_groups`` of its windows, :class:`~pipelines.batch.tasks.GroupWindow` members): prepare puts every member
window's arrays into the one payload (keys ``w<j>_<input>``), edit runs ``model.edit_fused`` once for the group and
writes each member window's file as in crossfade mode (same names, same content), so stitching is unchanged. A group
is the unit to resume: it is ``skipped`` when all its member files are good, else it is edited again as a whole. The
window ids of a fused request also hash the mode and its group's spans (a fused window depends on its group).

No function raises for a bad input: the task becomes ``failed`` with an error naming the stage and the reason.
The conditioning work goes through a :class:`Conditioner`, which unit tests replace with a small fake.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import traceback
from typing import Any, Optional

import numpy as np

from pipelines.batch.cancel import Cancel, Cancelled, check_cancel
from pipelines.batch.config import RunConfig
from pipelines.batch.finish import skipped_row
from pipelines.batch.identity import RequestIdentity, request_identity
from pipelines.batch.requests import Request
from pipelines.batch.status import PENDING, SKIPPED, SUCCEEDED
from pipelines.batch.tasks import REQUEST_DONE, GroupWindow, RequestPlan, RequestRow, StageTimes, WindowTask
from pipelines.conditioning import (
    AlignTransform,
    driving_index_map,
    prepare_window,
    read_pose_track,
    reference_alignment,
    subject_track,
)
from pipelines.conditioning.poses.keypoints import POSE_TRACK_SUFFIXES
from pipelines.conditioning.poses.registry import DEFAULT_BACKEND
from pipelines.conditioning.poses.subject import SubjectTrack
from pipelines.conditioning.window_inputs import MODEL_INPUTS
from pipelines.media import fit_geometry, probe_video, storage
from pipelines.media.geometry import DEFAULT_FIT_MODE
from pipelines.media.timeline import fraction_str, slot_time
from pipelines.windows.planning import Window, plan_windows, window_id

log = logging.getLogger(__name__)

class Conditioner:
    """The conditioning the stages need, bound to a run's pose backend and fit mode."""

    def __init__(self, pose_backend: str = DEFAULT_BACKEND, fit_mode: str = DEFAULT_FIT_MODE) -> None:
        self.pose_backend = pose_backend
        self.fit_mode = fit_mode

    def probe(self, uri: str, fps=None):
        """The source on its grid: the stream's nominal rate, or the request's ``fps`` (resampled by time)."""
        return probe_video(uri, fps=fps)

    def driving(self, uri: str):
        """A pose track (read once) or the driving video's probe."""
        return read_pose_track(uri) if uri.lower().endswith(POSE_TRACK_SUFFIXES) else probe_video(uri)

    def index_map(self, source_info, driving, policy: str) -> tuple[int, list[int]]:
        return driving_index_map(source_info, driving, policy)

    def subjects(self, req: Request, source_indices: list[int], driving_map: list[int], source_info,
                 driving) -> tuple[Optional[SubjectTrack], Optional[SubjectTrack]]:
        """The request's chosen people (``source_subject`` / ``driving_subject``) followed through the frames it
        uses, once per request; None where the request names none (the most prominent person)."""
        src = drv = None
        if req.source_subject:
            src = subject_track(req.source, req.source_subject, source_indices, req.size, self.fit_mode,
                                self.pose_backend, info=source_info)
        if req.driving_subject and hasattr(driving, "kind"):
            drv = subject_track(req.driving, req.driving_subject, driving_map, req.size, self.fit_mode,
                                self.pose_backend, info=driving)
        return src, drv

    def alignment(self, req: Request, source_indices: list[int], driving_map: list[int], source_info,
                  driving, subjects=(None, None)) -> AlignTransform:
        is_video = hasattr(driving, "kind")
        return reference_alignment(req.source, req.driving if is_video else driving, source_indices, driving_map,
                                   req.size, self.fit_mode, backend=self.pose_backend, source_info=source_info,
                                   driving_info=driving if is_video else None, align_mode=req.align_mode,
                                   source_subject=subjects[0], driving_subject=subjects[1])

    def window_arrays(self, task: WindowTask) -> dict[str, np.ndarray]:
        req = task.request
        driving = self.driving(req.driving)
        return prepare_window(req.source, req.driving, task.source_indices, task.driving_indices,
                              task.plan.transform, req.size, self.fit_mode, self.pose_backend,
                              source_info=self.probe(req.source, req.fps),
                              driving_info=driving if hasattr(driving, "kind") else None, keys=MODEL_INPUTS,
                              source_subject=task.source_subject, driving_subject=task.driving_subject)


def conditioner_for(cfg: RunConfig) -> Conditioner:
    return Conditioner(cfg.processing.pose_backend, cfg.processing.fit_mode)


# ------------------------------------------------------------------------------------------------ plan

def _plan(req: Request, cfg: RunConfig, cond: Conditioner) -> tuple[RequestPlan, list[int], list[int], tuple]:
    s_info = cond.probe(req.source, req.fps)
    driving = cond.driving(req.driving)
    start = min(req.frame_start, s_info.frames)
    stop = s_info.frames if req.frame_end is None else min(req.frame_end, s_info.frames)
    if stop <= start:
        raise ValueError(f"frame range [{req.frame_start}, {req.frame_end}) is empty for a "
                         f"{s_info.frames}-frame source")
    n, dmap = cond.index_map(dataclasses.replace(s_info, frames=stop - start), driving, req.length_policy)
    if n <= 0:
        raise ValueError("no output frames (empty driving motion?)")
    src_idx = [start + k for k in range(n)]
    subjects = cond.subjects(req, src_idx, dmap, s_info, driving)
    transform = cond.alignment(req, src_idx, dmap, s_info, driving, subjects)
    media = getattr(s_info, "media", None)
    timeline = getattr(s_info, "timeline", None)
    plan = RequestPlan(frames=n, fps=fraction_str(s_info.rate), source_fps=media.fps if media else float(s_info.fps),
                       has_audio=bool(getattr(s_info, "has_audio", False)),
                       audio_offset=slot_time(timeline, start) if timeline is not None else 0.0,
                       resampled=bool(getattr(s_info, "resampled", False)),
                       rotation=int(getattr(s_info, "rotation", 0)), rescaled=bool(getattr(s_info, "rescaled", False)),
                       tone_mapped=bool(getattr(s_info, "tone_mapped", False)),
                       geometry=fit_geometry((s_info.height, s_info.width), req.size, cfg.processing.fit_mode),
                       source_hw=(int(s_info.height), int(s_info.width)), transform=transform)
    return plan, src_idx, dmap, subjects


def plan_row(row: RequestRow, cfg: RunConfig, cond: Conditioner, model: str) -> list[WindowTask]:
    """The plan stage's call for one request: its identity (content lookups of both inputs, made here on a plan
    worker rather than for the whole manifest in the driver; ``model``: :func:`~pipelines.batch.identity.model_key`),
    then, for a request an earlier run finished under the same key, one ``skipped`` task holding its result row
    (``index == REQUEST_DONE``); else :func:`plan_request`."""
    req = row.request
    identity = row.identity or request_identity(req, model, cfg.processing)
    done = skipped_row(req, identity, cfg)
    if done is not None:
        return [WindowTask(req, identity, index=REQUEST_DONE, count=1, status=SKIPPED, result=done)]
    return plan_request(req, identity, cfg, cond)


def plan_request(req: Request, identity: RequestIdentity, cfg: RunConfig, cond: Conditioner) -> list[WindowTask]:
    """Plan one request: its window tasks (one per fusion group in fused mode), or one failed task (``index ==
    PLAN_FAILED``). A window whose frames are on storage already, readable and of the right shape, is ``skipped``
    (a group: when all its windows are); any other file there is recomputed."""
    t0 = time.perf_counter()
    try:
        plan, src_idx, dmap, subjects = _plan(req, cfg, cond)
        wins = plan_windows(plan.frames, req.window, req.overlap)
        if req.fusion == "fused":
            tasks = [_group_task(req, identity, plan, [wins[k] for k in g], src_idx, dmap, cfg)
                     for g in _fusion_groups(len(wins))]
        else:
            tasks = []
            for w in wins:
                wid = window_id(req.request_id, req.source, w, {"identity": identity.key})
                tasks.append(WindowTask(
                    request=req, identity=identity, plan=plan, window_id=wid, index=w.index, start=w.start,
                    end=w.end, source_indices=src_idx[w.start:w.end], driving_indices=dmap[w.start:w.end],
                    uri=cfg.window_uri(req.request_id, wid)))
        for task in tasks:
            _give_subjects(task, subjects)
    except Exception as exc:  # noqa: BLE001 - one bad request fails its own row
        log.info("plan failed for %s: %s", req.request_id, exc)
        return [WindowTask(req, identity, times=StageTimes(probe=time.perf_counter() - t0)).fail("plan", exc)]
    share = (time.perf_counter() - t0) / len(tasks)
    for task in tasks:
        task.count, task.times.probe = len(tasks), share
        task.status = SKIPPED if cached_window_ok(task) else PENDING
    return tasks


def _give_subjects(task: WindowTask, subjects: tuple) -> None:
    """The part of each subject track a task's frames need (its span, and the last box before it)."""
    src, drv = subjects
    if src is not None:
        task.source_subject = src.within(task.source_indices)
    if drv is not None:
        task.driving_subject = drv.within(task.driving_indices)


def _fusion_groups(n: int) -> list[range]:
    from mf_model.fusion_plan import fusion_groups  # torch-free

    return fusion_groups(n)


def _group_task(req: Request, identity: RequestIdentity, plan: RequestPlan, wins: list[Window], src_idx: list[int],
                dmap: list[int], cfg: RunConfig) -> WindowTask:
    """The task of one fusion group: its member windows' ids hash the mode and the group's spans."""
    spans = [[w.start, w.end] for w in wins]
    params = {"identity": identity.key, "fusion": req.fusion, "group": spans}
    members = []
    for w in wins:
        wid = window_id(req.request_id, req.source, w, params)
        members.append(GroupWindow(index=w.index, start=w.start, end=w.end, window_id=wid,
                                   uri=cfg.window_uri(req.request_id, wid)))
    start, end = wins[0].start, wins[-1].end
    gid = window_id(req.request_id, req.source, (start, end), params)
    # the group's own uri is never written as a window: its edit attempt counter (pipelines.batch.retry) lives there
    return WindowTask(request=req, identity=identity, plan=plan, window_id=gid, index=wins[0].index, start=start,
                      end=end, source_indices=src_idx[start:end], driving_indices=dmap[start:end],
                      uri=cfg.window_uri(req.request_id, gid), group=members)


def cached_window_ok(task: WindowTask) -> bool:
    """Whether the window's file (every member window's, for a group) holds frames of the right shape (and the
    preview's arrays when asked): read from the npz headers only. A missing, truncated or misshapen file is not
    reused."""
    return all(_cached_ok(task.request, m.uri, m.end - m.start) for m in task.members)


def _cached_ok(req: Request, uri: str, frames: int) -> bool:
    size = req.size
    want = {"frames": (frames, size, size, 3)}
    if req.preview:
        want.update(source_frames=want["frames"], target_poses=want["frames"])
    try:
        if not storage.exists(uri):
            return False
        shapes = storage.npz_shapes(uri)
    except Exception as exc:  # noqa: BLE001 - unreadable: recompute it
        log.warning("window %s does not load (%s: %s): recomputing it", uri, type(exc).__name__, exc)
        return False
    bad = {k: shapes.get(k) for k, shape in want.items() if shapes.get(k) != (shape, np.dtype(np.uint8))}
    if bad:
        log.warning("window %s holds %s, expected %s: recomputing it", uri, bad, want)
    return not bad


# ------------------------------------------------------------------------------------------------ prepare

def prepare_task(task: WindowTask, cond: Conditioner) -> WindowTask:
    """Prepare a pending window: the model inputs as npz bytes in ``task.payload`` (a group: every member window's,
    under ``w<j>_<input>``)."""
    if not task.pending:
        return task
    t0 = time.perf_counter()
    try:
        arrays = {}
        for j, view in enumerate(member_views(task) if task.fused else [task]):
            prefix = f"w{j}_" if task.fused else ""
            window = cond.window_arrays(view)
            arrays.update({prefix + k: np.asarray(window[k]) for k in MODEL_INPUTS})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        task.payload = buf.getvalue()
    except Exception as exc:  # noqa: BLE001
        task.fail("prepare", exc)
    task.times.prepare = time.perf_counter() - t0
    return task


def member_views(task: WindowTask) -> list[WindowTask]:
    """A group task's member windows as plain window tasks (their span, frame maps, id and file; the group's
    request, plan and times, shared)."""
    out = []
    for m in task.members:
        a, b = m.start - task.start, m.end - task.start
        out.append(dataclasses.replace(task, group=[], index=m.index, start=m.start, end=m.end, window_id=m.window_id,
                                       uri=m.uri, source_indices=task.source_indices[a:b],
                                       driving_indices=task.driving_indices[a:b], payload=None))
    return out


# ------------------------------------------------------------------------------------------------ edit

def edit_task(task: WindowTask, model: Any, identity: dict[str, Any], cfg: RunConfig,
              cancel: Optional[Cancel] = None) -> WindowTask:
    """Edit a prepared window with ``model`` (an ``mf_model`` model) and write its frames atomically to
    ``task.uri``; a fused group: ``model.edit_fused`` once over its windows, each member's frames written to its
    own file. Consumes the payload; tasks that are not pending pass through. ``cancel`` is checked between the
    sampler's steps (every window's, in a group) and before each write (:class:`Cancelled`)."""
    payload, task.payload = task.payload, None
    if not task.pending:
        return task
    t0 = time.perf_counter()
    task.times.edit_started_at = time.time()
    try:
        _edit(task, payload, model, identity, cfg, cancel)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001
        task.fail("edit", exc)
        log.debug("edit failed: %s", traceback.format_exc())
    busy = time.perf_counter() - t0
    task.times.edit = task.times.busy = busy
    task.times.edit_ended_at = time.time()
    return task


def _edit(task: WindowTask, payload: Optional[bytes], model: Any, identity: dict[str, Any], cfg: RunConfig,
          cancel: Optional[Cancel]) -> None:
    import mf_model

    req = task.request
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    members = task.members
    prefix = [f"w{j}_" if task.fused else "" for j in range(len(members))]
    windows = [mf_model.EditWindow(**{k: arrays[p + k] for k in MODEL_INPUTS},
                                   frame_indices=list(range(m.start, m.end)),
                                   name=f"{req.request_id}[{m.start}:{m.end}]") for m, p in zip(members, prefix)]
    opts = mf_model.EditOptions(steps=req.steps, guidance_scale=req.guidance_scale, camera=req.camera, seed=req.seed,
                                fusion=req.fusion)
    progress = (lambda step, steps: check_cancel(cancel)) if cancel else None
    t1 = time.perf_counter()
    if task.fused:
        results = model.edit_fused(windows, opts, progress=progress)
    else:
        results = [model.edit(windows[0], opts, progress=progress)]
    task.times.model = time.perf_counter() - t1
    t2 = time.perf_counter()
    ident = json.dumps(identity, sort_keys=True)
    for m, p, result in zip(members, prefix, results):
        extra = {k: arrays[p + k] for k in ("source_frames", "target_poses")} if req.preview else {}
        check_cancel(cancel)
        storage.write_npz(m.uri, compress=cfg.processing.compress_windows, frames=result.frames,
                          identity=np.array(ident), **extra)
    task.times.write = time.perf_counter() - t2
    task.times.gpu_memory_peak = _gpu_peak()
    task.status, task.model_identity = SUCCEEDED, {k: None if v is None else str(v) for k, v in identity.items()}


def _gpu_peak() -> float:
    try:
        import torch

        return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0
    except Exception:  # noqa: BLE001
        return 0.0
