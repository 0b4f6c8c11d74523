"""How a run sizes its stages for a cluster (pipelines.batch.config: ClusterShape, StageResources.for_cluster,
RunConfig.for_cluster) and how jobs.runtime reads the shape of the connected Ray, on fake resource dicts."""
from __future__ import annotations

import copy
import dataclasses
import math
import types
from pathlib import Path

import pytest

from jobs import runtime
from pipelines.batch.config import ClusterShape, NodeType, RunConfig, RunOptions, StageResources
from tests.infra.test_infra import REPO, kuberay_manifest, load

GIB = 2**30


def _gpu_cluster(max_gpu_nodes: int = 8, head_cpus: float = 0, cpus_now: float = 0, gpus_now: float = 0,
                 node_cpus: float = 8) -> ClusterShape:
    """The shipped layout: a head that runs no tasks, a GPU worker type from 0 nodes up."""
    return ClusterShape(nodes=1, resources=(("CPU", cpus_now), ("GPU", gpus_now)), autoscaling=True,
                        node_types=(NodeType("head", (("CPU", head_cpus),), 1, 1),
                                    NodeType("gpu", (("CPU", node_cpus), ("GPU", 1.0)), max_gpu_nodes, 0)),
                        source="test")


def test_a_laptop_is_fitted_as_before():
    """A local Ray (static): the shares still shrink to the machine, so `mf demo` runs on 2 CPUs."""
    shape = ClusterShape.static(1, 2)
    assert not shape.autoscaling and not shape.multi_node
    res = StageResources()
    assert res.for_cluster(shape) == res.fit(2)
    fitted = res.for_cluster(shape)
    assert fitted.cpus_per_actor + fitted.prepare_cpus + fitted.plan_cpus + fitted.stitch_cpus <= 2
    assert shape.gpus_per_actor(None) == 0.0  # no GPU: the model on the CPU
    assert ClusterShape.static(1, 2, gpus=1).gpus_per_actor(None) == 1.0


def test_an_autoscaling_cluster_gets_what_the_run_asks_for():
    """The issue's case: head CPU 0 and the GPU group at zero at the start. The old sizing read 0 CPUs (assumed 1)
    and gave every actor 0.125 CPU for the whole run; now the run asks for its defaults and the autoscaler adds
    GPU nodes for them."""
    shape = _gpu_cluster()
    assert shape.now("CPU") == 0 and shape.multi_node
    gpus = shape.gpus_per_actor(None)
    assert gpus == 1.0  # the cluster *can* have GPUs
    res = StageResources(actors=2, prepare_actors=4, gpus_per_actor=gpus)  # rayjob.yaml's pools
    sized = res.for_cluster(shape)
    assert sized == dataclasses.replace(res, autoscale=True)  # the shares as asked; the pools grow from 1
    assert (sized.cpus_per_actor, sized.prepare_cpus, sized.plan_cpus, sized.stitch_cpus) == (1.0, 1.0, 0.5, 1.0)
    assert sized.plan_memory == sized.prepare_memory == GIB
    assert StageResources(actors=2, prepare_actors=4).fit(1.0).prepare_cpus == 0.125  # what the snapshot gave


def test_shares_fit_the_node_types():
    shape = _gpu_cluster(node_cpus=8)
    big = StageResources(cpus_per_actor=16, prepare_cpus=12, gpus_per_actor=1).for_cluster(shape)
    assert (big.cpus_per_actor, big.prepare_cpus) == (8.0, 8.0)  # one actor must fit one node
    small = _gpu_cluster(max_gpu_nodes=1, node_cpus=4)  # at most 4 CPUs in all
    fitted = StageResources(actors=1, prepare_actors=4, gpus_per_actor=1).for_cluster(small)
    need = fitted.cpus_per_actor + 4 * fitted.prepare_cpus + fitted.plan_cpus + fitted.stitch_cpus
    assert need <= 4 + 1e-9 and fitted.prepare_cpus < 1


