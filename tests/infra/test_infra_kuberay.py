"""The KubeRay resources of infra/kuberay/ checked the way a cluster checks them, offline.

- The API server: each resource against the CRD's OpenAPI schema of the KubeRay version docs/operations.md names
  (tests/infra/schemas/kuberay-<tag>.yaml, vendored from the KubeRay release), with unknown fields rejected as a
  strict field validation (`kubectl apply`, the default) rejects them, the list-type rules (a map list's keys unique)
  and no field that carries a CEL rule this test cannot evaluate.
- The operator: the checks of KubeRay's ray-operator/controllers/ray/utils/validation.go (v1.7.0) the resources can
  reach, and what the operator does with them (token auth, autoscaling, the pods' labels).
- mf: every entrypoint parses with the real `mf` parser and joins the cluster through RAY_ADDRESS, the Serve config
  passes Ray Serve's own schema, and the cluster can hold what the workload asks for.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import zoneinfo
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.infra.test_infra import (
    INFRA,
    KUBERAY,
    REPO,
    check_command,
    cluster_spec,
    entrypoint,
    gpu_groups,
    gpus_of,
    groups,
    kuberay_manifest,
    load,
    lock_pins,
)

SCHEMAS = Path(__file__).with_name("schemas")
DOCS_KUBERAY = "v1.7.0"  # the version docs/operations.md names
MIN_KUBERAY = {"RayJob": "v1.6.2", "RayService": "v1.6.2", "RayCronJob": "v1.7.0"}  # the oldest each works on
VENDORED = ("v1.6.2", "v1.7.0")
NAMES = sorted(KUBERAY)


def _v(tag: str) -> tuple[int, ...]:
    return tuple(int(x) for x in tag.lstrip("v").split("."))


# -- the CRD schemas ------------------------------------------------------------------------------------------------
@functools.cache
def crd_bundle(tag: str) -> dict:
    return yaml.safe_load((SCHEMAS / f"kuberay-{tag}.yaml").read_text())


def strict(schema):
    """The schema with ``additionalProperties: false`` on every object that lists its ``properties`` (and does not
    keep unknown fields by ``x-kubernetes-preserve-unknown-fields``): unknown fields become errors, as with
    `kubectl apply --validate=strict`."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


