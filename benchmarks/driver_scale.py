"""The driver's start against the manifest's size, on a local S3 server (moto): time to the first edited window,
driver peak RSS, and the re-run's skip rate when every request is done.

Each manifest size runs in a fresh process with its own local Ray and its own moto server (``python -m
moto.server`` on 127.0.0.1, as tests/jobs/test_s3.py starts it). All requests edit the same small source and
waving pose track (cheap requests: one window of 8 frames at 64², 1 step, tiny model), with distinct ids and
seeds, so their outputs are distinct. "first": the run is stopped at its first edited window (the progress
callback); "skip": every request's done marker and output are written first (with the content key the run will
compute), then the whole run is timed: it must skip all of them.

    python benchmarks/driver_scale.py [--sizes 1000,10000] [--modes first,skip]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _pipeline_common import make_source, make_track, start_ray  # noqa: E402

BUCKET = "mf-scale"
PARAMS = {"steps": 1, "size": 64, "window": 8, "overlap": 2, "frame_end": 8}


class FirstWindow(Exception):
    """Raised by the progress callback at the first edited window: the run stops there."""


def _moto() -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    return proc, env


def _inputs(work: Path, n: int) -> str:
    """Source, pose track and an n-row manifest in the bucket; returns the manifest URI."""
    import s3fs

    from pipelines.batch.requests import write_manifest

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.call_s3("create_bucket", Bucket=BUCKET)
    src, drv = work / "source.mp4", work / "driving.parquet"
    make_track(drv, make_source(src, 24, size=(64, 64)), 24)
    fs.put(str(src), f"{BUCKET}/in/source.mp4")
    fs.put(str(drv), f"{BUCKET}/in/driving.parquet")
    rows = [{"request_id": f"r{k}", "source": "source.mp4", "driving": "driving.parquet", "seed": k, **PARAMS}
            for k in range(n)]
    write_manifest(rows, str(work / "requests.parquet"))
    fs.put(str(work / "requests.parquet"), f"{BUCKET}/in/requests.parquet")
    return f"s3://{BUCKET}/in/requests.parquet"


def _mark_all_done(cfg) -> float:
    """Every request's done marker (under the content key the run computes) and an output file: seconds taken."""
    from pipelines.batch.identity import model_key, request_identity
    from pipelines.batch.requests import read_manifest
    from pipelines.media import storage

    t0 = time.perf_counter()
    man, model = read_manifest(cfg.manifest, cfg.out), model_key(cfg.model)

    def one(req):
        ident = request_identity(req, model, cfg.processing)
        storage.atomic_write_bytes(req.output, b"not a real video")
        storage.atomic_write_text(cfg.marker_uri(req.request_id), json.dumps(
            {"request_id": req.request_id, "status": "succeeded", "content_key": ident.key, "finished_at": None}))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, man.requests))
    return time.perf_counter() - t0


def one_size(n: int, mode: str) -> dict:
    from pipelines.batch.config import RunConfig, RunOptions
    from pipelines.batch.driver import run_pipeline

    proc, env = _moto()
    os.environ.update(env)  # before Ray starts: its workers inherit the server's address and credentials
    try:
        with tempfile.TemporaryDirectory() as work:
            manifest = _inputs(Path(work), n)
            cfg = RunConfig.build(RunOptions(), manifest=manifest, out=f"s3://{BUCKET}/out")
            marking = _mark_all_done(cfg) if mode == "skip" else None
            start_ray(2)
            seen = {}

            def progress(kind, done, total):
                if kind == "window" and done >= 1:
                    seen["first"] = time.perf_counter() - t0
                    raise FirstWindow

            t0 = time.perf_counter()
            try:
                summary = run_pipeline(cfg, progress=progress if mode == "first" else None)
            except FirstWindow:
                summary = None
            wall = time.perf_counter() - t0
    finally:
        proc.terminate()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"requests": n, "mode": mode, "wall_s": round(wall, 1), "driver_peak_rss_mib": round(rss, 1)}
    if mode == "first":
        out["first_window_s"] = round(seen.get("first", float("nan")), 1)
    else:
        out.update(skipped=summary.counts.get("skipped", 0), skip_rate_per_s=round(n / wall, 1),
                   marking_s=round(marking, 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--modes", default="first,skip")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # n:mode, in the child process
    args = ap.parse_args(argv)
    if args.one:
        n, mode = args.one.split(":")
        print(json.dumps(one_size(int(n), mode)), flush=True)
        return 0
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            got = subprocess.run([sys.executable, __file__, "--one", f"{n}:{mode}"], capture_output=True,
                                 text=True)
            line = [x for x in got.stdout.splitlines() if x.startswith("{")]
            if got.returncode or not line:
                print(f"{n} {mode}: failed (rc {got.returncode}): {got.stderr[-1500:]}")
                continue
            rows.append(json.loads(line[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'requests':>9} {'mode':>5} {'first window s':>15} {'skip rate /s':>13} {'driver RSS MiB':>15} "
          f"{'wall s':>7}")
    for r in rows:
        print(f"{r['requests']:>9} {r['mode']:>5} {r.get('first_window_s', ''):>15} {r.get('skip_rate_per_s', ''):>13} "
              f"{r['driver_peak_rss_mib']:>15} {r['wall_s']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