def test_a_run_no_node_type_can_hold_is_refused():
    cpu_only = ClusterShape(autoscaling=True, node_types=(NodeType("cpu", (("CPU", 16.0),), 4, 0),))
    assert cpu_only.gpus_per_actor(None) == 0.0
    with pytest.raises(ValueError, match="no node type of this cluster can hold a edit actor"):
        StageResources(gpus_per_actor=1).for_cluster(cpu_only)
    tagged = StageResources(edit_resources=(("edit_node", 1.0),))
    with pytest.raises(ValueError, match="edit_node"):
        tagged.for_cluster(cpu_only)
    small_mem = ClusterShape(autoscaling=True, node_types=(NodeType("tiny", (("CPU", 4.0), ("memory", 0.5 * GIB)),
                                                                   4, 0),))
    with pytest.raises(ValueError, match="prepare actor"):
        StageResources().for_cluster(small_mem)


def test_unknown_node_types_keep_the_shares_and_use_the_cpu():
    shape = ClusterShape(nodes=1, resources=(("CPU", 0.0),), autoscaling=True, source="autoscaler status")
    assert shape.can_have("GPU") is None and math.isinf(shape.most("CPU"))
    assert shape.gpus_per_actor(None) == 0.0 and shape.gpus_per_actor(1) == 1.0
    res = StageResources(actors=2, prepare_actors=4, gpus_per_actor=1)
    assert res.for_cluster(shape) == dataclasses.replace(res, autoscale=True)


def test_auto_fit_off_changes_nothing():
    res = StageResources(auto_fit=False, cpus_per_actor=64, gpus_per_actor=1)
    assert res.for_cluster(_gpu_cluster()) == res and res.for_cluster(ClusterShape.static(1, 2)) == res


def test_the_local_out_check_counts_the_nodes_the_cluster_can_grow_to(tmp_path):
    cfg = RunConfig.build(RunOptions(), manifest="s3://b/m.parquet", out=str(tmp_path))
    with pytest.raises(ValueError, match="autoscales"):
        cfg.for_cluster(_gpu_cluster())
    with pytest.raises(ValueError, match="has 3 nodes"):
        cfg.for_cluster(ClusterShape.static(3, 24))
    assert cfg.for_cluster(ClusterShape.static(1, 2)).resources == StageResources().fit(2)
    shared = RunConfig.build(RunOptions(shared_fs=True), manifest="s3://b/m.parquet", out=str(tmp_path))
    assert shared.for_cluster(_gpu_cluster()).cluster == _gpu_cluster()
    remote = RunConfig.build(RunOptions(), manifest="s3://b/m.parquet", out="s3://b/out")
    assert remote.for_cluster(_gpu_cluster()).resources == dataclasses.replace(remote.resources, autoscale=True)


def test_the_drivers_fit_takes_the_callers_shape_over_the_snapshot():
    """`driver._prepare_config`: without a shape the cluster as it is now is static (fitted, as before); a shape the
    caller found (`jobs.runtime.cluster_shape`) wins over the snapshot."""
    cfg = RunConfig.build(RunOptions(actors=2, prepare_actors=4), manifest="s3://b/m", out="s3://b/o", gpus=1)
    snapshot = cfg.for_cluster(ClusterShape.static(1, 1.0))
    assert snapshot.resources == cfg.resources.fit(1.0) and snapshot.resources.prepare_cpus == 0.125
    with_shape = RunConfig.build(RunOptions(actors=2, prepare_actors=4), manifest="s3://b/m", out="s3://b/o",
                                 gpus=1, cluster=_gpu_cluster())
    sized = with_shape.for_cluster(with_shape.cluster)
    assert sized.resources.prepare_cpus == 1.0 and sized.cluster == _gpu_cluster()


def test_ray_cluster_yaml_as_its_autoscaler_sees_it():
    """The shipped launcher config (after Ray's prepare_config, as the head's autoscaler reads it)."""
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(copy.deepcopy(load(REPO / "ray_cluster.yaml")))
    shape = ClusterShape.from_autoscaler_config(config, nodes=1, resources={"CPU": 0})
    assert shape.autoscaling and shape.can_have("GPU") and shape.gpus_per_actor(None) == 1.0
    gpu = [t for t in shape.node_types if t.get("GPU")]
    assert gpu and gpu[0].max_count == 8 and gpu[0].min_count == 0
    assert shape.most("GPU") == 8 and shape.most("CPU") == 64
    res = StageResources(actors=2, prepare_actors=4, gpus_per_actor=1)
    assert res.for_cluster(shape) == dataclasses.replace(res, autoscale=True)


