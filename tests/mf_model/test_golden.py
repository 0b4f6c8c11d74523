"""Fidelity against the official code's golden vectors (tiny random weights), via the public CLI."""
import subprocess
import sys

from tests.conftest import REPO


def test_golden_case_passes(golden_case):
    proc = subprocess.run([sys.executable, "-m", "mf_model.golden", str(golden_case)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    assert lines[-1] == "golden: PASS", "\n".join(l for l in lines if "FAIL" in l) + proc.stderr[-2000:]
    assert proc.returncode == 0
    names = " ".join(lines)
    # both runs, outputs and intermediates of every kind were compared
    for key in ("camera_False.edited_video", "camera_True.edited_video", "camera_True.kv_up3_attn0_iter20_key",
                "reconstruction_latents_collection", "edit_step_latents", "guid10_guidance", "ref_clip_image_embeds",
                "estimator_appearance_feat3", "edit_unet_iter20_out"):
        assert key in names
    assert sum(1 for l in lines if l.endswith(" OK")) >= 100


def test_golden_fails_on_a_wrong_case(golden_case, tmp_path):
    """The checker is not vacuous: a case whose stored video is perturbed fails with a non-zero exit."""
    import shutil

    import numpy as np

    case = tmp_path / "case"
    shutil.copytree(golden_case, case)
    for p in case.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    out = case / "camera_False" / "outputs.npz"
    d = dict(np.load(out))
    d["edited_video"] = d["edited_video"] + 0.01
    np.savez(out, **d)
    proc = subprocess.run([sys.executable, "-m", "mf_model.golden", str(case), "--run", "camera_False"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert proc.stdout.strip().splitlines()[-1] == "golden: FAIL"
    assert "camera_False.edited_video: max_abs=1.00" in proc.stdout
