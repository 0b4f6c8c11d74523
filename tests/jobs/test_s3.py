"""`mf retarget` against real object storage: a local S3-compatible server (moto's standalone server on 127.0.0.1)
reached through s3fs, with the manifest, the inputs and `--out` all on ``s3://``.

The endpoint and credentials reach `mf` (and its Ray workers, which inherit the environment) only through the
standard AWS environment variables, as documented in docs/operations.md ("Object storage"). The second run of the
same command must skip every request and rewrite no video.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines.media.video import read_frames
from tests.jobs.media_helpers import write_clip
from tests.jobs.net_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
BUCKET = "mf-s3-test"
FRAMES = 12
PARAMS = {"steps": 2, "size": 96, "window": 8, "overlap": 4, "seed": 7}  # 2 windows per request

pytestmark = [pytest.mark.shared, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]



@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (own process, free port) and the AWS variables that point at it."""
    port = free_port()  # s3fs and moto[server] are pinned dependencies (requirements.lock): never skipped
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{endpoint}/moto-api/",
                                                                                      timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (rc={proc.poll()}): "
                                       f"{log_path.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.2)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "mf-test-key",
            "AWS_SECRET_ACCESS_KEY": "mf-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",  # a proxy must not see the server
        }
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def s3(s3_env):
    """An s3fs filesystem on the test server, configured explicitly (this process's environment is left alone)."""
    import s3fs

    return s3fs.S3FileSystem(key=s3_env["AWS_ACCESS_KEY_ID"], secret=s3_env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                             client_kwargs={"region_name": s3_env["AWS_DEFAULT_REGION"]},
                             skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture(scope="module")
def s3_inputs(s3, fixture_cases, tmp_path_factory):
    """Two real-person clips and a waving pose track in ``s3://BUCKET/in/``, and a JSONL manifest there naming them
    by relative path (one row) and by absolute ``s3://`` URI (the other)."""
    from jobs.commands.demo import waving_track
    from pipelines.conditioning.poses.keypoints import write_pose_track

    d = tmp_path_factory.mktemp("s3in")
    silent = write_clip(fixture_cases, "s1", d / "silent.mp4", frames=FRAMES, side=96)
    clip = d / "clip.mp4"  # with an audio track, which the output must keep (probed through a signed URL)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=3", "-c:v", "copy", "-c:a", "aac", "-shortest", str(clip)],
                   check=True, stdin=subprocess.DEVNULL)
    write_clip(fixture_cases, "s2", d / "other.mp4", frames=FRAMES, side=96)
    first = read_frames(str(clip), [0])[0]
    write_pose_track(waving_track(first, FRAMES, 8), str(d / "waving.parquet"))
    rows = [
        {"request_id": "relative", "source": "clip.mp4", "driving": "waving.parquet", "preview": True, **PARAMS},
        {"request_id": "absolute", "source": f"s3://{BUCKET}/in/other.mp4",
         "driving": f"s3://{BUCKET}/in/waving.parquet", **PARAMS},
    ]
    (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _create_bucket(s3)
    for name in ("clip.mp4", "other.mp4", "waving.parquet", "requests.jsonl"):
        s3.put_file(str(d / name), f"{BUCKET}/in/{name}")
    return f"s3://{BUCKET}/in/requests.jsonl"


def _create_bucket(s3) -> None:
    # s3fs's mkdir sends a LocationConstraint even for us-east-1, which S3 (and moto) refuse: ask S3 directly
    s3.call_s3("create_bucket", Bucket=BUCKET)
    s3.invalidate_cache()


def _retarget(manifest: str, out: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    run_env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "OMP_NUM_THREADS": "1"}
    # nothing inherited may point elsewhere: only the AWS variables above configure the endpoint
    for key in ("RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        run_env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "jobs.cli", "retarget", manifest, "--out", out, "--no-progress",
                           "--num-cpus", "2"], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=600)


def _results(s3, out: str) -> dict[str, dict]:
    import io

    import pyarrow.parquet as pq

    with s3.open(f"{out}/results.parquet", "rb") as f:
        rows = pq.read_table(io.BytesIO(f.read()), use_threads=False).to_pylist()
    return {r["request_id"]: r for r in rows}


def _stamps(s3, prefix: str) -> dict[str, tuple[str, object]]:
    s3.invalidate_cache()
    return {k: (v["ETag"], v["LastModified"]) for k, v in s3.find(prefix, detail=True).items()}