def test_the_global_max_workers_caps_each_type():
    config = {"max_workers": 2, "head_node_type": "h",
              "available_node_types": {"h": {"resources": {"CPU": 0}},
                                       "w": {"resources": {"CPU": 4}, "max_workers": 9}}}
    shape = ClusterShape.from_autoscaler_config(config)
    assert {t.name: t.max_count for t in shape.node_types} == {"h": 1, "w": 2} and shape.most("CPU") == 8
    fixed = ClusterShape.from_autoscaler_config({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 2}}, "w": {"resources": {"CPU": 4}, "min_workers": 2, "max_workers": 2}}})
    assert not fixed.autoscaling  # min == max: nothing to grow


def test_kuberay_manifests_ask_for_gpus_explicitly():
    """KubeRay's in-tree autoscaler runs in a sidecar: the driver sees that an autoscaler runs, not its node types, so
    the shipped manifests name the GPU share instead of leaving it to the cluster's snapshot."""
    import yaml

    from tests.infra.test_infra import check_command, entrypoint

    args = check_command(entrypoint(kuberay_manifest("rayjob.yaml")), "rayjob.yaml")
    assert args.gpus_per_actor == 1
    cron = kuberay_manifest("raycronjob.yaml")
    assert cron["spec"]["jobTemplate"]["entrypoint"].split()[:3] == ["mf", "dataset", "run"]
    (app,) = yaml.safe_load(kuberay_manifest("rayservice.yaml")["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["gpus_per_replica"] == 1


# -- jobs.runtime reading the connected Ray ------------------------------------------------------------------------
@pytest.fixture
def fake_ray(monkeypatch):
    """`ray.nodes()`/`ray.cluster_resources()` of a head with 0 CPUs, no cluster config in the GCS, no autoscaler
    process on this node and no bootstrap file."""
    import ray
    import ray._private.state

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0, "memory": 8.0 * GIB, "object_store_memory": 1})
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: None)
    monkeypatch.setattr(runtime, "_local_autoscaler_configs", lambda gcs=None: [])
    monkeypatch.setattr(runtime, "_autoscaler_running", lambda: False)
    monkeypatch.delenv(runtime.AUTOSCALING_CONFIG_VAR, raising=False)
    return monkeypatch


def test_no_autoscaler_is_a_static_cluster(fake_ray):
    shape = runtime.cluster_shape()
    assert (shape.autoscaling, shape.nodes, shape.now("CPU")) == (False, 1, 0.0)
    assert runtime.gpus_per_actor(None, shape) == 0.0 and runtime.gpus_per_actor(0.5, shape) == 0.5


def test_a_running_autoscaler_without_its_config(fake_ray, caplog):
    fake_ray.setattr(runtime, "_autoscaler_running", lambda: True)
    shape = runtime.cluster_shape()
    assert shape.autoscaling and not shape.node_types and shape.source == "autoscaler status"
    with caplog.at_level("WARNING", logger="jobs.runtime"):
        assert runtime.gpus_per_actor(None, shape) == 0.0
    assert "--gpus-per-actor 1" in caplog.text


