"""``MotionFollower``: the networks, their loading, condition encoding, and ``edit(window)``."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from PIL import Image

from mf_model import fused, loading
from mf_model.config import (
    DEFAULT_PRESET,
    DTYPES,
    RANDOM_WEIGHTS_TAG,
    ModelConfig,
    PoseGuiderConfig,
    UNetConfig,
    preset,
)
from mf_model.controllers import PoseGuider
from mf_model.guidance import GuidanceWeights
from mf_model.host_memory import release_host_memory
from mf_model.image_encoder import ClipImageEncoder
from mf_model.init_weights import fill_random, randomize_zero_inits
from mf_model.layers import UNRUN_SUFFIXES, drop_unrun_projections
from mf_model.noise import FrameIndexedNoise, NoiseProvider
from mf_model.sampler import Conditions, Tap, TwoBranchSampler
from mf_model.schedule import Schedule
from mf_model.unet import UNet3DConditionModel
from mf_model.vae_decoder import VaeDecoder
from mf_model.window import EditOptions, EditResult, EditWindow

log = logging.getLogger(__name__)

# the torch dtype of each name in mf_model.config.DTYPES, short ("fp16") or torch's own ("float16")
TORCH_DTYPES = {name: getattr(torch, long) for short, long in DTYPES.items() for name in (short, long)}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ESTIMATOR_MODES = ("shared", "official")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return TORCH_DTYPES[dtype]


def _unfilled(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module for a checkpoint to fill, without the one-token cross-attentions' unrun projections. Built on the
    CPU: a meta-device build allocated with ``to_empty`` loads faster (8 s against 15 s for sd15) but stayed 70 MiB
    larger resident (measured, cause not found), and resident memory is the goal here."""
    with torch.random.fork_rng(devices=[]):  # its throwaway initialisation leaves the caller's RNG alone
        module = build()
    drop_unrun_projections(module)
    return module


def _random_id(config: ModelConfig, seed: int) -> str:
    return f"{RANDOM_WEIGHTS_TAG}:{config.name}:seed{seed}"


def _pose_guider_config(sd: dict) -> PoseGuiderConfig:
    """Read the PoseGuider widths off a ``poctr.pth`` state dict (sizes differ between full and tiny models)."""
    try:
        chans = [sd["conv_in.weight"].shape[0]]
        i = 1
        while f"blocks.{i}.weight" in sd:
            chans.append(sd[f"blocks.{i}.weight"].shape[0])
            i += 2
        return PoseGuiderConfig(conditioning_embedding_channels=sd["conv_out.weight"].shape[0],
                                conditioning_channels=sd["conv_in.weight"].shape[1], block_out_channels=tuple(chans))
    except KeyError as exc:
        raise loading.WeightsError(f"pose guider checkpoint lacks {exc}") from exc


