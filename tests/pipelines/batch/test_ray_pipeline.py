"""The ``mf retarget`` pipeline end to end: real Ray (the session ``ray_local``), ffmpeg, Parquet and MediaPipe.

Inputs: a 12-frame 96x96 video made from the official fixture frames (a real person), with an audio track and the
exact NTSC rate 30000/1001, driven by the demo's waving pose track; plus a corrupt file, a missing file and a
person-free video. Every request edits 2 windows (window 8, overlap 4) with 2 steps of the tiny model.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines.batch.config import ProcessingOptions, RunConfig
from pipelines.batch.driver import run_pipeline
from pipelines.batch.metrics import PipelineMetrics, start_metrics_server
from pipelines.batch.requests import read_manifest, write_manifest
from pipelines.batch.results import read_results
from pipelines.media import storage

REPO = Path(__file__).resolve().parents[3]
FPS = "30000/1001"
FRAMES = 12
PARAMS = {"steps": 2, "size": 96, "window": 8, "overlap": 4, "seed": 7}
KEEP = ProcessingOptions(keep_windows=True)  # runs whose windows the tests compare

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _encode(frames: np.ndarray, path: Path, audio: bool = False) -> None:
    n, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", FPS, "-i", "-"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def _ffprobe(path: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,nb_read_frames,r_frame_rate,width,height", "-of", "json", path],
                         capture_output=True, check=True, text=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def _sha(path: str) -> str:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def _windows(out: Path) -> dict[str, Path]:
    return {p.name: p for p in (out / "windows").rglob("*.npz")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixture_cases):
    from PIL import Image

    from jobs.commands.demo import waving_track
    from pipelines.conditioning.poses.keypoints import write_pose_track

    d = tmp_path_factory.mktemp("inputs")
    folder = fixture_cases / "case-1" / "source_images"
    names = sorted(os.listdir(folder), key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))[:FRAMES]
    frames = np.stack([np.asarray(Image.open(folder / n).convert("RGB").resize((96, 96), Image.BICUBIC))
                       for n in names])
    _encode(frames, d / "person.mp4", audio=True)
    write_pose_track(waving_track(frames[0], FRAMES, 30000 / 1001), str(d / "waving.parquet"))
    yy, xx = np.mgrid[0:96, 0:96]
    empty = np.stack([np.dstack([(xx + 5 * k) % 256, yy * 2, np.full_like(xx, 90)]) for k in range(FRAMES)])
    _encode(empty.astype(np.uint8), d / "no_person.mp4")
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    good = {"request_id": "good", "source": str(d / "person.mp4"), "driving": str(d / "waving.parquet"),
            "preview": True, **PARAMS}
    rows = [good,
            {**good, "request_id": "corrupt", "source": str(d / "corrupt.mp4"), "preview": False},
            {**good, "request_id": "missing", "source": str(d / "nowhere.mp4"), "preview": False},
            {**good, "request_id": "no-person", "source": str(d / "no_person.mp4"), "preview": False}]
    write_manifest(rows, str(d / "mixed.csv"))
    write_manifest([good], str(d / "good.jsonl"))
    write_manifest([good, {**good, "request_id": "good-2", "seed": 8}], str(d / "two.parquet"))
    return d


@pytest.fixture(scope="module")
def reference(ray_local, inputs, tmp_path_factory):
    """The mixed manifest, run once, uninterrupted, with metrics served over HTTP."""
    out = tmp_path_factory.mktemp("ref")
    metrics = PipelineMetrics()
    server = start_metrics_server(0, metrics, addr="127.0.0.1")
    try:
        summary = run_pipeline(RunConfig(manifest=str(inputs / "mixed.csv"), out=str(out), processing=KEEP),
                               metrics=metrics)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as resp:
            exposed = resp.read().decode()
    finally:
        server.shutdown()
    return out, summary, metrics, exposed


def test_mixed_manifest_fails_bad_rows_and_writes_good_outputs(reference):
    out, summary, metrics, exposed = reference
    rows = {r["request_id"]: r for r in read_results(str(out / "results.parquet"))}
    assert summary.counts == {"succeeded": 1, "failed": 3}
    good = rows["good"]
    assert good["status"] == "succeeded" and good["error"] is None
    assert good["frames"] == FRAMES and good["fps_rational"] == FPS and good["windows"] == 2
    assert (good["width"], good["height"]) == (96, 96)  # the source resolution
    assert good["model"] == "tiny" and good["weights_id"] and good["seam_score"] is not None
    assert all(r["seconds_total"] > 0 for r in rows.values())  # from the run's start until its row was in
    assert good["seconds_total"] >= good["seconds_stitch"]
    assert json.loads(good["params_json"])["steps"] == 2
    probe = _ffprobe(good["output_uri"])
    assert int(probe["video"]["nb_read_frames"]) == FRAMES and probe["video"]["r_frame_rate"] == FPS
    assert "audio" in probe  # the source's audio track is copied
    assert int(_ffprobe(good["preview_uri"])["video"]["nb_read_frames"]) == FRAMES
    assert "corrupt.mp4" in rows["corrupt"]["error"] and rows["corrupt"]["status"] == "failed"
    assert "nowhere.mp4" in rows["missing"]["error"]
    assert "no person" in rows["no-person"]["error"]
    assert not any((out / "videos").glob("*.tmp-*"))
    # metrics: counted from the rows, served over HTTP
    assert metrics.value("mf_requests_total", {"status": "failed"}) == 3
    assert metrics.value("mf_windows_total", {"status": "succeeded"}) == 2
    assert metrics.value("mf_actor_busy_seconds_total", {"stage": "edit"}) > 0
    assert metrics.value("mf_actor_busy_seconds_total", {"stage": "prepare"}) > 0
    assert metrics.value("mf_frames_total") == FRAMES
    for name in ('mf_requests_total{status="succeeded"} 1.0', "mf_stage_seconds_bucket", "mf_queue_depth",
                 "mf_frames_per_second", 'mf_edit_seconds_count'):
        assert name in exposed


def test_rerun_skips_finished_work_and_changes_nothing(reference, inputs):
    out, _, _, _ = reference
    files = {p: p.stat().st_mtime_ns for p in [*_windows(out).values(), *(out / "videos").iterdir()]}
    summary = run_pipeline(RunConfig(manifest=str(inputs / "mixed.csv"), out=str(out), processing=KEEP))
    assert summary.counts == {"skipped": 1, "failed": 3}
    assert summary.windows.get("succeeded", 0) == 0  # nothing edited again
    assert {p: p.stat().st_mtime_ns for p in files} == files
    rows = {r["request_id"]: r for r in read_results(str(out / "results.parquet"))}
    assert rows["good"]["status"] == "skipped" and rows["good"]["frames"] == FRAMES
    assert rows["good"]["model"] == "tiny"


def test_windows_are_deleted_after_commit_and_bad_ids_fail_alone(ray_local, inputs, tmp_path):
    good = read_manifest(str(inputs / "good.jsonl"), str(tmp_path)).requests[0]
    rows = [{"request_id": "good", "source": good.source, "driving": good.driving, **PARAMS},
            {"request_id": "../../escaped", "source": good.source, "driving": good.driving, **PARAMS}]
    write_manifest(rows, str(tmp_path / "m.jsonl"))
    out = tmp_path / "deep" / "out"
    summary = run_pipeline(RunConfig(manifest=str(tmp_path / "m.jsonl"), out=str(out)))
    assert summary.counts == {"succeeded": 1, "failed": 1}
    res = {r["manifest_row"]: r for r in read_results(str(out / "results.parquet"))}
    assert res[1]["status"] == "succeeded" and res[1]["bytes_written"] == (out / "videos" / "good.mp4").stat().st_size
    assert summary.bytes_written == res[1]["bytes_written"]
    assert res[2]["status"] == "failed" and "request_id" in res[2]["error"]
    assert not (out / "windows" / "good").exists() and not _windows(out)  # intermediate windows are gone
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # nothing outside --out


def test_unwritable_out_fails_every_row_and_still_writes_the_manifest(ray_local, inputs, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out"
    summary = run_pipeline(RunConfig(manifest=str(inputs / "mixed.csv"), out=str(out)))
    assert summary.counts == {"failed": 4}
    assert summary.results_uri != str(out / "results.parquet") and os.path.exists(summary.results_uri)
    rows = read_results(summary.results_uri)
    assert len(rows) == 4 and all(r["status"] == "failed" for r in rows)
    good = next(r for r in rows if r["request_id"] == "good")
    assert good["error"].startswith(f"output: cannot write to {out}")


def dies_once(marker: str) -> type:
    """An edit stage whose actor process exits on its first window (recorded in ``marker``), like a crashed GPU
    worker. Made inside a function, so Ray ships the class by value to its workers."""
    from pipelines.batch.ray_stages import EditStage

    class DiesOnce(EditStage):
        def edit(self, task):
            if not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write(str(os.getpid()))
                os._exit(1)
            return super().edit(task)

    return DiesOnce


def test_dead_edit_actor_is_replaced_and_its_window_retried(ray_local, reference, inputs, tmp_path):
    ref_out = reference[0]
    marker = tmp_path / "died"
    out = tmp_path / "out"
    cfg = RunConfig(manifest=str(inputs / "good.jsonl"), out=str(out), processing=KEEP)
    summary = run_pipeline(cfg, edit_stage=dies_once(str(marker)))
    assert marker.exists(), "the injected fault did not fire"
    assert summary.counts == {"succeeded": 1} and summary.windows == {"succeeded": 2}
    assert not list(out.rglob("*.attempts-*"))
    # deterministic ids and frame-indexed noise: the same windows and the same video as the uninterrupted run
    ref = _windows(ref_out)
    assert set(_windows(out)) == set(ref)
    for name, p in _windows(out).items():
        np.testing.assert_array_equal(np.load(p)["frames"], np.load(ref[name])["frames"])
    assert _sha(str(out / "videos" / "good.mp4")) == _sha(str(ref_out / "videos" / "good.mp4"))


def test_killed_run_resumes_without_redoing_work(ray_local, reference, inputs, tmp_path):
    ref_out = reference[0]
    out = tmp_path / "out"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "jobs.cli", "retarget", str(inputs / "two.parquet"), "--out", str(out),
           "--address", ray_local.get_runtime_context().gcs_address, "--no-progress", "--keep-windows"]
    log = open(tmp_path / "run1.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "windows").exists() or not _windows(out):
        assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no window was written in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.parquet").exists(), "the run finished before it was killed"
    before = {p: p.stat().st_mtime_ns for p in _windows(out).values()}
    assert 1 <= len(before) < 4
    run2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
    assert "succeeded 2" in run2.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished windows were not edited again
    assert len(_windows(out)) == 4
    rows = {r["request_id"]: r for r in read_results(str(out / "results.parquet"))}
    assert rows["good"]["status"] == rows["good-2"]["status"] == "succeeded"
    assert _sha(str(out / "videos" / "good.mp4")) == _sha(str(ref_out / "videos" / "good.mp4"))
    ref = _windows(ref_out)
    for name in ref:
        np.testing.assert_array_equal(np.load(_windows(out)[name])["frames"], np.load(ref[name])["frames"])


def test_single_request_in_process_on_memory_filesystem(reference, inputs):
    """``pipelines.batch.single.edit_request``: the same stage code without Ray, any fsspec output (memory:// here)."""
    import mf_model
    from pipelines.batch.single import edit_request

    ref_out = reference[0]
    out = "memory://mf-single-test"
    cfg = RunConfig(manifest=str(inputs / "good.jsonl"), out=out, processing=KEEP)
    req = read_manifest(cfg.manifest, out).requests[0]
    model = mf_model.load_model(None, preset_name="tiny")
    seen = []
    row = edit_request(req, cfg, model, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert row.status == "succeeded", row.error
    assert row.output_uri.startswith("memory://") and storage.exists(row.output_uri)
    assert row.frames == FRAMES and row.fps_rational == FPS and row.windows == 2
    assert seen[-1] == ("request", 1, 1) and ("window", 2, 2) in seen
    ref = _windows(ref_out)
    names = storage.listdir(storage.join(out, "windows", "good"))
    assert sorted(names) == sorted(ref)
    for name in names:
        got = storage.read_npz(storage.join(out, "windows", "good", name))["frames"]
        np.testing.assert_array_equal(got, np.load(ref[name])["frames"])
    again = edit_request(req, cfg, model)
    assert again.status == "skipped"
    with pytest.raises(ValueError, match="memory://"):
        run_pipeline(cfg)


@pytest.mark.parametrize("driving, probes", [("waving.parquet", 1), ("person.mp4", 1)])  # same file: one probe
def test_plan_probes_each_input_video_once(inputs, tmp_path, monkeypatch, driving, probes):
    """Counted by wrapping the real probe (each call goes through); the per-process probe cache starts empty."""
    from pipelines.batch.identity import request_identity
    from pipelines.batch.requests import parse_row
    from pipelines.batch.stages import conditioner_for, plan_request
    from pipelines.media import video

    calls = []
    real = video.probe_media
    monkeypatch.setattr(video, "probe_media", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(video, "_PROBES", video._ProbeCache())
    cfg = RunConfig(manifest="", out=str(tmp_path / "out"))
    req = parse_row({"source": str(inputs / "person.mp4"), "driving": str(inputs / driving), **PARAMS}, 1, cfg.out)
    tasks = plan_request(req, request_identity(req, "m", cfg.processing), cfg, conditioner_for(cfg))
    assert not tasks[0].plan_failed, tasks[0].error
    assert len(tasks) == 2 and tasks[0].plan.has_audio
    assert len(calls) == probes, calls



def test_a_phone_clip_comes_back_upright_square_pixelled_in_sync_and_says_so(inputs, tmp_path, fixture_cases):
    """A source as a phone writes it — variable rate, rotation in the display matrix, non-square pixels, audio —
    edited in-process: the output has the source's display geometry, the resampled rate and its audio, and the
    result row records what was done."""
    from PIL import Image

    import mf_model
    from pipelines.batch.requests import parse_row
    from pipelines.batch.single import edit_request
    from pipelines.media.encode import probe_output

    folder = fixture_cases / "case-1" / "source_images"
    frames = np.stack([np.asarray(Image.open(folder / f"frame_{k}.jpg").convert("RGB").resize((192, 192)))
                       for k in range(FRAMES)])
    coded, phone = tmp_path / "coded.mp4", tmp_path / "phone.mov"
    # stored lying down, squeezed to 144 px wide: the display matrix and the 4:3 pixels undo both; 3 frames dropped
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "192x192", "-r", FPS,
                    "-i", "-", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-vf",
                    "transpose=clock,scale=144:192,setsar=4/3,select='not(eq(n,3)+eq(n,4)+eq(n,8))'", "-fps_mode",
                    "passthrough", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(coded)],
                   input=frames.tobytes(), check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(coded), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(phone)], check=True)
    cfg = RunConfig(manifest="", out=str(tmp_path / "out"))
    req = parse_row({"source": str(phone), "driving": str(inputs / "waving.parquet"), **PARAMS, "window": 12,
                     "overlap": 0}, 1, cfg.out)
    row = edit_request(req, cfg, mf_model.load_model(None, preset_name="tiny"))
    assert row.status == "succeeded", row.error
    assert (row.resampled, row.rotation, row.rescaled, row.tone_mapped) == (True, 270, True, False)
    assert (row.width, row.height, row.fps_rational, row.frames) == (192, 192, FPS, FRAMES)
    facts = probe_output(row.output_uri)
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (192, 192, FRAMES, FPS)
    assert facts["has_audio"] and abs(facts["audio_duration"] - FRAMES * 1001 / 30000) < 0.05, facts
