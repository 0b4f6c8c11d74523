"""A new edit's inputs: uploads saved to storage, allow-listed storage URIs, request parameters, input limits, the
cost cap, and the error texts a client sees.

Each check answers with the HTTP error the API returns: 413 (upload too large), 403 (URI outside the allow-list),
422 (missing input, file type not accepted, bad parameter, an input that is not a usable video or pose track —
corrupt, a still image, a container we do not accept such as an HLS playlist, a pose track without a positive fps
— input over the duration/resolution/frame limits, edit over the cost cap): every reason is known before the
answer, so a 202 means the inputs are usable. Videos go through the same normalisation step as the batch path
(:func:`pipelines.media.probe_video`: the chosen stream's packets counted, bounded by the frame limit, its
constant-rate grid and display size, its first frame decoded), pose tracks are read by their header
(:func:`~pipelines.conditioning.poses.keypoints.pose_track_header`).

Error texts never name server paths or the token namespace: they say ``source``/``driving`` and the reason
(:func:`client_error`, :func:`scrub`).
"""
import dataclasses
import os
import re
from typing import Any, Optional

from fastapi import HTTPException
from starlette.datastructures import FormData

from jobs.serve.config import ServeConfig
from pipelines.batch.requests import COLUMN_ALIASES, Request, parse_row
from pipelines.conditioning.poses.keypoints import POSE_TRACK_SUFFIXES, pose_track_header
from pipelines.media import InputError, probe_video, storage
from pipelines.windows.planning import plan_windows

LABELS = ("source", "driving")
REQUEST_FIELDS = ("steps", "guidance_scale", "seed", "camera", "window", "overlap", "size", "length_policy", "preview",
                  "fusion", "align_mode", "source_subject", "driving_subject", *COLUMN_ALIASES)
CHUNK_BYTES = 1 << 20
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".webp", ".png", ".apng")
POSE_EXTS = POSE_TRACK_SUFFIXES
ACCEPTED_EXTS = {"source": VIDEO_EXTS, "driving": VIDEO_EXTS + POSE_EXTS}
COST_SIZE = 512  # the cost of an edit counts frames × steps at 512² px
_PLACEHOLDER = "placeholder.mp4"
# what must not reach a client: URIs (scheme://...) and absolute paths (not "30000/1001", "MP4/MOV")
_URI_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*")
_PATH_RE = re.compile(r"(?<![\w.:/])/[^\s'\":,;()\[\]]+")


def scrub(text: str, *secrets: str) -> str:
    """``text`` without server paths, URIs or any of ``secrets`` (namespace hashes, the storage root, ...)."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "…")
    return _PATH_RE.sub("<path>", _URI_RE.sub("<uri>", text))


def client_error(label: str, exc: BaseException) -> str:
    """What a client reads for a failed input: its label and the reason, never the server's path to it."""
    reason = exc.reason if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    return f"{label}: {scrub(reason)}"


# -- where the inputs come from ------------------------------------------------------------------------------------

def _local_path(uri: str) -> Optional[str]:
    """The local path of a ``file`` URI (bare path or ``file://``); None for other protocols."""
    if storage.protocol_of(uri) != "file":
        return None
    return uri[len("file://"):] if uri.startswith("file://") else uri


def resolve_allowed(uri: str, prefixes: tuple[str, ...]) -> Optional[str]:
    """The URI to read when ``uri`` lies under an allowed prefix, else None. Local paths are resolved (symlinks,
    ``..``) and the real path is checked again against the prefixes' real paths, so a link inside a prefix cannot
    lead out of it; fsspec URL chaining (``::``) and paths that could read as options are never allowed."""
    if not uri or "::" in uri or uri.startswith("-") or any(ord(c) < 32 for c in uri):
        return None
    if ".." in uri.replace("\\", "/").split("/"):
        return None
    if not any(uri.startswith(p.rstrip("/") + "/") for p in prefixes):
        return None
    local = _local_path(uri)
    if local is None:
        return uri
    real = os.path.realpath(local)
    for p in prefixes:
        base = _local_path(p)
        if base is not None and real.startswith(os.path.realpath(base).rstrip("/") + "/"):
            return real
    return None


