"""Local network helpers for the tests: free ports on 127.0.0.1, the Serve app started over real HTTP in the tests'
Ray, and ``mf serve`` started as its own process (its own local Ray), the way a user starts it."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(cfg, port: int, attempts: int = 150) -> str:
    """Deploy ``jobs.serve.build_app(cfg)`` on ``port`` and wait until ``/healthz`` answers; the base URL."""
    from ray import serve

    from jobs.serve import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="mf", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    for _ in range(attempts):
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    return base


def start_mf_serve(tmp_path: Path, port: int, ray_tmp: str, token: str, root: Path | None = None,
                   **env_vars: str) -> subprocess.Popen:
    """``mf serve --port port`` in its own session, with a fresh HOME and TMPDIR under ``tmp_path``, its storage
    root ``root`` (default ``tmp_path/root``) and none of the tests' RAY_AUTH*/RAY_ADDRESS/MF_SERVE*/MF_HTTP*/
    Serve-proxy variables (``env_vars`` are added)."""
    home = tmp_path / "home"
    home.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    drop = ("RAY_AUTH", "RAY_ADDRESS", "MF_SERVE", "MF_HTTP", "RAY_SERVE_HTTP_PROXY_CALLBACK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HOME=str(home), RAY_TMPDIR=ray_tmp, TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(REPO),
               MF_SERVE_TOKENS=token, RAY_USAGE_STATS_ENABLED="0", **env_vars)
    cmd = [sys.executable, "-c", "import sys; from jobs.cli import main; sys.exit(main(sys.argv[1:]))", "serve",
           "--port", str(port), "--root", str(root or tmp_path / "root")]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            if requests.get(base + "/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or the proxy waits for the app
            pass
        time.sleep(0.5)
    raise AssertionError("mf serve did not come up")


@contextlib.contextmanager
def mf_serve(tmp_path: Path, token: str, root: Path | None = None,
             **env_vars: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A running ``mf serve`` (see :func:`start_mf_serve`): yields the process and its base URL; killed with its
    whole process group at the end, whatever the test did."""
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="mfsv", dir="/tmp")  # short: Ray's socket paths
    proc = start_mf_serve(tmp_path, port, ray_tmp, token, root, **env_vars)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base)
        yield proc, base
    finally:
        stop_tree(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc``, its process group and every process under it (Ray's workers included), and wait for them."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
        proc.wait(timeout=30)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(tree, timeout=30)
