"""Weights: the official layout (local path or fsspec URI), our single-directory safetensors format, presets.

Official layout (the released checkpoint folders)::

    DIR/sd-image-variations-diffusers/unet/{config.json, diffusion_pytorch_model.safetensors|.bin}
    DIR/sd-image-variations-diffusers/image_encoder/{config.json, model.safetensors|pytorch_model.bin}
    DIR/sd-vae-ft-mse/{config.json, diffusion_pytorch_model.safetensors|.bin}
    DIR/denoising_unet.pth  DIR/poctr.pth  DIR/motion_module.pth
    [DIR/estimator_appearance_adapter.safetensors]   (explicit estimator adapter, official-estimator mode)

An official-style inference YAML (``pretrained_base_model_path``, ``denoising_unet_path``, … and
``inference_config``) may be given instead of a directory; its paths are relative to the YAML's folder.

The denoising UNet is merged key by key in the official priority: ``denoising_unet.pth`` ⊕ ``motion_module.pth`` ⊕
base UNet. Any parameter that would stay uninitialised is an error naming the keys; checkpoint keys that match
nothing are reported (the official loader silently ignores them).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Optional

import fsspec
import torch

log = logging.getLogger(__name__)

MF_CONFIG = "mf_config.json"
LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class WeightsError(ValueError):
    """Missing files, unreadable checkpoints, or keys that do not cover the model."""


# --- fsspec file access --------------------------------------------------------------------------------------
def open_fs(uri: str):
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join_uri(root: str, *parts: str) -> str:
    if "://" in root:
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def exists(uri: str) -> bool:
    fs, path = open_fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = open_fs(uri)
    if not fs.exists(path):
        raise WeightsError(f"missing weight file: {uri}")
    with fs.open(path, "rb") as fh:
        return fh.read()


def write_whole(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``fs`` whole or not at all (a temporary name, then a move), so that a loader
    never maps a half-written file. The pipeline's ``storage.atomic_write_bytes`` does the same for its outputs;
    the model sits below the pipeline and keeps torch out of it, hence this small twin."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def read_json(uri: str) -> dict:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{uri}: not valid JSON ({exc})") from exc


def local_path(uri: str) -> Optional[str]:
    """The file-system path of a local URI (plain path or ``file://``), else None."""
    from fsspec.implementations.local import LocalFileSystem

    fs, path = open_fs(uri)
    return path if isinstance(fs, LocalFileSystem) else None


def _load_local(path: str, mapped: bool) -> dict:
    if path.endswith(".safetensors"):
        if mapped:
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        from safetensors.torch import load
        with open(path, "rb") as fh:
            return load(fh.read())
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except RuntimeError as exc:
        if not mapped or "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file cannot be mapped


def load_state_dict(uri: str, mapped: bool = False) -> dict[str, torch.Tensor]:
    """A ``.safetensors``, ``.pth``/``.bin``/``.ckpt`` state dict (tensors only, never arbitrary pickles).

    ``mapped`` (local files; the model loaders use it): the tensors are views of a memory map of the file, read
    from the page cache as they are copied into the model, so no second in-memory copy of the file, nor the heap
    fragments that freeing one leaves, stays resident (an sd15 official load: resident 7.61 → 6.66 GiB, peak
    16.6 → 13.3 GiB). The file must not be rewritten while they live (that is a bus error, not an exception):
    copy them into the model and drop them, as the loaders do.
    """
    path = local_path(uri)
    if path is not None and not os.path.isfile(path):
        raise WeightsError(f"missing weight file: {uri}")
    try:
        if path is not None:
            sd = _load_local(path, mapped)
        elif uri.endswith(".safetensors"):
            from safetensors.torch import load
            sd = load(read_bytes(uri))
        else:
            sd = torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise WeightsError(f"{uri}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{uri}: not a state dict of tensors")
    return sd


def first_existing(root: str, names: list[str]) -> str:
    for n in names:
        uri = join_uri(root, n)
        if exists(uri):
            return uri
    raise WeightsError(f"missing weight file: none of {names} in {root}")


# --- coverage report -----------------------------------------------------------------------------------------
@dataclass
class ModuleCoverage:
    module: str
    expected: int
    sources: dict = field(default_factory=dict)  # source name -> number of keys taken from it
    missing: list = field(default_factory=list)
    unexpected: dict = field(default_factory=dict)  # source -> keys that match nothing
    mismatched: list = field(default_factory=list)  # (key, expected shape, got shape, source)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def lines(self) -> list[str]:
        out = [f"{self.module}: {self.expected} entries, "
               + ", ".join(f"{n} from {s}" for s, n in self.sources.items())]
        if self.missing:
            out.append(f"  MISSING {len(self.missing)} (would stay uninitialised): "
                       + ", ".join(self.missing[:12]) + (" …" if len(self.missing) > 12 else ""))
        for key, exp, got, src in self.mismatched[:12]:
            out.append(f"  SHAPE MISMATCH {key}: model {exp}, {src} {got}")
        for src, keys in self.unexpected.items():
            if keys:
                out.append(f"  ignored {len(keys)} keys of {src} that match no parameter: "
                           + ", ".join(keys[:8]) + (" …" if len(keys) > 8 else ""))
        return out


@dataclass
class CoverageReport:
    modules: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.modules)

    def text(self) -> str:
        lines = []
        for m in self.modules:
            lines.extend(m.lines())
        lines.append("weights: OK" if self.ok else "weights: INCOMPLETE")
        return "\n".join(lines)

    def raise_if_incomplete(self) -> None:
        if not self.ok:
            raise WeightsError("weights do not cover the model:\n" + self.text())