def _extension(label: str, name: str) -> str:
    """The accepted, lower-case extension of a file name; 422 for any other."""
    ext = os.path.splitext(name or "")[1].lower()
    if ext not in ACCEPTED_EXTS[label]:
        raise HTTPException(422, f"{label}: file type {ext[:12] or '(none)'!r} is not accepted; use "
                                 f"{', '.join(ACCEPTED_EXTS[label])}")
    return ext


async def save_upload(upload: Any, uri: str, max_bytes: int) -> int:
    """Stream an uploaded file to ``uri`` (atomically); 413 once it passes ``max_bytes``. Returns its size."""
    size = 0
    with storage.atomic_open(uri, "wb") as fh:
        while True:
            chunk = await upload.read(CHUNK_BYTES)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"upload exceeds the {max_bytes} byte limit per file")
            fh.write(chunk)
    return size


def _source_of(form: FormData, label: str, cfg: ServeConfig) -> tuple[str, Any]:
    """``("upload", file, ext)`` or ``("uri", uri)`` of one input, checked but nothing stored yet."""
    upload, uri = form.get(label), form.get(f"{label}_uri")
    if upload is not None and hasattr(upload, "read"):
        return "upload", (upload, _extension(label, upload.filename or ""))
    if isinstance(uri, str) and uri:
        resolved = resolve_allowed(uri, cfg.allowed_prefixes)
        if resolved is None:
            raise HTTPException(403, f"{label}_uri is outside the allowed storage prefixes")
        _extension(label, storage.basename(resolved))
        return "uri", resolved
    raise HTTPException(422, f"give a '{label}' file or a '{label}_uri'")


async def input_uris(form: FormData, edit_dir: str, cfg: ServeConfig) -> dict[str, str]:
    """``{"source": uri, "driving": uri}``: each an upload saved as ``<edit_dir>/inputs/<label><ext>`` (never the
    client's file name) or an allow-listed ``<label>_uri`` form field. Both are checked before anything is stored."""
    sources = {label: _source_of(form, label, cfg) for label in LABELS}
    inputs: dict[str, str] = {}
    for label, (kind, value) in sources.items():
        if kind == "uri":
            inputs[label] = value
            continue
        upload, ext = value
        inputs[label] = storage.join(edit_dir, "inputs", f"{label}{ext}")
        await save_upload(upload, inputs[label], cfg.max_upload_bytes)
    return inputs


# -- parameters and limits -----------------------------------------------------------------------------------------

def _check_fields(form: FormData) -> None:
    """422 naming every form field that is not an input or a parameter of an edit (a field the service would
    otherwise ignore, such as ``fps`` or ``frame_start``: a client must not believe it took effect)."""
    known = set(REQUEST_FIELDS) | set(LABELS) | {f"{label}_uri" for label in LABELS}
    unknown = sorted({k for k in form.keys() if k not in known})
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:8])
        raise HTTPException(422, f"unknown form field(s): {names} (accepted: {', '.join(sorted(known))})")


