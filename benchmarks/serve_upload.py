"""Upload throughput of the edit endpoint through Ray Serve's proxy with mf's HTTP guard (h11 with limits,
:mod:`jobs.serve.http_guard`) and without it (Uvicorn's default, httptools): MB/s of one multipart POST of
``--mb`` MiB to ``mf serve`` on 127.0.0.1, from the first byte sent to the answer (422: the upload is no video, so
the time is the body's path through the proxy, the API's body guard and the form parser, not an edit).

    python benchmarks/serve_upload.py [--mb 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "b" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp: Path, guard: bool) -> tuple[subprocess.Popen, str, str]:
    port, ray_tmp = _free_port(), tempfile.mkdtemp(prefix="mfbu", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MF_SERVE", "MF_HTTP"))}
    env.update(MF_SERVE_TOKENS=TOKEN, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO),
               RAY_AUTH_MODE="disabled", RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=(
                   "jobs.serve.http_guard:proxy_middlewares" if guard else ""))
    cmd = [sys.executable, "-c", "import sys; from jobs.cli import main; sys.exit(main(sys.argv[1:]))", "serve",
           "--port", str(port), "--root", str(tmp / "root")]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(480):
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base, ray_tmp
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("mf serve did not come up")


def _upload(base: str, data: bytes) -> float:
    t0 = time.perf_counter()
    r = requests.post(base + "/v1/edits", headers={"Authorization": f"Bearer {TOKEN}"}, data={"steps": "1"},
                      files={"source": ("source.mp4", data), "driving": ("driving.mp4", b"\x00" * 1024)}, timeout=600)
    took = time.perf_counter() - t0
    assert r.status_code == 422, (r.status_code, r.text[:200])
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = os.urandom(args.mb * 2**20)
    for guard in (False, True):
        tmp = Path(tempfile.mkdtemp(prefix="mfbu"))
        proc, base, ray_tmp = _serve(tmp, guard)
        try:
            _upload(base, data[: 2**20])  # warm-up
            times = sorted(_upload(base, data) for _ in range(args.repeats))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shutil.rmtree(ray_tmp, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
        label = "guard (h11 + limits)" if guard else "no guard (httptools)"
        print(f"{label:>22}: {args.mb} MiB upload, best {args.mb / times[0]:.0f} MiB/s, median "
              f"{args.mb / times[len(times) // 2]:.0f} MiB/s over {args.repeats}")


if __name__ == "__main__":
    main()
