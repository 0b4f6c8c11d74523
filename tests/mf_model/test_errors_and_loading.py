"""Clear errors on bad windows and bad weights; loading formats, dtypes and fsspec URIs."""
import gc
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mf_model import EditOptions, WeightsError, WindowError, load_model
from mf_model.loading import load_state_dict
from tests.mf_model.helpers import box_window


@pytest.fixture(scope="module")
def tiny():
    return load_model(preset_name="tiny", seed=3)


def test_too_many_frames(tiny):
    win = box_window(frames=33, h=16, w=16)
    with pytest.raises(WindowError, match="33 frames in one window; at most 32"):
        tiny.edit(win, EditOptions(steps=1))


@pytest.mark.parametrize("field,value,msg", [
    ("source_poses", np.zeros((3, 64, 64, 3), np.uint8), "source_poses has 3 frames but source_frames has 4"),
    ("target_masks", np.zeros((4, 64, 32), np.uint8), "target_masks size 32x64 differs"),
    ("source_masks", np.zeros((4, 64, 64, 3), np.uint8), "source_masks must have 3 dimensions"),
])
def test_mismatched_arrays(tiny, field, value, msg):
    win = box_window(frames=4)
    setattr(win, field, value)
    with pytest.raises(WindowError, match=msg):
        tiny.edit(win, EditOptions(steps=1))


def test_size_not_divisible_by_8(tiny):
    win = box_window(frames=2, h=60, w=64)
    with pytest.raises(WindowError, match="not divisible by 8"):
        tiny.edit(win, EditOptions(steps=1))


def _official_copy(golden_case, tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(golden_case / "weights", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_official_layout_dir_loads_with_coverage(golden_case, tmp_path):
    w = _official_copy(golden_case, tmp_path)
    model = load_model(str(w))
    assert model.coverage.ok
    text = model.coverage.text()
    assert "denoising_unet: " in text and "from denoising_unet.pth" in text and text.endswith("weights: OK")
    assert model.estimator is model.unet  # shared by default


def test_missing_weight_file_is_named(golden_case, tmp_path):
    w = _official_copy(golden_case, tmp_path)
    (w / "poctr.pth").unlink()
    with pytest.raises(WeightsError, match="poctr.pth"):
        load_model(str(w))


def test_key_mismatch_names_the_keys(golden_case, tmp_path):
    w = _official_copy(golden_case, tmp_path)
    sd = load_state_dict(str(w / "motion_module.pth"))
    dropped = sorted(sd)[0]
    del sd[dropped]
    torch.save(sd, w / "motion_module.pth")
    with pytest.raises(WeightsError) as exc:
        load_model(str(w))
    assert dropped in str(exc.value) and "MISSING 1" in str(exc.value)


def test_fp16_checkpoints_are_cast_and_dtypes(golden_case, tmp_path):
    w = _official_copy(golden_case, tmp_path)
    sd = load_state_dict(str(w / "denoising_unet.pth"))
    torch.save({k: v.half() for k, v in sd.items()}, w / "denoising_unet.pth")
    m32 = load_model(str(w))
    assert m32.unet.conv_in.weight.dtype == torch.float32
    mbf = load_model(str(w), dtype="bf16")
    assert mbf.unet.conv_in.weight.dtype == torch.bfloat16
    res = mbf.edit(box_window(frames=2), EditOptions(steps=2))
    assert res.frames.shape == (2, 64, 64, 3)


def test_own_format_roundtrip_via_fsspec_memory(tiny):
    uri = "memory://mf-test/model"
    tiny.save(uri)
    again = load_model(uri)
    for (k, a), (_, b) in zip(tiny.unet.state_dict().items(), again.unet.state_dict().items()):
        assert torch.equal(a, b), k
    win = box_window(frames=2)
    o = EditOptions(steps=3)
    assert np.array_equal(tiny.edit(win, o).frames, again.edit(win, o).frames)


def test_official_layout_from_fsspec_uri(golden_case):
    import fsspec
    fs = fsspec.filesystem("memory")
    for p in (golden_case / "weights").rglob("*"):
        if p.is_file():
            rel = p.relative_to(golden_case / "weights").as_posix()
            with fs.open(f"/official/{rel}", "wb") as fh:
                fh.write(p.read_bytes())
    model = load_model("memory://official")
    assert model.coverage.ok


def test_not_a_weights_dir(tmp_path):
    with pytest.raises(WeightsError, match="not a MotionFollower weights directory"):
        load_model(str(tmp_path))
    with pytest.raises(WeightsError, match="weights not found"):
        load_model(str(tmp_path / "nope"))


def test_mf_weights_check_cli(golden_case, tmp_path, capsys):
    from jobs.cli import main

    assert main(["weights", "check", str(golden_case / "weights")]) == 0
    out = capsys.readouterr().out
    # 1304 entries in the files; the 32 unrun cross-attention q/k projections are not held (nor counted)
    assert "denoising_unet: 1272 entries, 684 from denoising_unet.pth, 588 from motion_module.pth" in out
    assert "weights: OK" in out
    w = _official_copy(golden_case, tmp_path)
    sd = load_state_dict(str(w / "denoising_unet.pth"))
    sd.pop("conv_in.weight")
    sd["not.a.key"] = torch.zeros(1)
    torch.save(sd, w / "denoising_unet.pth")
    assert main(["weights", "check", str(w)]) == 0
    out = capsys.readouterr().out
    assert "ignored 1 keys of denoising_unet.pth that match no parameter: not.a.key" in out
    assert "683 from denoising_unet.pth, 588 from motion_module.pth, 1 from base unet" in out  # priority merge
    mm = load_state_dict(str(w / "motion_module.pth"))
    gone = sorted(mm)[5]
    mm.pop(gone)
    torch.save(mm, w / "motion_module.pth")
    assert main(["weights", "check", str(w)]) == 1
    out = capsys.readouterr().out
    assert "MISSING 1" in out and gone in out and "weights: INCOMPLETE" in out


@pytest.mark.parametrize("mapped", [False, True])
def test_state_dict_formats_mapped_or_read(tmp_path, mapped):
    """Zip and legacy ``.pth`` and ``.safetensors`` load alike, mapped or read whole; unmapped tensors survive the
    file being rewritten; a damaged file is a WeightsError naming it, mapped or not."""
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(64, 32), "b.bias": torch.arange(5.0)}
    files = {"zip.pth": lambda p: torch.save(sd, p),
             "legacy.pth": lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False),
             "w.safetensors": lambda p: save_file(sd, str(p))}
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        got = load_state_dict(str(path), mapped=mapped)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), name
        assert (str(path) in Path("/proc/self/maps").read_text()) == (mapped and name != "legacy.pth"), name
        if not mapped:
            path.write_bytes(b"")  # owned tensors: rewriting the file cannot touch them
            assert torch.equal(got["a.weight"], sd["a.weight"])
        del got  # mapped tensors must be gone before their file is rewritten
        gc.collect()
        assert str(path) not in Path("/proc/self/maps").read_text(), f"{name} still mapped"
        path.write_bytes(b"not a checkpoint at all" * 10)
        with pytest.raises(WeightsError, match=name):
            load_state_dict(str(path), mapped=mapped)
