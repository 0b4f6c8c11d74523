"""The `mf` command as a user runs it: every sub-command is registered and answers --help (no import is skipped)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.commands import COMMAND_MODULES

COMMANDS = [m.rsplit(".", 1)[1] for m in COMMAND_MODULES]


def _mf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=120)


def test_every_command_module_exists_and_is_listed():
    out = _mf("--help")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and line.strip()]
    assert set(COMMANDS) <= set(listed) and "jobs" in listed


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    out = _mf(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: mf {command}")


def test_unknown_command_and_missing_arguments_exit_2():
    assert _mf("nope").returncode == 2
    out = _mf("retarget")
    assert out.returncode == 2 and "manifest" in out.stderr


def test_retarget_preflight_failure_exits_2_with_the_message(tmp_path):
    """`mf retarget` on its own local Ray: an --out no worker can write (a folder under a regular file) stops the run
    before any work, exit status 2, the message naming the URI and the error; a missing input does not (it is its
    row's matter, tests/jobs/test_preflight.py)."""
    from pipelines.batch.requests import write_manifest

    (tmp_path / "m.parquet").write_bytes(b"x")
    (tmp_path / "file").write_text("a file, not a folder")
    manifest = tmp_path / "requests.csv"
    write_manifest([{"source": "gone.mp4", "driving": "m.parquet", "steps": 2, "size": 96}], str(manifest))
    blocked = tmp_path / "file" / "out"
    out = _mf("retarget", str(manifest), "--out", str(blocked), "--num-cpus", "1", "--no-progress")
    assert out.returncode == 2, out.stderr
    assert "pre-flight failed, nothing was run" in out.stderr
    assert f"{blocked}: cannot write a file under it: " in out.stderr
    assert "gone.mp4" not in out.stderr