def merge_into(module: torch.nn.Module, name: str, sources: list[tuple[str, dict]],
               ignore_prefixes: tuple[str, ...] = (), ignore_suffixes: tuple[str, ...] = ()) -> ModuleCoverage:
    """Fill ``module``'s state from ``sources`` (highest priority first), casting to the module's dtype; keys the
    module does not have are reported as unexpected unless they match ``ignore_prefixes`` / ``ignore_suffixes``."""
    target = module.state_dict()
    cov = ModuleCoverage(module=name, expected=len(target))
    merged = {}
    for src_name, sd in sources:
        taken = 0
        unexpected = []
        for key, value in sd.items():
            if key not in target:
                if not key.startswith(ignore_prefixes) and not key.endswith(ignore_suffixes):
                    unexpected.append(key)
                continue
            if key in merged:
                continue
            if tuple(value.shape) != tuple(target[key].shape):
                cov.mismatched.append((key, tuple(target[key].shape), tuple(value.shape), src_name))
                continue
            merged[key] = value
            taken += 1
        cov.sources[src_name] = taken
        cov.unexpected[src_name] = unexpected
    cov.missing = sorted(k for k in target if k not in merged)
    if cov.ok:
        dtype_of = {k: v.dtype for k, v in target.items()}
        module.load_state_dict({k: v.to(dtype_of[k]) for k, v in merged.items()}, strict=True)
    return cov


def rename_legacy_vae(sd: dict) -> dict:
    """sd-vae-ft-mse files may use the legacy attention names (query/key/value/proj_attn)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) >= 2 and parts[-2] in LEGACY_VAE_ATTN and "attentions" in parts:
            k = ".".join(parts[:-2] + [LEGACY_VAE_ATTN[parts[-2]], parts[-1]])
            if v.ndim == 4 and v.shape[-1] == 1 and v.shape[-2] == 1:
                v = v[:, :, 0, 0]  # legacy 1x1 conv projections → linear
        out[k] = v
    return out


# --- locating the files --------------------------------------------------------------------------------------
@dataclass
class OfficialLayout:
    base_unet: str
    image_encoder: str
    vae: str
    denoising_unet: str
    pose_guider: str
    motion_module: str
    estimator_adapter: Optional[str] = None
    motion_kwargs: dict = field(default_factory=dict)
    weight_dtype: Optional[str] = None


def locate_official(uri: str) -> OfficialLayout:
    if uri.endswith((".yaml", ".yml")):
        import yaml  # only for official YAML configs

        cfg = yaml.safe_load(read_bytes(uri)) or {}
        root = posixpath.dirname(uri) if "://" in uri else os.path.dirname(uri)
        need = ["pretrained_base_model_path", "pretrained_vae_path", "image_encoder_path", "denoising_unet_path",
                "pose_guider_path", "motion_module_path"]
        missing = [k for k in need if k not in cfg]
        if missing:
            raise WeightsError(f"{uri}: missing keys {missing}")
        rel = lambda p: p if ("://" in p or p.startswith("/")) else join_uri(root, p)  # noqa: E731
        motion_kwargs = {}
        if cfg.get("inference_config"):
            inf = yaml.safe_load(read_bytes(rel(cfg["inference_config"]))) or {}
            motion_kwargs = (inf.get("unet_additional_kwargs") or {}).get("motion_module_kwargs") or {}
        est = join_uri(root, "weights", "estimator_appearance_adapter.safetensors")
        est_cfg = cfg.get("estimator_appearance_adapter_path")
        est = rel(est_cfg) if est_cfg else (est if exists(est) else None)
        return OfficialLayout(
            base_unet=join_uri(rel(cfg["pretrained_base_model_path"]), "unet"),
            image_encoder=rel(cfg["image_encoder_path"]), vae=rel(cfg["pretrained_vae_path"]),
            denoising_unet=rel(cfg["denoising_unet_path"]), pose_guider=rel(cfg["pose_guider_path"]),
            motion_module=rel(cfg["motion_module_path"]), estimator_adapter=est, motion_kwargs=motion_kwargs,
            weight_dtype=cfg.get("weight_dtype"))
    base = join_uri(uri, "sd-image-variations-diffusers")
    est = join_uri(uri, "estimator_appearance_adapter.safetensors")
    layout = OfficialLayout(
        base_unet=join_uri(base, "unet"), image_encoder=join_uri(base, "image_encoder"),
        vae=join_uri(uri, "sd-vae-ft-mse"),
        denoising_unet=join_uri(uri, "denoising_unet.pth"), pose_guider=join_uri(uri, "poctr.pth"),
        motion_module=join_uri(uri, "motion_module.pth"), estimator_adapter=est if exists(est) else None)
    missing = [p for p in (layout.denoising_unet, layout.pose_guider, layout.motion_module,
                           join_uri(layout.base_unet, "config.json"), join_uri(layout.image_encoder, "config.json"),
                           join_uri(layout.vae, "config.json")) if not exists(p)]
    if missing:
        raise WeightsError(f"{uri}: not a MotionFollower weights directory; missing " + ", ".join(missing))
    return layout


def detect_format(uri: str) -> str:
    if uri.endswith((".yaml", ".yml")):
        return "official"
    if exists(join_uri(uri, MF_CONFIG)):
        return "mf"
    if not exists(uri):
        raise WeightsError(f"weights not found: {uri}")
    return "official"