def _ffprobe(path: Path) -> dict[str, dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,nb_read_frames,width,height", "-of", "json", str(path)],
                         capture_output=True, check=True, text=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_retarget_on_s3_then_rerun_skips_everything(s3, s3_env, s3_inputs, tmp_path):
    out = f"s3://{BUCKET}/out"
    first = _retarget(s3_inputs, out, s3_env)
    rows = _results(s3, out) if s3.exists(f"{out}/results.parquet") else {}
    assert first.returncode == 0, (f"{ {k: r['error'] for k, r in rows.items()} }\n"
                                   + first.stdout[-3000:] + first.stderr[-6000:])
    assert set(rows) == {"relative", "absolute"}
    assert {r["status"] for r in rows.values()} == {"succeeded"}, {k: r["error"] for k, r in rows.items()}
    assert rows["relative"]["source"] == f"s3://{BUCKET}/in/clip.mp4"
    assert rows["relative"]["driving"] == f"s3://{BUCKET}/in/waving.parquet"
    outputs = {rows["relative"]["output_uri"], rows["absolute"]["output_uri"], rows["relative"]["preview_uri"]}
    assert all(u.startswith(f"s3://{BUCKET}/out/") for u in outputs)
    assert rows["relative"]["output_uri"] == f"s3://{BUCKET}/out/videos/relative.mp4"
    for r in rows.values():
        assert r["frames"] == FRAMES and r["windows"] == 2
    for uri in outputs:
        local = tmp_path / uri.split("/out/", 1)[1].replace("/", "-")
        s3.get_file(uri, str(local))
        streams = _ffprobe(local)
        assert int(streams["video"]["nb_read_frames"]) == FRAMES, uri
        if "/videos/" in uri:
            assert (streams["video"]["width"], streams["video"]["height"]) == (96, 96), uri  # source resolution
    # the source with audio keeps it; the silent one stays silent
    assert "audio" in _ffprobe(tmp_path / "videos-relative.mp4")
    assert "audio" not in _ffprobe(tmp_path / "videos-absolute.mp4")
    leftovers = [k for k in s3.find(f"{BUCKET}/out") if ".tmp-" in k or ".mf-write-check-" in k]
    assert not leftovers
    before = _stamps(s3, f"{BUCKET}/out/videos") | _stamps(s3, f"{BUCKET}/out/previews")
    assert len(before) == 3

    second = _retarget(s3_inputs, out, s3_env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]
    rows2 = _results(s3, out)
    assert set(rows2) == {"relative", "absolute"}
    assert {r["status"] for r in rows2.values()} == {"skipped"}, {k: r["error"] for k, r in rows2.items()}
    assert all(rows2[k]["output_uri"] == rows[k]["output_uri"] for k in rows)
    after = _stamps(s3, f"{BUCKET}/out/videos") | _stamps(s3, f"{BUCKET}/out/previews")
    assert after == before  # not one video or preview rewritten (same ETag and LastModified)


def test_aws_endpoint_variable_reaches_s3fs(s3_env, s3_inputs):
    """What `mf` relies on: a bare ``fsspec.core.url_to_fs("s3://...")`` (no storage options) finds the server
    through ``AWS_ENDPOINT_URL`` alone."""
    code = f"import fsspec; fs, p = fsspec.core.url_to_fs({s3_inputs!r}); print(fs.info(p)['size'])"
    run_env = {**os.environ, **s3_env}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=run_env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) > 0


def test_remote_video_is_fetched_once_and_again_when_it_changes(s3, s3_env, s3_inputs, monkeypatch):
    """The decoder needs a seekable local file: a remote video is downloaded once per process into a small cache
    keyed by URI and ETag (a rewritten object is fetched again), and the probe reads that copy, so audio is seen on S3
    too."""
    import s3fs

    from pipelines.media import video

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(video, "REMOTE_CACHE_FILES", 2)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        clip = f"s3://{BUCKET}/in/clip.mp4"
        info = video.probe_video(clip)
        assert (info.frames, info.width, info.has_audio) == (FRAMES, 96, True)
        first = video.local_video(clip)
        assert video.local_video(clip) == first and os.path.isfile(first)
        changed = f"s3://{BUCKET}/cache/changed.mp4"
        s3.copy(f"{BUCKET}/in/clip.mp4", changed)
        a = video.read_frames(changed, [0])
        s3.copy(f"{BUCKET}/in/other.mp4", changed)  # new content, new ETag: fetched again
        b = video.read_frames(changed, [0])
        assert np.abs(a.astype(int) - b).mean() > 5
        assert not video.probe_video(changed).has_audio
        assert not os.path.exists(first)  # evicted: at most REMOTE_CACHE_FILES copies are kept
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
