"""What a person sees running `mf`: a quiet console (no native chatter, no Ray internals), a log file under the
output folder that holds the rest, and `-v` bringing our INFO lines back."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import cli, console

REPO = Path(__file__).resolve().parents[2]
NATIVE_MARKERS = ("inference_feedback_manager", "landmark_projection_calculator", "absl::InitializeLog",
                  "core_worker.cc", "XNNPACK")
RAY_INTERNALS = ("Started a local Ray instance", "Execution plan of Dataset", "Progress bars disabled")


def _mf(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    for key in ("RAY_ADDRESS", "GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):  # a local Ray; the CLI's own settings
        env.pop(key, None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, time.monotonic() - t0


def test_demo_console_is_quiet_and_the_log_file_holds_the_rest(tmp_path):
    out = tmp_path / "demo"
    proc, _ = _mf("demo", "--out", str(out), "--frames", "16")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    for marker in NATIVE_MARKERS + RAY_INTERNALS:
        assert marker not in text, f"{marker!r} reached the console:\n{text}"
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) <= 15, text
    assert f"output:   {out}/videos/demo-waving.mp4 (16 frames" in proc.stdout
    assert f"manifest: {out}/results.parquet" in proc.stdout
    assert "retarget: requests succeeded 1" in proc.stdout
    logs = sorted((out / "logs").glob("mf-demo-*.log"))
    assert len(logs) == 1 and f"log: {logs[0]}" in proc.stderr
    held = logs[0].read_text()
    assert "INFO ray._private.worker: Started a local Ray instance" in held  # Ray's python loggers, at INFO
    assert "INFO ray.data." in held and "Execution plan of Dataset" in held
    assert "INFO pipelines.batch.config: cluster has" in held  # our loggers at INFO
    assert "inference_feedback_manager" in held  # the driver's native output (MediaPipe on the demo portrait)

    # -v (after the command): our INFO lines and Ray's come back on the console; a re-run skips the finished request
    proc, _ = _mf("demo", "--out", str(out), "--frames", "16", "-v")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "INFO pipelines.batch.config: cluster has" in text
    assert "Started a local Ray instance" in text
    assert "retarget: requests skipped 1" in proc.stdout
    assert len(sorted((out / "logs").glob("mf-demo-*.log"))) in (1, 2)  # same second: appended to the same file


def test_log_file_path(tmp_path):
    local = console.log_file_path("retarget", str(tmp_path / "run"))
    assert Path(local).parent == tmp_path / "run" / "logs" and Path(local).name.startswith("mf-retarget-")
    assert Path(console.log_file_path("demo", f"file://{tmp_path}/d")).parent == tmp_path / "d" / "logs"
    remote = console.log_file_path("retarget", "s3://bucket/run-7")
    assert Path(remote).parent.name == "mf-logs" and not (tmp_path / "bucket").exists()
    # prepare's --out is not an output root
    assert Path(console.log_file_path("prepare", str(tmp_path / "layout"))).parent.name == "mf-logs"


@pytest.mark.parametrize("name,level,msg,shown", [
    ("mf.demo", logging.INFO, "inputs: ...", True),
    ("pipelines.batch.config", logging.INFO, "cluster has 2 CPUs", False),
    ("ray._private.worker", logging.INFO, "Started a local Ray instance.", False),
    ("ray.data._internal.progress", logging.WARNING, "Progress bars disabled. To enable, ...", False),
    ("ray.data._internal.execution", logging.WARNING, "something real", True),
    ("py.warnings", logging.WARNING, "FutureWarning: ...", False),
    ("pipelines.batch.stages", logging.ERROR, "window failed", True),
])
def test_console_filter(name, level, msg, shown):
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    assert console._ConsoleFilter(0).filter(record) is shown
    assert console._ConsoleFilter(1).filter(record) is True


def test_verbose_counts_before_and_after_the_command():
    parser = cli.build_parser()
    for argv, want in ((["demo"], 0), (["-v", "demo"], 1), (["demo", "-vv"], 2), (["-v", "demo", "-v"], 2),
                       (["dataset", "run", "spec.yaml", "-v"], 1)):
        args = parser.parse_args(argv)
        assert args.verbose + getattr(args, "verbose_after", 0) == want, argv