def test_the_config_file_an_operator_points_at(fake_ray, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text((REPO / "ray_cluster.yaml").read_text())
    fake_ray.setenv(runtime.AUTOSCALING_CONFIG_VAR, str(path))
    shape = runtime.cluster_shape()
    assert shape.autoscaling and shape.can_have("GPU") and str(path) in shape.source
    assert runtime.gpus_per_actor(None, shape) == 1.0


def test_the_autoscaler_process_config(monkeypatch, tmp_path):
    """The head's monitor process names its config (`ray up`, `ray start --head --autoscaling-config`)."""
    import psutil

    path = tmp_path / "bootstrap.yaml"

    def monitor(gcs: str, config: Path):
        return types.SimpleNamespace(info={"cmdline": ["/opt/venv/bin/python", "-u", "/x/ray/autoscaler/_private/"
                                                       "monitor.py", "--logs-dir=/tmp", f"--gcs-address={gcs}",
                                                       f"--autoscaling-config={config}"]})

    other = types.SimpleNamespace(info={"cmdline": None})
    foreign = monitor("10.0.0.9:6379", tmp_path / "foreign.yaml")  # another cluster's head on this machine
    monkeypatch.setattr(psutil, "process_iter",
                        lambda attrs=None: iter([other, foreign, monitor("10.0.0.1:6379", path)]))
    monkeypatch.setattr(runtime, "BOOTSTRAP_CONFIG", str(tmp_path / "absent.yaml"))
    assert runtime._local_autoscaler_configs("10.0.0.1:6379") == [("the head's autoscaler", str(path))]
    (tmp_path / "absent.yaml").write_text("{}")
    assert runtime._local_autoscaler_configs("10.0.0.1:6379")[-1] == ("ray up's bootstrap config",
                                                                      str(tmp_path / "absent.yaml"))


def test_rays_cluster_config_in_the_gcs(fake_ray):
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    g = config.node_group_configs.add()
    g.name, g.min_count, g.max_count = "gpu", 0, 4
    g.resources["CPU"], g.resources["GPU"] = 8, 1
    import ray._private.state

    fake_ray.setattr(ray._private.state.state, "get_cluster_config", lambda: config)
    shape = runtime.cluster_shape()
    assert shape.autoscaling and shape.source == "Ray's cluster config"
    assert shape.most("GPU") == 4 and runtime.gpus_per_actor(None, shape) == 1.0


def test_which_autoscaler_status_means_an_autoscaler():
    """Every Ray head runs the monitor; a read-only one (no autoscaling config: a laptop, `ray start`) reports no
    node types, KubeRay's in-tree autoscaler reports its groups."""
    import json

    assert not runtime.autoscaler_status_scales(None)
    assert not runtime.autoscaler_status_scales(json.dumps({"load_metrics_report": {}}))  # a local Ray, measured
    readonly = {"autoscaler_report": {"active_nodes": {"node_" + "ab12" * 14: 1}, "pending_launches": {}}}
    assert not runtime.autoscaler_status_scales(json.dumps(readonly))
    kuberay = {"autoscaler_report": {"active_nodes": {"headgroup": 1}, "pending_launches": {"gpu": 2}}}
    assert runtime.autoscaler_status_scales(json.dumps(kuberay))
    assert not runtime.autoscaler_status_scales(b"not json")


def test_actor_pools_autoscale_on_an_autoscaling_cluster_and_stay_fixed_on_a_static_one():
    """Ray Data's autoscaling actor pools where they fit: on a cluster an autoscaler grows, each pool may shrink to one
    actor while it idles and grow back to its size, starting at its size (the autoscaler brings up the whole pool's
    nodes at once); on a static cluster (a laptop, a plain `ray start` cluster) the pools are fixed, as before;
    auto_fit off keeps them fixed too."""
    res = StageResources(actors=4, prepare_actors=3, gpus_per_actor=1)
    grown = res.for_cluster(_gpu_cluster())
    assert grown.autoscale and grown.pool(grown.actors) == (1, 4, 4) and grown.pool(grown.prepare_actors) == (1, 3, 3)
    unknown = res.for_cluster(ClusterShape(nodes=1, autoscaling=True, source="autoscaler status"))
    assert unknown.autoscale and unknown.pool(4) == (1, 4, 4)
    fixed = res.for_cluster(ClusterShape.static(1, 16, gpus=4))
    assert not fixed.autoscale and fixed.pool(fixed.actors) == (4, 4, 4) and fixed.pool(3) == (3, 3, 3)
    assert not StageResources(auto_fit=False, actors=4).for_cluster(_gpu_cluster()).autoscale
    assert StageResources().pool(0) == (1, 1, 1)
