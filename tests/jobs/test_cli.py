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