class MotionFollower:
    """The MotionFollower model: denoising UNet (+ReCtr), estimator, PoCtr, CLIP image encoder, VAE decoder."""

    def __init__(self, config: ModelConfig, unet, pose_guider, vae, image_encoder, estimator=None,
                 weights_id: str = "random", coverage: Optional[loading.CoverageReport] = None):
        self.config = config
        self.unet = unet
        self.estimator = estimator if estimator is not None else unet
        self.pose_guider = pose_guider
        self.vae = vae
        self.image_encoder = image_encoder
        self.weights_id = weights_id
        self.coverage = coverage
        for m in self.modules():
            m.requires_grad_(False)
            m.eval()
            drop_unrun_projections(m)  # loaded (the official files have them) but never run: not kept resident
        # activation checkpointing of the estimator in guidance is decided per run (EditOptions.guidance_checkpointing)

    # -- construction ----------------------------------------------------------------------------------------
    def modules(self):
        mods = [self.unet, self.pose_guider, self.vae, self.image_encoder]
        if self.estimator is not self.unet:
            mods.append(self.estimator)
        return mods

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def estimator_mode(self) -> str:
        return "shared" if self.estimator is self.unet else "official"

    def to(self, device=None, dtype=None) -> MotionFollower:
        for m in self.modules():
            torch.nn.Module.to(m, device=device, dtype=dtype)
        return self

    @classmethod
    def random(cls, config: ModelConfig | str = DEFAULT_PRESET, seed: int = 0, estimator: str = "shared",
               device="cpu", dtype="fp32") -> MotionFollower:
        """A model with seeded random weights (the bundled demo model, tests, benchmarks).

        Small configs use PyTorch's default initialisers; large ones (sd15) are built on the meta device and filled
        in place on the target device, so no fp32 CPU copy of a full-size UNet is ever made.
        """
        if isinstance(config, str):
            config = preset(config)
        if sum(config.unet.block_out_channels) > 1024:
            return cls._random_large(config, seed, estimator, torch.device(device), parse_dtype(dtype))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            unet = UNet3DConditionModel(config.unet)
            randomize_zero_inits(unet, gen)
            est = None
            if estimator == "official":
                est = UNet3DConditionModel(config.unet)
                randomize_zero_inits(est, gen)
            pg = PoseGuider(**vars(config.pose_guider))
            randomize_zero_inits(pg, gen)
            vae = VaeDecoder(config.vae)
            clip = ClipImageEncoder(config.image_encoder)
        model = cls(config, unet, pg, vae, clip, est, weights_id=_random_id(config, seed))
        return model.to(device=torch.device(device), dtype=parse_dtype(dtype))

    @classmethod
    def _random_large(cls, config: ModelConfig, seed: int, estimator: str, device: torch.device,
                      dtype: torch.dtype) -> MotionFollower:
        gen = torch.Generator(device=device).manual_seed(seed)

        def unet_on_device():
            if device.type == "cpu":  # leaner resident than meta + to_empty (see _unfilled)
                u = _unfilled(lambda: UNet3DConditionModel(config.unet)).to(dtype)
            else:  # never an fp32 CPU copy of a full-size UNet
                with torch.device("meta"):
                    u = UNet3DConditionModel(config.unet)
                drop_unrun_projections(u)
                u = u.to_empty(device=device).to(dtype)
            fill_random(u, gen)
            return u

        unet = unet_on_device()
        est = unet_on_device() if estimator == "official" else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pg = PoseGuider(**vars(config.pose_guider))
            randomize_zero_inits(pg, torch.Generator().manual_seed(seed))
            vae = VaeDecoder(config.vae)
            clip = ClipImageEncoder(config.image_encoder)
        model = cls(config, unet, pg, vae, clip, est, weights_id=_random_id(config, seed))
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_official(cls, uri: str, estimator: str = "shared", device="cpu", dtype="fp32") -> MotionFollower:
        """Load the official release layout (or an official-style YAML) with strict coverage checks."""
        if estimator not in ESTIMATOR_MODES:
            raise ValueError(f"estimator must be one of {ESTIMATOR_MODES}, got {estimator!r}")
        lay = loading.locate_official(uri)
        base_cfg = loading.read_json(loading.join_uri(lay.base_unet, "config.json"))
        ucfg = UNetConfig.from_diffusers(base_cfg, lay.motion_kwargs)
        base_sd = loading.load_state_dict(loading.first_existing(
            lay.base_unet, ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]), mapped=True)
        motion_sd = loading.load_state_dict(lay.motion_module, mapped=True)
        den_sd = loading.load_state_dict(lay.denoising_unet, mapped=True)
        pg_sd = loading.load_state_dict(lay.pose_guider, mapped=True)
        vae_cfg = loading.read_json(loading.join_uri(lay.vae, "config.json"))
        vae_sd = loading.rename_legacy_vae(loading.load_state_dict(loading.first_existing(
            lay.vae, ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]), mapped=True))
        clip_cfg = loading.read_json(loading.join_uri(lay.image_encoder, "config.json"))
        clip_sd = loading.load_state_dict(loading.first_existing(
            lay.image_encoder, ["model.safetensors", "pytorch_model.bin"]), mapped=True)
        config = ModelConfig(unet=ucfg, pose_guider=_pose_guider_config(pg_sd), vae=vae_cfg, image_encoder=clip_cfg,
                             name="official")
        report = loading.CoverageReport()
        unet = _unfilled(lambda: UNet3DConditionModel(ucfg))
        report.modules.append(loading.merge_into(unet, "denoising_unet", [
            ("denoising_unet.pth", den_sd), ("motion_module.pth", motion_sd), ("base unet", base_sd)],
            ignore_suffixes=UNRUN_SUFFIXES))
        est = None
        if estimator == "official":
            if lay.estimator_adapter is None:
                raise loading.WeightsError(
                    f"{uri}: estimator='official' needs estimator_appearance_adapter.safetensors (the official code "
                    "leaves the estimator's appearance adapter at its random initialisation)")
            est = _unfilled(lambda: UNet3DConditionModel(ucfg))
            report.modules.append(loading.merge_into(est, "estimator", [
                ("motion_module.pth", motion_sd), ("base unet", base_sd),
                ("estimator adapter", loading.load_state_dict(lay.estimator_adapter, mapped=True))],
                ignore_suffixes=UNRUN_SUFFIXES))
            report.modules[-1].unexpected.pop("base unet", None)
        pg = _unfilled(lambda: PoseGuider(**vars(config.pose_guider)))
        report.modules.append(loading.merge_into(pg, "pose_guider", [("poctr.pth", pg_sd)]))
        vae = _unfilled(lambda: VaeDecoder(vae_cfg))
        report.modules.append(loading.merge_into(vae, "vae", [("sd-vae-ft-mse", vae_sd)],
                                                 ignore_prefixes=("encoder.", "quant_conv.")))
        clip = _unfilled(lambda: ClipImageEncoder(clip_cfg))
        report.modules.append(loading.merge_into(clip, "image_encoder", [("image_encoder", clip_sd)],
                                                 ignore_prefixes=("vision_model.embeddings.position_ids",)))
        report.raise_if_incomplete()
        for m in report.modules:
            for src, keys in m.unexpected.items():
                if keys:
                    log.warning("%s: %d keys of %s match no parameter and were ignored (e.g. %s)", m.module,
                                len(keys), src, keys[0])
        wid = "official:" + hashlib.sha256(json.dumps(
            [(k, list(v.shape), float(v.float().flatten()[:4].sum())) for k, v in sorted(den_sd.items())[:64]]
        ).encode()).hexdigest()[:16]
        model = cls(config, unet, pg, vae, clip, est, weights_id=wid, coverage=report)
        return model.to(device=torch.device(device), dtype=parse_dtype(dtype))

    # -- own single-directory format ------------------------------------------------------------------------------
    def save(self, uri: str) -> None:
        """Write our single-directory format: ``mf_config.json`` + one safetensors file per network."""
        from safetensors.torch import save
        fs, path = loading.open_fs(uri)
        fs.makedirs(path, exist_ok=True)
        files = {"denoising_unet": self.unet, "pose_guider": self.pose_guider, "vae": self.vae,
                 "image_encoder": self.image_encoder}
        if self.estimator is not self.unet:
            files["estimator"] = self.estimator
        for name, module in files.items():
            sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            loading.write_whole(fs, loading.join_uri(path, f"{name}.safetensors"), save(sd))
        meta = {"config": self.config.to_dict(), "estimator": self.estimator_mode, "weights_id": self.weights_id}
        loading.write_whole(fs, loading.join_uri(path, loading.MF_CONFIG), json.dumps(meta, indent=1).encode())

    @classmethod
    def from_mf(cls, uri: str, device="cpu", dtype="fp32") -> MotionFollower:
        meta = loading.read_json(loading.join_uri(uri, loading.MF_CONFIG))
        config = ModelConfig.from_dict(meta["config"])
        unet = _unfilled(lambda: UNet3DConditionModel(config.unet))
        est = _unfilled(lambda: UNet3DConditionModel(config.unet)) if meta.get("estimator") == "official" else None
        pg = _unfilled(lambda: PoseGuider(**vars(config.pose_guider)))
        vae = _unfilled(lambda: VaeDecoder(config.vae))
        clip = _unfilled(lambda: ClipImageEncoder(config.image_encoder))
        report = loading.CoverageReport()
        parts = [("denoising_unet", unet), ("pose_guider", pg), ("vae", vae), ("image_encoder", clip)]
        if est is not None:
            parts.append(("estimator", est))
        for name, module in parts:
            sd = loading.load_state_dict(loading.join_uri(uri, f"{name}.safetensors"), mapped=True)
            report.modules.append(loading.merge_into(module, name, [(f"{name}.safetensors", sd)],
                                                     ignore_suffixes=UNRUN_SUFFIXES))
        report.raise_if_incomplete()
        model = cls(config, unet, pg, vae, clip, est, weights_id=meta.get("weights_id", "mf"), coverage=report)
        return model.to(device=torch.device(device), dtype=parse_dtype(dtype))

    def identity(self) -> dict:
        return {"model": self.config.name, "weights_id": self.weights_id, "estimator": self.estimator_mode,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device)}

    # -- condition encoding -----------------------------------------------------------------------------------
    def clip_pixels(self, frames) -> torch.Tensor:
        """Per-frame CLIP input: PIL bicubic resize of the original frame to 224², CLIP mean/std."""
        size = self.image_encoder.config.image_size
        out = []
        for fr in frames:
            img = Image.fromarray(np.asarray(fr, dtype=np.uint8)).convert("RGB").resize((size, size), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float64) * (1 / 255)
            out.append(arr.astype(np.float32))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, window: EditWindow) -> Conditions:
        window.validate()
        dev, dt = self.device, self.dtype
        f = window.num_frames
        h, w = window.size
        clip_src = window.clip_frames if window.clip_frames is not None else list(window.source_frames)
        clip = self.image_encoder(self.clip_pixels(clip_src).to(dev, dt)).unsqueeze(1)

        def img(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev).permute(0, 3, 1, 2).to(dt) / 255

        def mask(a):
            a = np.asarray(a)
            if a.ndim == 4:
                a = a[..., 0]
            return torch.from_numpy((a > (127 if a.dtype == np.uint8 else 0.5)).astype(np.float32))[:, None].to(dev, dt)

        appearance = img(window.source_frames) * 2 - 1
        pose_src = self.pose_guider(img(window.source_poses))
        pose_tgt = self.pose_guider(img(window.target_poses))
        app_unet = self.unet.appearance_features(appearance)
        app_est = app_unet if self.estimator is self.unet else self.estimator.appearance_features(appearance)
        lc = self.config.unet.in_channels
        return Conditions(clip=clip, pose_src=pose_src, pose_tgt=pose_tgt, app_unet=app_unet, app_est=app_est,
                          source_masks=mask(window.source_masks), target_masks=mask(window.target_masks),
                          latent_shape=(1, lc, f, h // 8, w // 8))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 4, F, h, w) latents → (F, 3, H, W) float32 in [0, 1] on the CPU, one frame at a time."""
        frames = []
        vdt = next(self.vae.parameters()).dtype
        for f in range(latents.shape[2]):
            z = latents[:, :, f].to(vdt) / self.config.latent_scale
            frames.append((self.vae.decode(z) / 2 + 0.5).clamp(0, 1).float().cpu())
        return torch.cat(frames)

    # -- the public edit --------------------------------------------------------------------------------------
    def sampler(self, options: EditOptions, tap: Optional[Tap] = None) -> TwoBranchSampler:
        weights = GuidanceWeights(energy_scale=options.energy_scale, factor=options.guidance_factor)
        return TwoBranchSampler(self.unet, self.estimator, Schedule(self.config.scheduler, options.steps),
                                guidance_scale=options.guidance_scale, camera=options.camera, weights=weights,
                                sde_strength=options.sde_strength, tap=tap,
                                checkpointing=options.guidance_checkpointing)

    def edit(self, window: EditWindow, options: EditOptions = EditOptions(), noise: Optional[NoiseProvider] = None,
             lockstep: bool = True, reconstruction: bool = False, tap: Optional[Tap] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> EditResult:
        """Edit one window: re-render the source person in the target poses. Returns uint8 (F, H, W, 3) frames."""
        start = time.perf_counter()
        window.validate()
        if noise is None:
            idx = window.frame_indices if window.frame_indices is not None else range(window.num_frames)
            noise = FrameIndexedNoise(options.seed, idx)
        cond = self.encode(window)
        sampler = self.sampler(options, tap)
        x, x_rec = sampler.run(cond, noise, lockstep=lockstep, progress=progress)
        if tap is not None:
            tap("final_latents", -1, (x, x_rec))
        return self.result(x, x_rec, options, reconstruction, {k: list(v) for k, v in sampler.timings.items()},
                           start)

    def edit_fused(self, windows: Sequence[EditWindow], options: EditOptions = EditOptions(),
                   weights: Optional[Sequence[Sequence[float]]] = None,
                   noises: Optional[Sequence[NoiseProvider]] = None, reconstruction: bool = False,
                   progress: Optional[Callable[[int, int], None]] = None,
                   tap: Optional[Tap] = None) -> list[EditResult]:
        """Edit one group of overlapping windows (``frame_indices`` = global spans) in lockstep, fusing the
        shared frames' latents after every step: one result per window, in order (contracts: mf_model.fused)."""
        return fused.edit_fused(self, windows, options, weights=weights, noises=noises,
                                reconstruction=reconstruction, progress=progress, tap=tap)

    def result(self, x: torch.Tensor, x_rec: torch.Tensor, options: EditOptions, reconstruction: bool,
               timings: dict, start: float) -> EditResult:
        """The ``EditResult`` of final latents: decoded when ``options.decode``, latents in ``info``."""
        result = EditResult(frames=np.empty((0,)), seconds=0.0,
                            info={"latents": x.float().cpu(), "reconstruction_latents": x_rec.float().cpu(),
                                  "timings": timings})
        if options.decode:
            result.frames = _to_uint8(self.decode(x))
            if reconstruction:
                result.reconstruction = _to_uint8(self.decode(x_rec))
        if not x.is_cuda:  # the decode's freed blocks too, as after each sampler phase (host_memory)
            release_host_memory()
        result.seconds = time.perf_counter() - start
        return result


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) float in [0,1] → (F, H, W, 3) uint8 (rounded)."""
    return (video.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def load_model(weights: Optional[str] = None, preset_name: str = DEFAULT_PRESET, dtype="fp32", device="cpu",
               estimator: str = "shared", seed: int = 0) -> MotionFollower:
    """The one entry point: ``weights`` (official layout dir/YAML or our format, local or fsspec URI) or, when
    None, the named preset with seeded random weights (``tiny`` is the bundled demo model)."""
    if weights is None:
        return MotionFollower.random(preset_name, seed=seed, estimator=estimator, device=device, dtype=dtype)
    fmt = loading.detect_format(weights)
    if fmt == "mf":
        return MotionFollower.from_mf(weights, device=device, dtype=dtype)
    return MotionFollower.from_official(weights, estimator=estimator, device=device, dtype=dtype)