def parse_edit(form: FormData, edit_id: str, edit_dir: str, cfg: ServeConfig) -> Request:
    """The validated request (the configured defaults under the form's parameters), inputs still placeholders
    (:func:`with_inputs`); 422 for an unknown field, a bad parameter or one over the operator's caps."""
    _check_fields(form)
    given = [k for k in REQUEST_FIELDS if form.get(k) not in (None, "")]
    both = [f"{a!r} and {c!r}" for a, c in COLUMN_ALIASES.items() if a in given and c in given]
    if both:
        raise HTTPException(422, f"form fields {', '.join(both)} are one parameter (the first is its old name): "
                                 "give one")
    raw = {**_canonical(cfg.defaults), **_canonical({k: form.get(k) for k in given}),
           "source": _PLACEHOLDER, "driving": _PLACEHOLDER, "request_id": edit_id,
           "output": storage.join(edit_dir, "result.mp4")}
    try:
        req = parse_row(raw, row=1, out=edit_dir)
    except ValueError as exc:
        raise HTTPException(422, scrub(str(exc))) from exc
    over = [f"{name} {value} exceeds the {cap} cap ({limit})" for name, value, cap, limit in (
        ("steps", req.steps, "max_steps", cfg.max_steps), ("size", req.size, "max_size", cfg.max_size),
        ("window", req.window, "max_window", cfg.max_window)) if value > limit]
    if over:
        raise HTTPException(422, "; ".join(over))
    return req


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters under their current names (an old alias such as ``cfg`` renamed)."""
    return {COLUMN_ALIASES.get(k, k): v for k, v in params.items()}


def with_inputs(req: Request, inputs: dict[str, str]) -> Request:
    return dataclasses.replace(req, source=inputs["source"], driving=inputs["driving"])


def edit_cost(req: Request, frames: int) -> float:
    """Steps × edited frames (a frame in two overlapping windows counts twice) × (size / 512)²."""
    edited = sum(w.end - w.start for w in plan_windows(max(1, frames), req.window, req.overlap))
    return req.steps * edited * (req.size / COST_SIZE) ** 2


def check_inputs(req: Request, cfg: ServeConfig) -> None:
    """Both inputs within the limits (:func:`check_limits`, source first) and the edit within the cost cap; the
    :class:`HTTPException` of the first check it fails."""
    frames = {label: check_limits(getattr(req, label), label, cfg) for label in LABELS}
    check_cost(req, frames["source"], cfg)


def check_cost(req: Request, source_frames: int, cfg: ServeConfig) -> None:
    """422 naming the cap when the edit would cost more than ``cfg.max_cost``."""
    cost = edit_cost(req, source_frames)
    if cost > cfg.max_cost:
        raise HTTPException(422, f"edit cost {cost:.0f} (steps × edited frames × (size/{COST_SIZE})²) exceeds the "
                                 f"max_cost cap ({cfg.max_cost:g}): lower steps, size or window, or edit a "
                                 f"shorter source")


def _over_limits(label: str, frames: int, seconds: float, cfg: ServeConfig) -> None:
    if seconds > cfg.max_seconds:
        raise HTTPException(422, f"{label}: {seconds:.1f} s exceeds the {cfg.max_seconds:g} s limit")
    if frames > cfg.max_frames:
        raise HTTPException(422, f"{label}: {frames} frames exceed the {cfg.max_frames} frame limit")


def _remote_size(uri: str, label: str, cfg: ServeConfig) -> None:
    """422 for a remote video over the upload limit: it would be downloaded whole to be probed."""
    if storage.protocol_of(uri) == "file":
        return
    fs, path = storage.open_fs(uri)
    size = fs.size(path)
    if size is not None and size > cfg.max_upload_bytes:
        raise HTTPException(422, f"{label}: {size} bytes exceed the {cfg.max_upload_bytes} byte limit per input")


def check_limits(uri: str, label: str, cfg: ServeConfig) -> int:
    """The input's frames (on its constant-rate grid) when acceptable; 422 with the reason when it is not a usable
    video (or pose track, for the driving input) or is over the duration/resolution/frame limits."""
    try:
        if label == "driving" and uri.lower().endswith(POSE_EXTS):
            frames, fps = pose_track_header(uri)
            _over_limits(label, frames, frames / fps, cfg)
            return frames
        _remote_size(uri, label, cfg)
        info = probe_video(uri, max_frames=cfg.max_frames, max_side=cfg.max_side)
    except (InputError, ValueError, OSError) as exc:
        raise HTTPException(422, client_error(label, exc)) from None
    if max(info.media.stored_width, info.media.stored_height, info.width, info.height) > cfg.max_side:
        raise HTTPException(422, f"{label}: {info.width}x{info.height} exceeds the {cfg.max_side} px limit")
    _over_limits(label, info.frames, info.duration, cfg)
    return info.frames
