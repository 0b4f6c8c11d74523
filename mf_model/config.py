"""Typed configurations of the MotionFollower networks, and the named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class MotionModuleConfig:
    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 32
    norm_num_groups: int = 32  # fixed in the official motion module, independent of the UNet's groups


@dataclass
class UNetConfig:
    """The 3-D UNet (denoising network and estimator share it). Field names follow the SD UNet config.json."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # number of heads, as in the SD-1.x configs
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    motion_module: MotionModuleConfig = field(default_factory=MotionModuleConfig)

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any], motion: Optional[dict[str, Any]] = None) -> UNetConfig:
        """Build from a 2-D SD UNet ``config.json`` plus the official ``motion_module_kwargs``."""
        unsupported = []
        if cfg.get("use_linear_projection"):
            unsupported.append("use_linear_projection")
        if cfg.get("act_fn", "silu") != "silu":
            unsupported.append(f"act_fn={cfg.get('act_fn')}")
        if len(cfg.get("block_out_channels", (0, 0, 0, 0))) != 4:
            unsupported.append("a number of blocks other than 4")
        if unsupported:
            raise ValueError(f"unsupported UNet config: {', '.join(unsupported)}")
        head = cfg.get("attention_head_dim", 8)
        if isinstance(head, (list, tuple)):
            if len(set(head)) != 1:
                raise ValueError(f"per-block attention_head_dim {head} is not supported")
            head = head[0]
        mm = MotionModuleConfig()
        if motion:
            for key in ("num_attention_heads", "num_transformer_block", "temporal_position_encoding",
                        "temporal_position_encoding_max_len"):
                if key in motion:
                    setattr(mm, key, motion[key])
            if "attention_block_types" in motion:
                mm.attention_block_types = tuple(motion["attention_block_types"])
        return cls(
            in_channels=cfg.get("in_channels", 4),
            out_channels=cfg.get("out_channels", 4),
            block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=cfg.get("layers_per_block", 2),
            attention_head_dim=int(head),
            cross_attention_dim=cfg.get("cross_attention_dim", 768),
            norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5),
            flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
            freq_shift=cfg.get("freq_shift", 0),
            downsample_padding=cfg.get("downsample_padding", 1),
            motion_module=mm,
        )


@dataclass
class PoseGuiderConfig:
    conditioning_embedding_channels: int = 320
    conditioning_channels: int = 3
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)


@dataclass
class SchedulerConfig:
    """The official DDIM configuration (zero-terminal-SNR, v-prediction, trailing spacing)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    set_alpha_to_one: bool = True
    steps_offset: int = 1
    clip_sample: bool = False


@dataclass
class ModelConfig:
    """Everything needed to build a MotionFollower model from scratch (weights aside)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    pose_guider: PoseGuiderConfig = field(default_factory=PoseGuiderConfig)
    vae: dict = field(default_factory=dict)  # an AutoencoderKL config.json (mf_model.vae_decoder)
    image_encoder: dict = field(default_factory=dict)  # a CLIP vision config.json (mf_model.image_encoder)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    latent_scale: float = 0.18215
    name: str = "custom"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        u = dict(d["unet"])
        mm = MotionModuleConfig(**{**u.pop("motion_module"), })
        mm.attention_block_types = tuple(mm.attention_block_types)
        u["block_out_channels"] = tuple(u["block_out_channels"])
        pg = dict(d["pose_guider"])
        pg["block_out_channels"] = tuple(pg["block_out_channels"])
        return cls(unet=UNetConfig(motion_module=mm, **u), pose_guider=PoseGuiderConfig(**pg), vae=dict(d["vae"]),
                   image_encoder=dict(d["image_encoder"]), scheduler=SchedulerConfig(**d.get("scheduler", {})),
                   latent_scale=d.get("latent_scale", 0.18215), name=d.get("name", "custom"))


SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu", "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
CLIP_VIT_L14 = {
    "hidden_size": 1024, "intermediate_size": 4096, "projection_dim": 768, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_channels": 3, "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def preset(name: str) -> ModelConfig:
    """Named model configurations: ``sd15`` (the official sizes) and ``tiny`` (tests, demos)."""
    if name == "sd15":
        return ModelConfig(unet=UNetConfig(), pose_guider=PoseGuiderConfig(), vae=dict(SD_VAE),
                           image_encoder=dict(CLIP_VIT_L14), name="sd15")
    if name == "tiny":
        return ModelConfig(
            unet=UNetConfig(block_out_channels=(32, 32, 32, 32), norm_num_groups=4, cross_attention_dim=48,
                            attention_head_dim=8),
            pose_guider=PoseGuiderConfig(conditioning_embedding_channels=32, block_out_channels=(16, 32, 32, 64)),
            vae={**SD_VAE, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                 "sample_size": 64},
            image_encoder={"hidden_size": 32, "intermediate_size": 64, "projection_dim": 48, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_channels": 3, "image_size": 224, "patch_size": 16,
                           "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
            name="tiny",
        )
    raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")


PRESETS = ("sd15", "tiny")  # the names :func:`preset` knows: the one list CLI choices and checks use
DEFAULT_PRESET = "tiny"  # the model of a run given no weights and no preset (the bundled demo model)
# The model's dtypes: the short name (CLI choices, configs) → torch's name (accepted too). mf_model.model maps both
# to torch dtypes; this table is torch-free so the pipeline and the CLI can name them without importing torch.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Names the seeded random weights of the presets in weight ids and result keys. Its revision is bumped whenever the
# same (preset, seed) draws other weights, so that outputs made with the old ones are not served as current
# (r2: own CLIP encoder and VAE decoder)
RANDOM_WEIGHTS_TAG = "random-r2"
