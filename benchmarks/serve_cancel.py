"""Cancel-to-idle latency of the Serve endpoint: from a DELETE's 204, for an edit cancelled mid-window, until the
model replica starts the next edit (queued behind it).

Starts a local Ray and the Serve app (the tiny model unless ``--weights``), uploads a long edit (``--steps`` sampler
steps of one ``--window``-frame window at ``--size`` px), waits until it has run ``--delay`` seconds, queues a
one-step edit behind it, deletes the long one and reads the next edit's ``started_at``. Also prints the seconds of
one sampler step (a 21-step edit against a one-step one), what the latency should stay near (plus the 0.2 s the
worker caches its tombstone check).

    python benchmarks/serve_cancel.py [--repeats 3] [--steps 400] [--size 64] [--window 8] [--delay 2]
                                      [--weights DIR --gpus 1]
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pipeline_common import make_source, make_track, start_ray  # noqa: E402

TOKEN = "bench-" + "t" * 26
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(base: str, edit_id: str) -> dict:
    return requests.get(f"{base}/v1/edits/{edit_id}", headers=AUTH, timeout=30).json()


def _post(base: str, src: Path, drv: Path, **params) -> str:
    with open(src, "rb") as s, open(drv, "rb") as d:
        r = requests.post(base + "/v1/edits", headers=AUTH, data={k: str(v) for k, v in params.items()},
                          files={"source": ("s.mp4", s), "driving": ("d.parquet", d)}, timeout=120)
    r.raise_for_status()
    return r.json()["id"]


def _until(base: str, edit_id: str, states: tuple[str, ...], timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while (st := _state(base, edit_id)).get("state") not in states:
        if time.time() > deadline:
            raise TimeoutError(f"{edit_id}: {st}")
        time.sleep(0.05)
    return st


def _edit_seconds(base: str, src: Path, drv: Path, **params) -> float:
    st = _until(base, _post(base, src, drv, **params), ("succeeded", "failed"))
    return st["finished_at"] - st["started_at"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--delay", type=float, default=2.0)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--gpus", type=float, default=0.0)
    args = ap.parse_args(argv)
    from ray import serve

    from jobs.serve import ServeConfig, build_app

    work = Path(tempfile.mkdtemp(prefix="mf-bench-cancel-"))
    src, drv = work / "source.mp4", work / "driving.parquet"
    make_track(drv, make_source(src, args.window), args.window)
    start_ray()
    cfg = ServeConfig(root=str(work / "root"), tokens=(TOKEN,), weights=args.weights, gpus_per_replica=args.gpus,
                      max_steps=args.steps, max_size=max(args.size, 64), max_cost=1e12, queue_size=4)
    port = _port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="mf", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    edit = {"window": args.window, "overlap": 0, "size": args.size}
    _edit_seconds(base, src, drv, steps=1, **edit)  # warm-up
    step_s = (_edit_seconds(base, src, drv, steps=21, **edit) - _edit_seconds(base, src, drv, steps=1, **edit)) / 20
    latencies = []
    for k in range(args.repeats):
        long_id = _post(base, src, drv, steps=args.steps, **edit)
        _until(base, long_id, ("running",))
        next_id = _post(base, src, drv, steps=1, **edit)
        time.sleep(args.delay)
        assert requests.delete(f"{base}/v1/edits/{long_id}", headers=AUTH, timeout=30).status_code == 204
        deleted_at = time.time()
        st = _until(base, next_id, ("running", "succeeded", "failed"))
        latencies.append(st["started_at"] - deleted_at)
        left = list((work / "root" / "edits").rglob(f"{long_id}*"))
        print(f"repeat {k + 1}: cancel-to-idle {latencies[-1]:.3f} s; files left of the deleted edit: {len(left)}")
        _until(base, next_id, ("succeeded", "failed"))
    print(f"cancel-to-idle: median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s "
          f"(one sampler step ≈ {step_s:.3f} s; size {args.size}, window {args.window})")
    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
