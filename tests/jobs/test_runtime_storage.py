"""`python -m jobs.runtime check-storage URI...`, the pre-flight the KubeRay pods run as an init container: against a
real S3 protocol (moto's server, tests/jobs/test_s3.py's fixture), with credentials, without any, and on a bucket
that is not there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.jobs.test_s3 import s3_env  # noqa: F401 - the module's moto server fixture

REPO = Path(__file__).resolve().parents[2]


def _check(env: dict, *uris: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.runtime", "check-storage", *uris, "--timeout", "30"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _base_env(tmp_path: Path) -> dict:
    """No AWS settings of this machine: no variables, no profile files, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    return {**env, "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO)}


def test_storage_check_passes_fails_and_says_why(s3_env, tmp_path):  # noqa: F811
    import boto3

    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
                 region_name=s3_env["AWS_DEFAULT_REGION"]).create_bucket(Bucket="mf-preflight")
    env = {**_base_env(tmp_path), **s3_env}
    ok = _check(env, "s3://mf-preflight/", "s3://mf-preflight/runs/run-7")  # a prefix not written yet is fine
    assert ok.returncode == 0, ok.stderr
    assert "reachable" in ok.stdout

    bare = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    none = _check(bare, "s3://mf-preflight/")
    assert none.returncode == 1 and "no AWS credentials found" in none.stderr, none.stderr
    assert "mf-s3" in none.stderr and "serviceAccount" not in none.stderr and "Traceback" not in none.stderr

    missing = _check(env, "s3://mf-no-such-bucket/x/")
    assert missing.returncode == 1 and "s3://mf-no-such-bucket/x/: cannot list it" in missing.stderr, missing.stderr

    local = _check(_base_env(tmp_path), str(tmp_path))  # a local path needs no credentials
    assert local.returncode == 0, local.stderr
