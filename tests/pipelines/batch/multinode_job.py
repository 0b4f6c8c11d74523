"""Run by tests/pipelines/batch/test_multinode.py in its own process: a two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``), the edit actors pinned to one node and the prepare actors to the other through
custom resources. Prints one JSON line: the node of each resource, the run's summary and the refusal of a local
``--out`` without ``shared_fs``."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(manifest: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from jobs.runtime import connect_ray
    from pipelines.batch.config import RunConfig, StageResources
    from pipelines.batch.driver import run_pipeline

    store = 256 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"prepare_node": 2}, "object_store_memory": store, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, resources={"edit_node": 2}, object_store_memory=store)
    cluster.wait_for_nodes()
    try:
        connect_ray(cluster.address)
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        by_resource = {r: [nid for nid, res in nodes.items() if r in res] for r in ("edit_node", "prepare_node")}
        cfg = RunConfig(manifest=manifest, out=out, resources=StageResources(
            edit_resources=(("edit_node", 1.0),), prepare_resources=(("prepare_node", 1.0),)))
        try:
            run_pipeline(cfg)
            refused = None
        except ValueError as exc:
            refused = str(exc)
        summary = run_pipeline(dataclasses.replace(cfg, shared_fs=True))
        print(json.dumps({"nodes": len(nodes), "by_resource": by_resource, "worker": worker.node_id,
                          "refused": refused, "counts": summary.counts,
                          "ran_on": {k: sorted(v) for k, v in summary.nodes.items()}}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
