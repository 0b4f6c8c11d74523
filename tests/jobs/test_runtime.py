"""The Ray an `mf` command starts on its own: token authentication unless the user says otherwise, so another process
without the token cannot use it (its own process: the session's Ray stays apart)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LOCAL = """
import json, os, subprocess, sys
from jobs.runtime import connect_ray
how = connect_ray(num_cpus=1, object_store_memory=128 * 1024 * 1024)
import ray
gcs = ray.get_runtime_context().gcs_address
probe = "import ray; ray.init(address=%r); print(ray.get(ray.remote(lambda: 41).remote()) + 1)" % gcs
env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
outsider = subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=120)
insider = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True,
                         timeout=120)
print(json.dumps({"how": how, "mode": os.environ.get("RAY_AUTH_MODE"),
                  "outsider_rc": outsider.returncode, "insider": insider.stdout.strip()[-4:]}))
ray.shutdown()
"""


def test_a_local_ray_is_token_protected(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")  # no ~/.ray/auth_token
    run = subprocess.run([sys.executable, "-c", LOCAL], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["how"], got["mode"]) == ("local", "token")
    assert got["outsider_rc"] != 0  # no token: refused
    assert got["insider"] == "42"  # the token this process made works
    assert not (tmp_path / ".ray" / "auth_token").exists()  # the token lives in the process, not on disk
