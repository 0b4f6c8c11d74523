"""Shared test fixtures: ../shared discovery (never silently skipped in CI), torch threads, a local Ray."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's native INFO/WARNING lines bypass pytest's capture
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shared_dir() -> Path | None:
    env = os.environ.get("MF_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    for c in candidates:
        if (c / "golden").is_dir() and (c / "fixtures").is_dir():
            return c
    return None


SHARED = _shared_dir()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data (fixtures and golden vectors); skip loudly where absent, fail in CI."""
    if SHARED is None:
        msg = ("SHARED-MISSING: ../shared (or $MF_SHARED_DIR) with golden/ and fixtures/ was not found; "
               "this test needs the official fixtures")
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED


@pytest.fixture(scope="session")
def golden_case(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "tiny_case_A"


@pytest.fixture(scope="session")
def fixture_cases(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "motionfollower_cases"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session."""
    import ray

    from jobs.runtime import PROXY_CALLBACK, PROXY_CALLBACK_VAR

    os.environ.setdefault(PROXY_CALLBACK_VAR, PROXY_CALLBACK)  # the HTTP guard, as a local mf Ray has it
    tmp = tempfile.mkdtemp(prefix="mfray", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024,
             _temp_dir=tmp, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()
