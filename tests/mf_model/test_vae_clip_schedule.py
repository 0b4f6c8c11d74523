"""Our CLIP image encoder, VAE decoder and DDIM quantities against the libraries they replace (transformers'
``CLIPVisionModelWithProjection``, diffusers' ``AutoencoderKL`` and ``DDIMScheduler``), on the same weights and
configurations; and the model process imports neither library."""
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from mf_model.config import CLIP_VIT_L14, SD_VAE, SchedulerConfig, preset
from mf_model.image_encoder import ClipImageEncoder
from mf_model.schedule import Schedule, inference_timesteps, train_alphas_cumprod
from mf_model.vae_decoder import VaeDecoder
from tests.conftest import REPO

TINY_CLIP = preset("tiny").image_encoder
TINY_VAE = {**preset("tiny").vae, "block_out_channels": [8, 16, 16, 32]}  # a 1x1 shortcut in every block type


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 else 0.0) * 0.1)
    return module.eval()


@pytest.mark.parametrize("cfg", [TINY_CLIP, {**TINY_CLIP, "hidden_act": "gelu", "patch_size": 32}],
                         ids=["quick_gelu", "gelu"])
def test_clip_matches_transformers(cfg):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(0)
    ref = _randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)), 1)
    ours = ClipImageEncoder(cfg).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and all(k.endswith("position_ids") for k in unexpected), (missing, unexpected)
    px = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(pixel_values=px).image_embeds
        got = ours(px)
    assert got.shape == want.shape == (3, cfg["projection_dim"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_clip_full_size_keys_and_shapes():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    with torch.device("meta"):
        ref = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14))
        ours = ClipImageEncoder(CLIP_VIT_L14)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


@pytest.mark.parametrize("cfg", [TINY_VAE, {**TINY_VAE, "mid_block_add_attention": False,
                                            "use_post_quant_conv": False}], ids=["sd", "no-attention"])
def test_vae_decoder_matches_diffusers(cfg):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    ref = _randomised(AutoencoderKL.from_config(cfg), 3)
    ours = VaeDecoder(cfg).eval()
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    ours.load_state_dict(sd, strict=True)
    z = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode(z)
    assert got.shape == want.shape == (2, 3, 48, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_vae_full_size_keys_and_shapes():
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        ref = AutoencoderKL.from_config(SD_VAE)
        ours = VaeDecoder(SD_VAE)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


def test_unsupported_configs_are_named():
    with pytest.raises(ValueError, match="hidden_act"):
        ClipImageEncoder({**TINY_CLIP, "hidden_act": "relu6"})
    with pytest.raises(ValueError, match="UpDecoderBlock2D"):
        VaeDecoder({**TINY_VAE, "up_block_types": ["AttnUpDecoderBlock2D"] * 4})
    with pytest.raises(ValueError, match="v-prediction"):
        Schedule(replace(SchedulerConfig(), prediction_type="epsilon"), 10)


@pytest.mark.parametrize("cfg", [
    SchedulerConfig(),
    replace(SchedulerConfig(), rescale_betas_zero_snr=False, timestep_spacing="leading", set_alpha_to_one=False,
            beta_schedule="scaled_linear"),
    replace(SchedulerConfig(), timestep_spacing="linspace"),
], ids=["official", "sd-leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 25, 50, 61, 333])
def test_schedule_matches_diffusers_ddim(cfg, steps):
    from dataclasses import asdict

    from diffusers import DDIMScheduler
    ref = DDIMScheduler(**asdict(cfg))
    ref.set_timesteps(steps)
    assert inference_timesteps(cfg, steps) == [int(t) for t in ref.timesteps][:steps]
    assert torch.equal(train_alphas_cumprod(cfg), ref.alphas_cumprod)  # bit-identical
    s = Schedule(cfg, steps)
    assert torch.equal(torch.as_tensor(s.final_alpha_cumprod), torch.as_tensor(ref.final_alpha_cumprod))
    # one DDIM step of ours equals diffusers' step (v-prediction, eta 0)
    x, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = s.timesteps[min(1, steps - 1)]
    torch.testing.assert_close(s.ddim_step(v, t, x), ref.step(v, t, x).prev_sample, rtol=1e-6, atol=1e-6)


def test_model_process_imports_neither_library():
    """Neither library, nor torch's compiler stack (which meta-device arithmetic in a full-size build pulled in):
    together about 250 MiB resident for code the edit never runs."""
    code = ("import sys, torch; from mf_model import load_model, EditOptions; "
            "from mf_model.config import preset; from mf_model.unet import UNet3DConditionModel; "
            "from tests.mf_model.helpers import box_window; m = load_model(); "
            "m.edit(box_window(frames=2), EditOptions(steps=2)); "
            "ctx = torch.device('meta'); ctx.__enter__(); UNet3DConditionModel(preset('sd15').unet); "
            "print(sorted({k for k in sys.modules} & {'diffusers', 'transformers', 'torch._dynamo'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_clip_nested_config_and_input_size():
    """A full CLIPConfig nests the vision part (projection_dim on top); the model takes only its own input size, and
    the model's CLIP preprocessing resizes to it."""
    nested = {"projection_dim": 40, "vision_config": {**TINY_CLIP, "image_size": 64, "projection_dim": None}}
    nested["vision_config"].pop("projection_dim")
    enc = ClipImageEncoder(nested).eval()
    assert enc.config.image_size == 64 and enc.visual_projection.out_features == 40
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 40)
    with pytest.raises(ValueError, match="64x64"):
        enc(torch.randn(1, 3, 224, 224))
    from mf_model import load_model
    model = load_model()
    model.image_encoder = enc
    assert model.clip_pixels([torch.zeros(50, 70, 3, dtype=torch.uint8).numpy()]).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_the_libraries(dtype):
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(0)
    ref_clip = _randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)), 1).to(dtype)
    clip = ClipImageEncoder(TINY_CLIP).eval()
    clip.load_state_dict(ref_clip.state_dict(), strict=False)
    clip = clip.to(dtype)
    px = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))  # fp32 pixels, cast inside
    with torch.no_grad():
        torch.testing.assert_close(clip(px), ref_clip(pixel_values=px).image_embeds, rtol=0, atol=0)
    ref_vae = _randomised(AutoencoderKL.from_config(TINY_VAE), 3).to(dtype)
    vae = VaeDecoder(TINY_VAE).eval()
    vae.load_state_dict({k: v for k, v in ref_vae.state_dict().items()
                         if not k.startswith(("encoder.", "quant_conv."))})
    vae = vae.to(dtype)
    z = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), ref_vae.decode(z).sample, rtol=0, atol=0)


def test_legacy_vae_attention_names_load():
    """Older sd-vae-ft-mse files name the mid-block attention query/key/value/proj_attn, with 1x1-conv shapes."""
    from mf_model.loading import merge_into, rename_legacy_vae
    ref = _randomised(VaeDecoder(TINY_VAE), 5)
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in k:
                k, v = k.replace(new, old), (v[:, :, None, None] if v.ndim == 2 else v)
        legacy[k] = v
    assert any(".query." in k for k in legacy) and any(v.ndim == 4 and ".proj_attn." in k for k, v in legacy.items())
    ours = VaeDecoder(TINY_VAE)
    assert merge_into(ours, "vae", [("legacy", rename_legacy_vae(legacy))]).ok
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