@functools.cache
def _validator(tag: str, kind: str) -> jsonschema.Draft4Validator:
    schema = strict(crd_bundle(tag)["crds"][kind]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(doc: dict, tag: str) -> list[str]:
    errs = sorted(_validator(tag, doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errs]


def k8s_rule_errors(inst, schema: dict, path: str = "") -> list[str]:
    """What the API server checks beyond plain JSON schema: ``x-kubernetes-list-type`` (``map``: items unique by
    ``x-kubernetes-list-map-keys``, a missing key taking its default; ``set``: items unique), and any field carrying
    ``x-kubernetes-validations`` (CEL, not evaluated here, so a resource must not reach one)."""
    errs = []
    if schema.get("x-kubernetes-validations"):
        rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
        errs.append(f"{path}: sets a field with CEL rules this test cannot evaluate: {rules}")
    if isinstance(inst, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for k, v in inst.items():
            sub = props.get(k) if k in props else (extra if isinstance(extra, dict) else None)
            if sub:
                errs += k8s_rule_errors(v, sub, f"{path}.{k}")
    elif isinstance(inst, list):
        item = schema.get("items") or {}
        kind = schema.get("x-kubernetes-list-type")
        if kind in ("map", "set"):
            seen = set()
            for i, it in enumerate(inst):
                if kind == "map":
                    key = tuple(it.get(k, item.get("properties", {}).get(k, {}).get("default"))
                                for k in schema["x-kubernetes-list-map-keys"])
                else:
                    key = json.dumps(it, sort_keys=True)
                if key in seen:
                    errs.append(f"{path}[{i}]: duplicate entry {key} in a list of type {kind}")
                seen.add(key)
        for i, it in enumerate(inst):
            errs += k8s_rule_errors(it, item, f"{path}[{i}]")
    return errs


@pytest.mark.parametrize("tag", VENDORED)
def test_vendored_schemas_are_the_release_schemas(tag: str):
    """The anchors/aliases compaction lost nothing: each kind's schema hashes to what the upstream file gave."""
    bundle = crd_bundle(tag)
    assert bundle["kuberay_version"] == tag and re.fullmatch(r"[0-9a-f]{40}", bundle["commit"])
    header = (SCHEMAS / f"kuberay-{tag}.yaml").read_text().split("\n", 4)[:3]
    assert any(f"github.com/ray-project/kuberay/tree/{tag}" in line for line in header), "source not noted"
    assert set(bundle["crds"]) == {"RayJob", "RayService", "RayCronJob", "RayCluster"}
    for kind, entry in bundle["crds"].items():
        assert entry["file"] == f"ray-operator/config/crd/bases/ray.io_{kind.lower()}s.yaml"
        got = hashlib.sha256(json.dumps(entry["openAPIV3Schema"], sort_keys=True,
                                        separators=(",", ":")).encode()).hexdigest()
        assert got == entry["schema_sha256"], f"{tag} {kind}: schema differs from the vendored release schema"


def test_docs_name_the_kuberay_version_and_feature_gate():
    text = (REPO / "docs" / "operations.md").read_text()
    assert f"KubeRay {DOCS_KUBERAY}" in text, f"docs/operations.md does not name KubeRay {DOCS_KUBERAY}"
    assert "RayCronJob=true" in text, "docs/operations.md does not say RayCronJob needs its feature gate"
    for kind, tag in MIN_KUBERAY.items():
        assert tag in text, f"docs/operations.md does not give {kind}'s minimum KubeRay ({tag})"


@pytest.mark.parametrize("name,tag", [(n, t) for n in NAMES for t in VENDORED if _v(t) >= _v(MIN_KUBERAY[KUBERAY[n]])])
def test_manifest_passes_the_crd_schema(name: str, tag: str):
    """Each resource on every vendored KubeRay from its minimum on (raycronjob.yaml on v1.6.2: the next test)."""
    doc = kuberay_manifest(name)
    errs = schema_errors(doc, tag)
    assert not errs, f"{name} against the KubeRay {tag} CRD (strict):\n" + "\n".join(errs)
    schema = crd_bundle(tag)["crds"][doc["kind"]]["openAPIV3Schema"]
    rule_errs = k8s_rule_errors(doc, schema)
    assert not rule_errs, "\n".join(rule_errs)


def test_raycronjob_fails_before_kuberay_1_7_only_for_time_zone():
    """RayCronJob.spec.timeZone is new in v1.7.0: a strict apply on v1.6.2 rejects that field, and only that."""
    doc = kuberay_manifest("raycronjob.yaml")
    errs = schema_errors(doc, "v1.6.2")
    assert errs and all(e.startswith("spec: Additional properties") and "'timeZone'" in e for e in errs), errs
    without = copy.deepcopy(doc)
    del without["spec"]["timeZone"]
    assert not schema_errors(without, "v1.6.2")


def test_strict_validation_rejects_what_the_crds_lack():
    """The fields the previous RayCronJob set (batch/v1 CronJob's) and a typo anywhere are rejected."""
    doc = kuberay_manifest("raycronjob.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"].update(concurrencyPolicy="Forbid", successfulJobsHistoryLimit=3, failedJobsHistoryLimit=3)
    errs = " ".join(schema_errors(bad, DOCS_KUBERAY))
    for field in ("concurrencyPolicy", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        assert field in errs
    bad = copy.deepcopy(kuberay_manifest("rayjob.yaml"))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("'resource' was unexpected" in e for e in schema_errors(bad, DOCS_KUBERAY))
    bad = copy.deepcopy(kuberay_manifest("rayservice.yaml"))
    env = bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env.append(dict(env[0]))
    schema = crd_bundle(DOCS_KUBERAY)["crds"]["RayService"]["openAPIV3Schema"]
    assert any("duplicate entry ('MF_SERVE_TOKENS',)" in e for e in k8s_rule_errors(bad, schema))


# -- KubeRay's own validation (ray-operator/controllers/ray/utils/validation.go, v1.7.0) ----------------------------
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = {"RayJob": 47, "RayService": 47, "RayCronJob": 36}  # MaxRay*NameLength (constant.go)
META_KEYS = {"name", "namespace", "labels", "annotations"}


def _ray_version_ok(version: str, minimum: tuple[int, ...]) -> bool:
    return bool(re.fullmatch(r"\d+\.\d+\.\d+", version)) and _v(version) >= minimum


def cluster_errors(spec: dict, kind: str) -> list[str]:
    """ValidateRayClusterSpec (and the RayJob/RayService checks on it) for the fields these manifests can set."""
    errs = []
    autoscaling = spec.get("enableInTreeAutoscaling") is True
    for gname, g in groups(spec):
        containers = g["template"]["spec"].get("containers") or []
        if not containers:
            errs.append(f"{gname}: should have at least one container")
        rsp = g.get("rayStartParams") or {}
        if g.get("resources") and any(rsp.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errs.append(f"{gname}: resources in both rayStartParams and resources")
        if "labels" in rsp:
            errs.append(f"{gname}: rayStartParams['labels'] is not supported")
        if gname == "head":
            continue
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            errs.append(f"{gname}: must set both minReplicas and maxReplicas when autoscaling is disabled")
        if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (None not in (lo, hi) and lo > hi):
            errs.append(f"{gname}: bad minReplicas/maxReplicas {lo}/{hi}")
        if g.get("suspend") and autoscaling:
            errs.append(f"{gname}: cannot be suspended with Autoscaler enabled")
        if g.get("idleTimeoutSeconds") is not None and (spec.get("autoscalerOptions") or {}).get("version") != "v2":
            errs.append(f"{gname}: idleTimeoutSeconds needs autoscaler v2")
    head_env = {e["name"]: e.get("value") for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]
                .get("env", [])}
    if not autoscaling and head_env.get("RAY_enable_autoscaler_v2") in ("1", "true"):
        errs.append("RAY_enable_autoscaler_v2 without enableInTreeAutoscaling")
    if (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 0) < 0:
        errs.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":  # IsAuthEnabled: authOptions.mode == "token" (an unset mode is no auth)
        if not _ray_version_ok(spec.get("rayVersion", ""), (2, 52, 0)):
            errs.append(f"authOptions.mode is 'token' but rayVersion {spec.get('rayVersion')!r} is not >= 2.52.0")
        if auth.get("enableK8sTokenAuth"):
            errs.append(f"K8s token auth mode is not supported for {kind}")
    elif auth.get("enableK8sTokenAuth"):
        errs.append("authOptions.enableK8sTokenAuth without mode 'token'")
    for gated in ("networkPolicy", "tlsOptions", "historyServerOptions", "gcsFaultToleranceOptions"):
        if gated in spec:
            errs.append(f"{gated} needs an alpha feature gate or options these checks do not cover")
    return errs


def rayjob_errors(spec: dict) -> list[str]:
    """ValidateRayJobSpec."""
    errs = []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
    if spec.get("suspend") and not shutdown:
        errs.append("suspended with shutdownAfterJobFinishes false")
    if ttl < 0 or (not shutdown and ttl > 0):
        errs.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes and must be >= 0")
    if "deletionStrategy" in spec:
        errs.append("deletionStrategy is not covered by these checks")
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        errs.append("one of rayClusterSpec or clusterSelector must be set")
    if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errs.append("backoffLimit is incompatible with InteractiveMode")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}")
        assert isinstance(env, dict)
    except (yaml.YAMLError, AssertionError):
        errs.append("runtimeEnvYAML is not a YAML mapping")
    for key, lo in (("activeDeadlineSeconds", 1), ("preRunningDeadlineSeconds", 1), ("backoffLimit", 0)):
        if key in spec and spec[key] < lo:
            errs.append(f"{key} must be >= {lo}")
    if spec.get("rayClusterSpec"):
        errs += cluster_errors(spec["rayClusterSpec"], "RayJob")
    return errs


def kuberay_errors(doc: dict) -> list[str]:
    kind, meta, spec = doc["kind"], doc["metadata"], doc["spec"]
    errs = [f"metadata.{k} is not set by hand" for k in set(meta) - META_KEYS]
    name = meta.get("name", "")
    if not DNS1035.fullmatch(name) or len(name) > MAX_NAME[kind]:
        errs.append(f"name {name!r} is no DNS-1035 label of at most {MAX_NAME[kind]} characters")
    if kind == "RayJob":
        errs += rayjob_errors(spec)
    elif kind == "RayCronJob":  # ValidateRayCronJobSpec
        from croniter import croniter

        if "TZ" in spec["schedule"] or not croniter.is_valid(spec["schedule"]) or len(spec["schedule"].split()) != 5:
            errs.append(f"schedule {spec['schedule']!r} is no standard cron expression without TZ")
        if "timeZone" in spec:
            try:
                zoneinfo.ZoneInfo(spec["timeZone"])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errs.append(f"timeZone {spec['timeZone']!r} is no IANA time zone")
        errs += rayjob_errors(spec["jobTemplate"])
    else:  # ValidateRayServiceSpec
        cluster = spec["rayClusterConfig"]
        errs += cluster_errors(cluster, kind)
        if (cluster["headGroupSpec"].get("headService") or {}).get("metadata", {}).get("name"):
            errs.append("headService.metadata.name should not be set")
        if (spec.get("upgradeStrategy") or {}).get("type") not in (None, "NewCluster", "None"):
            errs.append("upgradeStrategy other than NewCluster/None is not covered by these checks")
    return errs


@pytest.mark.parametrize("name", NAMES)
def test_kuberay_operator_accepts_the_manifest(name: str):
    errs = kuberay_errors(kuberay_manifest(name))
    assert not errs, f"{name}: KubeRay would reject it:\n" + "\n".join(errs)


def test_kuberay_checks_catch_the_old_mistakes():
    """The checks above are not vacuous: an unset auth mode, a Ray too old for tokens and a TZ schedule fail."""
    doc = copy.deepcopy(kuberay_manifest("raycronjob.yaml"))
    doc["spec"]["schedule"] = "CRON_TZ=UTC 0 3 * * *"
    doc["spec"]["jobTemplate"]["rayClusterSpec"]["rayVersion"] = "2.51.0"
    doc["spec"]["jobTemplate"]["rayClusterSpec"]["enableInTreeAutoscaling"] = False
    del doc["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"]
    errs = " | ".join(kuberay_errors(doc))
    assert "TZ" in errs and "2.52.0" in errs and "minReplicas and maxReplicas" in errs, errs


# -- what the operator makes of them --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_token_auth_is_kuberays(name: str):
    """KubeRay sends the token (job submission and polling, Serve deploys) only with authOptions and a secret whose
    key is auth_token; it injects RAY_AUTH_MODE/RAY_AUTH_TOKEN into the Ray containers unless they set their own."""
    cluster = cluster_spec(kuberay_manifest(name))
    assert cluster["authOptions"] == {"mode": "token", "secretName": "mf-ray-token"}
    docs = (REPO / "docs" / "operations.md").read_text()
    assert "mf-ray-token" in docs and "auth_token=" in docs, "docs do not say how to create the auth_token secret"
    for _, g in groups(cluster):
        for c in g["template"]["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, c["name"]


def test_ray_version_is_the_pinned_ray():
    ray_pin = lock_pins()["ray"]
    import ray

    assert ray.__version__ == ray_pin
    for name in NAMES:
        assert cluster_spec(kuberay_manifest(name))["rayVersion"] == ray_pin, name


@pytest.mark.parametrize("name", NAMES)
def test_scaling_and_gpu_groups(name: str):
    """The in-tree autoscaler is on (so maxReplicas means something), every group's replica bounds hold, GPU groups
    request and limit nvidia.com/gpu and tolerate the GPU taint, the head has no GPU and runs no tasks."""
    cluster = cluster_spec(kuberay_manifest(name))
    assert cluster.get("enableInTreeAutoscaling") is True, f"{name}: replicas cannot scale without the autoscaler"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert not any(gpus_of(c) for c in head["template"]["spec"]["containers"])
    assert gpu_groups(cluster)
    for g in cluster["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    for g in gpu_groups(cluster):
        for c in g["template"]["spec"]["containers"]:
            res = c["resources"]
            assert res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu"), c["name"]
        tol = g["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") in (None, "NoSchedule")
                   and t.get("operator") in ("Exists", "Equal") for t in tol), f"{name}: {g['groupName']} no toleration"


def _cpus(c: dict) -> float:
    v = str(c["resources"]["limits"]["cpu"])
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def _capacity(cluster: dict) -> tuple[int, float, int, float]:
    """(GPUs, CPUs) the worker groups reach (maxReplicas pods with the autoscaler, else `replicas`: without it
    maxReplicas does nothing), and the largest pod's (GPUs, CPUs)."""
    gpus = cpus = 0.0
    pod_gpu = pod_cpu = 0.0
    autoscaling = cluster.get("enableInTreeAutoscaling") is True
    for g in cluster["workerGroupSpecs"]:
        c = g["template"]["spec"]["containers"][0]
        pods = g["maxReplicas"] if autoscaling else g["replicas"]
        gpus += pods * gpus_of(c)
        cpus += pods * _cpus(c)
        pod_gpu, pod_cpu = max(pod_gpu, gpus_of(c)), max(pod_cpu, _cpus(c))
    return int(gpus), cpus, int(pod_gpu), pod_cpu


def test_rayjob_cluster_holds_the_run():
    doc = kuberay_manifest("rayjob.yaml")
    args = check_command(doc["spec"]["entrypoint"], "rayjob.yaml")
    gpus, cpus, pod_gpu, pod_cpu = _capacity(cluster_spec(doc))
    per_actor_cpu = args.cpus_per_actor or 1
    assert args.gpus_per_actor <= pod_gpu and per_actor_cpu <= pod_cpu
    assert args.actors * args.gpus_per_actor <= gpus
    assert args.actors * per_actor_cpu + args.prepare_actors * (args.prepare_cpus or 1) <= cpus


def test_rayservice_cluster_holds_the_replicas():
    """The Serve app's GPU replicas fit the GPU group at maxReplicas (the autoscaler adds the pods), each on one
    pod; the previous manifest asked for 2 GPU replicas on a fixed single GPU pod and never became ready."""
    from jobs.serve.config import ServeConfig

    doc = kuberay_manifest("rayservice.yaml")
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    cfg = ServeConfig.from_env({}, **app["args"])
    override = {d["name"]: d for d in app.get("deployments", [])}.get("EditWorker", {})
    replicas = override.get("num_replicas", cfg.replicas)
    gpus, cpus, pod_gpu, pod_cpu = _capacity(cluster_spec(doc))
    assert cfg.gpus_per_replica >= 1 and cfg.gpus_per_replica <= pod_gpu and cfg.cpus_per_replica <= pod_cpu
    assert replicas * cfg.gpus_per_replica <= gpus
    assert cfg.weights and "://" in cfg.weights, "the Serve app would run the random tiny preset"


def test_rayservice_serve_config_passes_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    doc = kuberay_manifest("rayservice.yaml")
    config = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    assert [a.import_path for a in config.applications] == ["jobs.serve:app_builder"]


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_entrypoint_joins_the_cluster_through_ray_address(name: str, monkeypatch: pytest.MonkeyPatch):
    """No --address: Ray Jobs sets RAY_ADDRESS for the driver, and mf's connect_ray joins it instead of starting a
    second Ray in the head pod (what `--address`-less entrypoints did before)."""
    import ray

    import jobs.runtime as runtime

    doc = kuberay_manifest(name)
    args = check_command(entrypoint(doc), name)
    assert args.address is None, f"{name}: the entrypoint names --address; RAY_ADDRESS from Ray Jobs is the one"
    spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert "RAY_ADDRESS" not in runtime_env.get("env_vars", {}), f"{name}: runtimeEnvYAML overrides RAY_ADDRESS"
    for _, g in groups(cluster_spec(doc)):
        for c in g["template"]["spec"]["containers"]:
            assert "RAY_ADDRESS" not in {e["name"] for e in c.get("env", [])}, f"{name}: {c['name']} sets RAY_ADDRESS"
    calls = []
    monkeypatch.setitem(runtime._route, "ray_logs", False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what the job supervisor gives the driver
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    assert runtime.connect_ray(args.address, num_cpus=args.num_cpus) == "joined"
    assert calls and calls[0]["address"] == "10.0.0.5:6379"


def test_rayjob_loads_real_weights():
    args = check_command(entrypoint(kuberay_manifest("rayjob.yaml")), "rayjob.yaml")
    assert args.weights and re.match(r"[a-z0-9]+://", args.weights), "rayjob.yaml runs the random tiny preset"


def test_raycronjob_schedule_is_utc():
    spec = kuberay_manifest("raycronjob.yaml")["spec"]
    assert spec["timeZone"] == "UTC"
    # a run ends before the next daily tick (RayCronJob has no concurrency policy)
    assert spec["schedule"].split()[2:] == ["*", "*", "*"] and spec["jobTemplate"]["activeDeadlineSeconds"] < 86400


# -- Prometheus' Kubernetes discovery of these pods -----------------------------------------------------------------
def kuberay_pod_labels(cluster_name: str, node_type: str, group: str, template_labels: dict) -> dict:
    """The labels KubeRay puts on a Ray pod (labelPod in ray-operator/controllers/ray/common/pod.go, v1.7.0): its own,
    overridden by the pod template's (the custom resource's labels are not copied)."""
    labels = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster_name, "ray.io/node-type": node_type,
              "ray.io/group": group, "ray.io/identifier": f"{cluster_name}-{node_type}",
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    for k, v in template_labels.items():
        if k not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[k] = v
    return labels


def pod_targets(doc: dict) -> list[dict]:
    """Prometheus' pod-role targets for the pods of a resource: one per container port, with KubeRay's `metrics`
    port (8080) added to the Ray container where the template has none (pod.go)."""
    out = []
    name = doc["metadata"]["name"]
    for gname, g in groups(cluster_spec(doc)):
        node_type, group = ("head", "headgroup") if gname == "head" else ("worker", gname)
        labels = kuberay_pod_labels(name, node_type, group, (g["template"].get("metadata") or {}).get("labels", {}))
        meta = {"__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": f"{name}-{group}-x"}
        meta |= {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}
        for i, c in enumerate(g["template"]["spec"]["containers"]):
            ports = list(c.get("ports", []))
            if i == 0 and not any(p.get("name") == "metrics" for p in ports):
                ports.append({"containerPort": 8080, "name": "metrics"})
            for p in ports:
                out.append(meta | {"__address__": f"10.0.0.1:{p['containerPort']}",
                                   "__meta_kubernetes_pod_container_port_name": p.get("name", ""),
                                   "__meta_kubernetes_pod_container_name": c["name"], "_group": gname})
    return out


def relabel(labels: dict, configs: list[dict]) -> dict | None:
    """Prometheus relabelling (keep, drop, replace); None where the target is dropped."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if action == "keep" and not m or action == "drop" and m:
            return None
        if action == "replace" and m:
            repl = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", c.get("replacement", "$1"))
            labels[c["target_label"]] = m.expand(repl)
        elif action not in ("keep", "drop", "replace"):
            raise NotImplementedError(action)
    return labels


@pytest.mark.parametrize("name,kept", [("rayjob.yaml", {("head", "mf-metrics")}),
                                       ("raycronjob.yaml", {("head", "mf-metrics")}),
                                       ("rayservice.yaml", {("head", "serve")})])
def test_prometheus_discovers_the_kuberay_pods(name: str, kept: set):
    jobs = {j["job_name"]: j for j in load(INFRA / "prometheus.yml")["scrape_configs"]}
    doc = kuberay_manifest(name)
    targets = pod_targets(doc)
    got = {(t["_group"], t["__meta_kubernetes_pod_container_port_name"])
           for t in targets if relabel(t, jobs["mf-kubernetes"]["relabel_configs"]) is not None}
    assert got == kept, f"{name}: mf-kubernetes keeps {got}, expected {kept}"
    ray_kept = {t["_group"] for t in targets if relabel(t, jobs["ray-kubernetes"]["relabel_configs"]) is not None}
    assert ray_kept == {g for g, _ in groups(cluster_spec(doc))}, ray_kept
    # another KubeRay cluster's pods (KubeRay's labels only) are not scraped
    other = {k: v for k, v in targets[0].items() if not k.startswith("__meta_kubernetes_pod_label_app_kubernetes_io")}
    other["__meta_kubernetes_pod_label_app_kubernetes_io_name"] = "kuberay"
    assert relabel(other, jobs["mf-kubernetes"]["relabel_configs"]) is None


# -- credentials, upgrades, the public route, GPU placement, catch-up ticks (issue 29) -------------------------------
def _pods(doc: dict) -> list[tuple[str, dict]]:
    return [(gname, g["template"]["spec"]) for gname, g in groups(cluster_spec(doc))]


@pytest.mark.parametrize("name", NAMES)
def test_every_pod_has_its_credentials_or_does_not_start(name: str):
    """mf-s3 is required (a pod without it stays in CreateContainerConfigError, `secret "mf-s3" not found`), every
    pod runs as the service account mf-ray (IRSA / pod identity can be bound to it ahead), and an init container
    checks the run's storage before Ray starts."""
    sa = load(INFRA / "kuberay" / "serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "mf-ray"
    image = cluster_spec(kuberay_manifest(name))["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for gname, pod in _pods(kuberay_manifest(name)):
        assert pod.get("serviceAccountName") == "mf-ray", f"{name} {gname}: no serviceAccountName"
        for c in pod["containers"] + pod.get("initContainers", []):
            refs = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert {"name": "mf-s3"} in refs, f"{name} {gname}/{c['name']}: mf-s3 not required: {refs}"
        (init,) = [c for c in pod.get("initContainers", []) if c["name"] == "check-storage"]
        assert init["image"] == image
        assert init["command"] == ["/opt/venv/bin/python", "-m", "jobs.runtime", "check-storage"]
        assert init["args"] and all(re.match(r"s3://mf-data/", a) for a in init["args"]), init["args"]
        res = init["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"]


def test_the_storage_check_covers_what_the_run_uses():
    args = check_command(entrypoint(kuberay_manifest("rayjob.yaml")), "rayjob.yaml")
    for _, pod in _pods(kuberay_manifest("rayjob.yaml")):
        (init,) = pod["initContainers"]
        assert {args.manifest, args.out, args.weights} <= set(init["args"])
    (app,) = yaml.safe_load(kuberay_manifest("rayservice.yaml")["spec"]["serveConfigV2"])["applications"]
    for _, pod in _pods(kuberay_manifest("rayservice.yaml")):
        (init,) = pod["initContainers"]
        assert {app["args"]["root"], app["args"]["weights"], *app["args"]["allowed_prefixes"]} <= set(init["args"])


def test_the_init_check_is_the_runtime_cli():
    from jobs.runtime import main

    with pytest.raises(SystemExit):
        main(["check-storage"])  # URIs are required
    assert main(["check-storage", str(REPO)]) == 0


def test_rayservice_sets_no_deprecated_field_and_its_upgrade_strategy():
    spec = kuberay_manifest("rayservice.yaml")["spec"]
    for field in ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"):
        assert field not in spec, f"rayservice.yaml sets {field}, deprecated and unused since KubeRay v1.1"
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    text = (INFRA / "kuberay" / "rayservice.yaml").read_text()
    assert "twice the GPUs" in text and "type: None" in text
    assert "twice the GPUs" in (REPO / "docs" / "cluster.md").read_text()


def test_the_public_route_has_no_metrics():
    """KubeRay's serve Service answers every path, /metrics (no token) included: the Ingress routes only the API."""
    ing = load(INFRA / "kuberay" / "ingress.yaml")
    assert ing["kind"] == "Ingress" and ing["apiVersion"] == "networking.k8s.io/v1"
    svc = kuberay_manifest("rayservice.yaml")["metadata"]["name"] + "-serve-svc"  # GenerateServeServiceName
    paths = [p for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths and all(p["backend"]["service"]["name"] == svc for p in paths)

    def routed(url: str) -> bool:
        return any(url == p["path"] if p["pathType"] == "Exact" else
                   url.startswith(p["path"].rstrip("/") + "/") or url == p["path"].rstrip("/") for p in paths)

    assert routed("/v1/edits") and routed("/v1/edits/abc/video") and routed("/healthz")
    assert not routed("/metrics") and not routed("/") and not routed("/-/routes")


@pytest.mark.parametrize("name", NAMES)
def test_gpu_pods_land_on_gpus_the_image_supports(name: str):
    """CUDA 13 wheels dropped compute capability < 7.5 (V100 and older); the model needs ~26 GiB: GPU groups
    require GPU feature discovery's labels for compute >= 8 and >= 30 GiB."""
    for g in gpu_groups(cluster_spec(kuberay_manifest(name))):
        terms = g["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        exprs = {e["key"]: e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
        major, mem = exprs["nvidia.com/gpu.compute.major"], exprs["nvidia.com/gpu.memory"]
        assert major["operator"] == "Gt" and int(major["values"][0]) >= 7
        assert mem["operator"] == "Gt" and int(mem["values"][0]) >= 30000


def test_raycronjob_runs_take_the_date_of_their_tick(monkeypatch):
    """KubeRay names a tick's RayJob <cronjob>-<minutes of the tick>; the entrypoint's --date comes from it."""
    from jobs.runtime import cron_tick_date

    doc = kuberay_manifest("raycronjob.yaml")
    args = check_command(entrypoint(doc), "raycronjob.yaml")
    name = doc["metadata"]["name"]
    assert args.date == f"$(python -m jobs.runtime cron-tick-date {name})"
    tick = 29360000  # 2025-10-27T21:20Z in minutes, as getTimeHashInMinutes writes it
    assert cron_tick_date(name, f"{name}-{tick}-ab1cd")[0] == "2025-10-27"
    assert cron_tick_date(name, f"{name}-{tick}")[0] == "2025-10-27"
    assert cron_tick_date(name, f"{name}-{tick + 1440}-zz9zz")[0] == "2025-10-28"
    assert cron_tick_date(name, "other-29360000-ab1cd")[1].startswith("today")
    monkeypatch.setenv("RAY_JOB_SUBMISSION_ID", f"{name}-{tick}-q1w2e")  # the submitter pod's variable
    monkeypatch.delenv("RAY_CLUSTER_NAME", raising=False)
    assert cron_tick_date(name)[0] == "2025-10-27"
    import subprocess
    import sys

    out = subprocess.run(["bash", "-c", f'echo "$(python -m jobs.runtime cron-tick-date {name})"'], cwd=REPO,
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO),
                              "RAY_JOB_SUBMISSION_ID": f"{name}-{tick}-q1w2e"})
    assert out.stdout.strip() == "2025-10-27", out.stderr


def test_the_operator_values_turn_the_raycronjob_gate_on():
    values = load(INFRA / "kuberay" / "kuberay-values.yaml")
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates.get("RayCronJob") is True


def test_the_dashboards_pool_size_is_a_setting():
    """A Grafana `constant` variable is hidden whatever `hide` says: the edit-actor count must be settable."""
    dash = load(INFRA / "grafana" / "motionfollower.json")
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "edit_actors"]
    assert var["type"] == "textbox" and var.get("hide", 0) == 0 and var["query"] == "1"
