"""No redundant work, outputs unchanged: shared reference features, one batched input-gradient, optional
checkpointing; the MAC count's step plan; the GPU suite's CPU dry run."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from mf_model import EditOptions, SequentialNoise, load_model
from mf_model.guidance import GuidanceMasks, GuidanceWeights, _input_gradients, score_guidance
from tests.conftest import REPO
from tests.mf_model.helpers import box_window


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model(preset_name="tiny", seed=3)


def _run(model, opts, share=True, share_edit=None):
    s = model.sampler(opts)
    s.share_rec_features = share
    s.share_edit_features = share if share_edit is None else share_edit
    x, x_rec = s.run(model.encode(box_window(frames=3)), SequentialNoise(7))
    return x, x_rec, s


def test_reconstruction_features_reused_equal_recomputed(tiny):
    opts = EditOptions(steps=25, camera=True, seed=7)  # 25 steps: guidance, SDE and ×3 replay steps all occur
    a, _, sa = _run(tiny, opts, share=True, share_edit=False)
    b, _, sb = _run(tiny, opts, share=False)
    assert (a - b).abs().max().item() <= 1e-5
    assert len(sa.timings["guidance"]) == len(sb.timings["guidance"]) > 0


def test_edit_features_from_the_cfg_forward_equal_recomputed(tiny):
    # the conditional half then runs as its own batch: float rounding differs from the (2F)-batch CFG forward by
    # ~1e-6 per call, amplified over 25 steps by the guidance scale λ = 4000
    opts = EditOptions(steps=25, camera=True, seed=7)
    a, _, sa = _run(tiny, opts, share=True)
    b, _, _ = _run(tiny, opts, share=True, share_edit=False)
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())
    assert len(sa.timings["guidance"]) > 0


def test_captured_features_equal_truncated_forward(tiny):
    c = tiny.encode(box_window(frames=3))
    x = torch.randn(c.latent_shape, generator=torch.Generator().manual_seed(0))
    cap = {1: None, 2: None}
    with torch.no_grad():
        tiny.unet(x, 500, c.clip, c.pose_src, c.app_unet, capture_up=cap)
        ref = tiny.estimator(x, 500, c.clip, c.pose_src, c.app_est, up_ft_indices=[1, 2])
    for got, want in zip((cap[1], cap[2]), ref):
        assert torch.equal(got, want)
    masks = GuidanceMasks.build(c.source_masks, c.target_masks, c.latent_shape[-2:])

    def feats(lat, is_edit):
        return tiny.estimator(lat, 500, c.clip, c.pose_tgt if is_edit else c.pose_src, c.app_est,
                              up_ft_indices=[1, 2])
    y = torch.randn(c.latent_shape, generator=torch.Generator().manual_seed(1))
    g_new = score_guidance(feats, y, x, masks, GuidanceWeights(), rec_feats=[cap[1], cap[2]])
    g_old = score_guidance(feats, y, x, masks, GuidanceWeights())
    assert (g_new - g_old).abs().max().item() <= 1e-5
    # the edit features recorded by a full conditional forward (graph kept up to up block 2 only)
    yg = y.clone().requires_grad_(True)
    ecap = {1: None, 2: None}
    with torch.enable_grad():
        v = tiny.unet(yg, 500, c.clip, c.pose_tgt, c.app_unet, capture_up=ecap, grad_until_up=2)
    assert not v.requires_grad and ecap[2].requires_grad
    g_rec = score_guidance(feats, y, x, masks, GuidanceWeights(), edit=(yg, [ecap[1], ecap[2]]))
    assert (g_rec - g_old).abs().max().item() <= 1e-5


def test_batched_input_gradients_equal_separate_calls():
    w = torch.randn(5, 5, dtype=torch.float64)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.tanh(w @ x)
    e1, e2 = (y ** 2).sum(), y.sum()
    r1 = torch.autograd.grad(3.0 * e1, x, retain_graph=True)[0]
    r2 = torch.autograd.grad(3.0 * e2, x, retain_graph=True)[0]
    g1, g2 = _input_gradients((e1, e2), x, 3.0)
    assert torch.allclose(g1, r1) and torch.allclose(g2, r2)
    z, only = _input_gradients((torch.zeros(()), (x * x).sum()), x, 1.0)
    assert torch.equal(z, torch.zeros_like(x)) and torch.allclose(only, 2 * x)


def test_checkpointing_is_optional_and_off_by_default_on_cpu(tiny):
    opts = EditOptions(steps=12, seed=7)
    assert tiny.sampler(opts).use_checkpointing((1, 4, 3, 8, 8)) is False
    a, _, _ = _run(tiny, opts)
    b, _, s = _run(tiny, EditOptions(steps=12, seed=7, guidance_checkpointing=True))
    assert s.use_checkpointing((1, 4, 3, 8, 8)) is True
    assert (a - b).abs().max().item() <= 1e-5


def test_guidance_graph_estimate_matches_a_real_forward(tiny):
    """The meta-device estimate that decides checkpointing counts what a fused-attention run saves (no attention
    matrices), each storage once and no weights; a real CPU forward (fused attention too) saves the same bytes."""
    from mf_model.cost import guidance_graph_bytes, meta_inputs

    shape = (1, 4, 4, 16, 16)  # 256 tokens per frame: an attention matrix would dominate the count
    x, clip, pose, app = meta_inputs(tiny.unet.config, shape)
    x, clip, pose = (torch.zeros(t.shape) for t in (x, clip, pose))
    app = [torch.zeros(t.shape) for t in app]
    seen = {}
    weights = {p.untyped_storage().data_ptr() for p in tiny.unet.parameters()}  # held anyway: not counted

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    was, tiny.unet.gradient_checkpointing = tiny.unet.gradient_checkpointing, False  # an earlier edit may set it
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            tiny.unet(x.requires_grad_(True), 999, clip, pose, app, up_ft_indices=[1, 2])
    finally:
        tiny.unet.gradient_checkpointing = was
    real, est = sum(seen.values()), guidance_graph_bytes(tiny.unet.config, shape, 4)
    assert abs(est - real) <= 0.1 * real, (est, real)


def test_fast_preset_options():
    from mf_model import FAST_OVERLAP, FAST_STEPS, FAST_WINDOW_FRAMES
    assert EditOptions.fast().steps == FAST_STEPS == 25 and (FAST_WINDOW_FRAMES, FAST_OVERLAP) == (32, 8)
    assert EditOptions.fast(camera=True).camera


def test_window_flops_plan_and_ordering():
    from benchmarks.window_flops import PhaseCounter, one_calls, phase_table, plan_counts
    n = plan_counts(50)
    assert (n.rec, n.cfg, n.cfg_camera, n.replays, n.replay_steps, n.guidance) == (50, 58, 38, 8, 4, 28)
    calls = one_calls(PhaseCounter(2, 64))
    assert calls["full_b2"] == 2 * calls["full_b1"] < calls["full_b2_cam"]
    assert calls["trunc"] < calls["full_b1"] and calls["bwd_ours"] < calls["bwd_ckpt"] < calls["bwd_before"]
    # the official's plain autograd: no frozen-weight recomputation (GEGLU projection, temporal attention), no
    # weight gradients, and the shared meta UNet is left frozen for the next count
    assert calls["bwd_plain"] < calls["bwd_ours"]
    assert not any(p.requires_grad for p in PhaseCounter(2, 64).unet.parameters())
    tot = {v: sum(phase_table(calls, n, 2, False, v).values()) for v in ("ours", "ours+ckpt", "before")}
    assert tot["ours"] < tot["ours+ckpt"] < tot["before"]


def test_gpu_suite_dry_run():
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("window ")]
    assert len(lines) == 4 and all("TFLOP/s" in l and "GPU-s per new frame" in l for l in lines)


def test_gpu_phase_benchmarks_run_on_the_cpu():
    """The per-phase and group-norm GPU benchmarks, smoke-tested through the same code on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    phases = subprocess.run([sys.executable, "benchmarks/gpu_phases.py", "--device", "cpu", "--preset", "tiny",
                             "--size", "64", "--frames", "2", "--dtype", "fp32", "--knobs", "baseline"], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert phases.returncode == 0, phases.stderr[-2000:]
    row = next(line for line in phases.stdout.splitlines() if line.startswith("baseline"))
    assert all(p in row for p in ("reconstruction_forward", "edit_forward", "guidance"))
    gn = subprocess.run([sys.executable, "benchmarks/gpu_group_norm.py", "--device", "cpu", "--dtype", "fp32",
                         "--small", "--reps", "1"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert gn.returncode == 0, gn.stderr[-2000:]
    errs = [float(e) for e in re.findall(r"err ([0-9.e+-]+)", gn.stdout)]
    assert len(errs) == 6 and max(errs) < 1e-5  # two shapes × three formulations of the same function


def test_model_calls_ab_times_each_arm_from_its_own_checkout(tmp_path):
    """The A/B script runs every arm in a fresh process from the checkout it names (a copy of this repo's model
    code stands in for the other checkout)."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(REPO / "mf_model", other / "mf_model", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "benchmarks/model_calls_ab.py", "--other", str(other), "--preset", "tiny",
                           "--size", "64", "--frames", "2", "--rounds", "1"], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("    0 ")]
    assert [r.split()[1] for r in rows] == ["before", "this", "this+checkpointing"]
    assert rows[0].endswith(f"({other})") and rows[1].endswith(f"({REPO})")
    # build, resident, reconstruction, CFG at the guided step, plain CFG (step 1), guidance, their sum, peak
    for row in rows:
        values = [float(v) for v in row.split()[2:-1]]
        assert len(values) == 8 and all(math.isfinite(v) and v > 0 for v in values), row
        assert values[6] == pytest.approx(values[3] + values[5], abs=0.02)


def test_every_weight_is_used_and_held_once(tiny):
    """Resident memory is the weights the edit runs, once: every module that holds parameters runs in an edit
    (camera off and on), no two parameters share storage by accident, and the VAE encoder is not built."""
    called, hooks, holders = set(), [], {}
    for top in ("unet", "pose_guider", "vae", "image_encoder"):
        for name, mod in getattr(tiny, top).named_modules():
            if any(True for _ in mod.parameters(recurse=False)):
                key = f"{top}.{name}"
                holders[key] = mod
                hooks.append(mod.register_forward_hook(lambda m, i, o, key=key: called.add(key)))
    try:
        for camera in (False, True):
            tiny.edit(box_window(frames=3), EditOptions(steps=3, camera=camera, seed=1))
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(holders) - called) == []
    ptrs = [p.data_ptr() for m in tiny.modules() for p in m.parameters()]
    assert len(ptrs) == len(set(ptrs))
    assert not hasattr(tiny.vae, "encoder") and tiny.estimator is tiny.unet


def test_one_token_cross_attention_needs_only_to_v_and_to_out():
    """With one key the softmax weight is exactly 1: the shortcut equals full attention, and to_q/to_k can go."""
    from mf_model.layers import Attention, drop_unrun_projections

    torch.manual_seed(0)
    attn = Attention(32, heads=4, dim_head=8, cross_attention_dim=16).eval()
    x, ctx = torch.randn(2, 50, 32), torch.randn(2, 1, 16)
    q = attn.to_q(x).view(2, 50, 4, 8).transpose(1, 2)
    k = attn.to_k(ctx).view(2, 1, 4, 8).transpose(1, 2)
    v = attn.to_v(ctx).view(2, 1, 4, 8).transpose(1, 2)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 50, 32)
    full = attn.to_out[0](full)
    assert drop_unrun_projections(attn) == 32 * 32 + 32 * 16  # to_q (32x32) and to_k (32x16)
    assert attn.to_q is None and "to_q.weight" not in attn.state_dict()
    torch.testing.assert_close(attn(x, context=ctx), full, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one-token"):
        attn(x, context=torch.randn(2, 3, 16))


def test_files_that_still_hold_the_dropped_projections_load(tiny, tmp_path):
    """Our format saved before the projections were dropped (or by hand) loads without complaint."""
    from safetensors.torch import load_file, save_file

    from mf_model.layers import Attention

    tiny.save(str(tmp_path))
    path = tmp_path / "denoising_unet.safetensors"
    sd = load_file(str(path))
    cross = [n for n, m in tiny.unet.named_modules() if isinstance(m, Attention) and m.is_cross]
    assert cross and not any(k.endswith("attn2.to_q.weight") for k in sd)
    for n in cross:
        sd[f"{n}.to_q.weight"] = torch.zeros(1)
        sd[f"{n}.to_k.weight"] = torch.zeros(1)
    save_file(sd, str(path))
    again = load_model(str(tmp_path))
    assert again.coverage.ok and not any(again.coverage.modules[0].unexpected.values())


def test_free_device_memory_counts_the_allocators_unused_cache(monkeypatch):
    """After a first window, PyTorch's caching allocator keeps the window's memory reserved: the driver reports it
    used, yet the next window can take it, so the checkpointing decision must count it as free."""
    from mf_model import sampler

    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 48 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * gib)
    assert sampler.available_device_bytes(torch.device("cuda", 0)) == 36 * gib


def test_resident_official_benchmark_on_tiny(tmp_path):
    """The load-memory benchmark writes an official layout its own loader accepts with full coverage, then measures
    both loads (tiny sizes here; the figures come from the sd15 run)."""
    layout = tmp_path / "layout"
    proc = subprocess.run([sys.executable, "benchmarks/resident_official.py", "--preset", "tiny", "--dir", str(layout)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("official layout", "tiny preset"))]
    assert len(rows) == 2 and all(float(r[-1]) >= float(r[-3]) > 0 for r in rows), proc.stdout
    assert (layout / "motion_module.pth").exists() and (layout / "WRITTEN").exists()
    from mf_model import load_model
    assert load_model(str(layout)).coverage.ok
