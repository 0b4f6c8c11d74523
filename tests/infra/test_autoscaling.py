"""A run on Ray's own autoscaler: its local fake provider (`fake_multinode`, the provider behind
`ray.cluster_utils.AutoscalingCluster`), a head with CPU: 0 and worker node types from zero nodes up.

Ray 2.60's AutoscalingCluster cannot be used as it is (its example config is missing from the wheel, and its
start/shutdown run `ray stop --force`, which would stop every Ray on this shared machine), so the test writes the
config and starts the head itself (`ray start --head --block --autoscaling-config=...` with RAY_FAKE_CLUSTER=1, in its
own process group, on free ports), and stops exactly the processes it started.

It shows the run asking for what its work needs, not for what is up at the start: the driver reads the cluster's
node types (the head autoscaler's config, `jobs.runtime.cluster_shape`), the default GPU share is 1 because a node
type has GPUs although none is up, the CPU shares stay 1 per actor (the start-time snapshot, 0 CPUs, gave 0.125), and
the autoscaler brings up one edit node per edit actor the pool asked for.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.batch.requests import write_manifest
from tests.jobs.media_helpers import TINY_EDIT, write_clip
from tests.jobs.net_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MIB = 2**20


def fake_cluster_config(gcs_address: str) -> dict:
    """A cluster-launcher config for the fake provider: the head runs nothing (CPU: 0, as ray_cluster.yaml and the
    KubeRay heads), `edit` nodes carry the custom resource the edit actors ask for, `gpu` nodes a (fake) GPU."""
    worker = {"node_config": {}, "min_workers": 0}
    return {
        "cluster_name": "mf-fake", "max_workers": 3, "upscaling_speed": 2.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "edit": {**worker, "max_workers": 2,
                     "resources": {"CPU": 3, "edit_node": 1, "object_store_memory": 160 * MIB}},
            "gpu": {**worker, "max_workers": 1, "resources": {"CPU": 2, "GPU": 1, "object_store_memory": 160 * MIB}},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


DRIVER = r"""
import json, sys, time
t0 = time.time()
from jobs.runtime import cluster_shape, connect_ray, gpus_per_actor
connect_ray(sys.argv[1])
import ray
shape = cluster_shape()
nodes_at_start = sum(1 for n in ray.nodes() if n.get("Alive"))
from pipelines.batch.config import RunConfig, RunOptions
from pipelines.batch.driver import run_pipeline
options = RunOptions(actors=2, prepare_actors=1, edit_resources=(("edit_node", 1.0),), shared_fs=True)
default_gpus = gpus_per_actor(None, shape)
# the fake GPU cannot run CUDA: the run itself uses the CPU build on the `edit` nodes
cfg = RunConfig.build(options, manifest=sys.argv[2], out=sys.argv[3], gpus=0, cluster=shape)
from pipelines.batch.driver import _prepare_config
sized = _prepare_config(cfg)  # the driver's own fit
summary = run_pipeline(cfg)
alive = [n for n in ray.nodes() if n.get("Alive")]
print("RESULT " + json.dumps({
    "autoscaling": shape.autoscaling, "source": shape.source, "describe": shape.describe(),
    "default_gpus": default_gpus, "nodes_at_start": nodes_at_start, "cpus_at_start": shape.now("CPU"),
    "resources": summary.resources, "sized": sized.resources.as_dict(),
    "counts": summary.counts, "first_window_s": summary.first_window_seconds, "wall_s": time.time() - t0,
    "edit_nodes_used": len(summary.nodes.get("edit", ())), "edit_actors_asked": summary.actors,
    "edit_nodes_up": sum(1 for n in alive if n["Resources"].get("edit_node")),
    "gpu_nodes_up": sum(1 for n in alive if n["Resources"].get("GPU"))}))
"""


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the fake cluster's head did not start: {log.read_text()[-3000:]}") from None
            time.sleep(1)


def _monitor_log(tmp: Path) -> str:
    logs = sorted((tmp / "ray").glob("session_*/logs/monitor.*"))
    return "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs)


def _stop_own(proc: subprocess.Popen, marker: str) -> None:
    """Stop the head's process group, then any process of this cluster left outside it (the fake provider's worker
    raylets name the head's GCS address), each by its id."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (p.info.get("cmdline") or [])):
            left.append(p)
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.shared
@pytest.mark.slow
def test_a_run_scales_the_cluster_up_from_no_workers(tmp_path, fixture_cases):
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    gcs = free_port()
    address = f"{ip}:{gcs}"
    tmp = Path(tempfile.mkdtemp(prefix="mfas", dir="/tmp"))
    config = tmp / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = tmp / "head.log"
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--autoscaling-config={config}", "--port", str(gcs),
         "--num-cpus", "0", "--include-dashboard", "false", "--object-store-memory", str(160 * MIB),
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
         "--ray-client-server-port", str(free_port()), "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    try:
        _wait_port(ip, gcs, proc, log)
        manifest = tmp_path / "requests.csv"
        drv = write_clip(fixture_cases, "m1", tmp_path / "m1.mp4")
        write_manifest([{"source": str(write_clip(fixture_cases, "s1", tmp_path / "s1.mp4")), "driving": str(drv),
                         **TINY_EDIT},
                        {"source": str(write_clip(fixture_cases, "s2", tmp_path / "s2.mp4")), "driving": str(drv),
                         **TINY_EDIT, "seed": 3}], str(manifest))
        t0 = time.time()
        run = subprocess.run([sys.executable, "-c", DRIVER, address, str(manifest), str(tmp_path / "out")],
                             cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             timeout=900)
        wall = time.time() - t0
        line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert run.returncode == 0 and line, run.stdout[-3000:] + run.stderr[-6000:] + _monitor_log(tmp)
        got = json.loads(line[len("RESULT "):])
        print(f"\nFIGURES autoscaling (fake provider, head CPU 0, 0 workers at start): submission to first edited "
              f"window {got['first_window_s']:.1f}s of the run ({wall:.1f}s with the driver's start); edit actors "
              f"asked {got['edit_actors_asked']}, edit nodes brought up {got['edit_nodes_up']}, edit nodes that ran "
              f"windows {got['edit_nodes_used']}; GPU nodes {got['gpu_nodes_up']}; shares {got['resources']}")
    finally:
        _stop_own(proc, address)
    assert got["autoscaling"] and "autoscaler" in got["source"], got
    assert got["nodes_at_start"] == 1 and got["cpus_at_start"] == 0  # the head only
    assert got["default_gpus"] == 1.0  # a node type has GPUs, none is up
    assert got["resources"]["edit_actor_cpus"] == 1.0 and got["resources"]["prepare_actor_cpus"] == 1.0
    assert got["resources"] == got["sized"]  # the driver's for_cluster(nodes, cpus) took the shape, not the snapshot
    assert got["counts"] == {"succeeded": 2}, got
    # the pool asked for 2 edit actors, each needing an `edit` node: the autoscaler brought up both (the 2 windows
    # may both land on one of them)
    assert got["edit_actors_asked"] == 2 == got["edit_nodes_up"] and 1 <= got["edit_nodes_used"] <= 2
    assert got["gpu_nodes_up"] == 0  # nothing asked for a GPU: the autoscaler started none
