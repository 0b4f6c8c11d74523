"""A new edit's inputs: uploads saved to storage, allow-listed storage URIs, request parameters, input limits.

Each check answers with the HTTP error the API returns: 413 (upload too large), 403 (URI outside the allow-list),
422 (missing input, bad parameter, video over the duration/resolution limits).
"""
import os
from typing import Any, Optional

from fastapi import HTTPException
from starlette.datastructures import FormData

from jobs.serve.config import ServeConfig
from pipelines.batch.requests import Request, parse_row
from pipelines.conditioning import read_pose_track
from pipelines.media import InputError, probe_video, storage

LABELS = ("source", "driving")
REQUEST_FIELDS = ("steps", "cfg", "seed", "camera", "window", "overlap", "size", "length_policy", "preview")
CHUNK_BYTES = 1 << 20


def prefix_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    """Only URIs under an explicitly configured prefix; no path tricks (``..``) and no local paths by default."""
    if ".." in uri.replace("\\", "/").split("/"):
        return False
    return any(uri.startswith(p.rstrip("/") + "/") for p in prefixes)


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
                raise HTTPException(413, f"upload {upload.filename!r} exceeds {max_bytes} bytes")
            fh.write(chunk)
    return size


async def input_uris(form: FormData, edit_dir: str, cfg: ServeConfig) -> dict[str, str]:
    """``{"source": uri, "driving": uri}``: each an upload saved under ``<edit_dir>/inputs/`` or an allow-listed
    ``<label>_uri`` form field."""
    inputs: dict[str, str] = {}
    for label in LABELS:
        upload, uri = form.get(label), form.get(f"{label}_uri")
        if upload is not None and hasattr(upload, "read"):
            ext = os.path.splitext(upload.filename or "")[1].lower()[:10] or ".mp4"
            inputs[label] = storage.join(edit_dir, "inputs", f"{label}{ext}")
            await save_upload(upload, inputs[label], cfg.max_upload_bytes)
        elif uri:
            if not prefix_allowed(str(uri), cfg.allowed_prefixes):
                raise HTTPException(403, f"{label}_uri {uri!r} is outside the allowed storage prefixes")
            inputs[label] = str(uri)
        else:
            raise HTTPException(422, f"give a '{label}' file or a '{label}_uri'")
    return inputs


def parse_edit(form: FormData, inputs: dict[str, str], edit_id: str, edit_dir: str, cfg: ServeConfig) -> Request:
    """The validated request (the configured defaults under the form's parameters); 422 for a bad parameter."""
    raw = {k: form.get(k) for k in REQUEST_FIELDS if form.get(k) not in (None, "")}
    raw = {**cfg.defaults, **raw, "source": inputs["source"], "driving": inputs["driving"],
           "request_id": edit_id, "output": storage.join(edit_dir, "result.mp4")}
    try:
        return parse_row(raw, row=1, out=edit_dir)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def _over_limits(label: str, seconds: float, cfg: ServeConfig) -> None:
    if seconds > cfg.max_seconds:
        raise HTTPException(422, f"{label}: {seconds:.1f} s exceeds the {cfg.max_seconds:.0f} s limit")


def check_limits(uri: str, label: str, cfg: ServeConfig) -> Optional[str]:
    """None when acceptable; an error text (→ failed edit) when the file is not a readable video (or pose track,
    for the driving input). Raises 422 for duration/resolution over the limits."""
    if label == "driving" and uri.lower().endswith((".parquet", ".json")):
        try:
            track = read_pose_track(uri)
        except (InputError, ValueError, OSError) as exc:
            return str(exc)
        _over_limits(label, len(track) / track.fps if track.fps else 0.0, cfg)
        return None
    try:
        info = probe_video(uri)
    except (InputError, ValueError, OSError) as exc:
        return str(exc)
    _over_limits(label, info.frames / info.fps if info.fps else 0.0, cfg)
    if max(info.width, info.height) > cfg.max_side:
        raise HTTPException(422, f"{label}: {info.width}x{info.height} exceeds the {cfg.max_side} px limit")
    return None
