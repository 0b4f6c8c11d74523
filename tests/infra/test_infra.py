"""Every YAML/JSON under infra/ and ray_cluster.yaml parses, and the entry points they name exist; helpers shared by
the stricter checks of tests/infra/test_infra_*.py (KubeRay CRD schemas, the Ray cluster launcher, hadolint,
promtool, metric names)."""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from pipelines.batch.metrics import PipelineMetrics

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
YAML_FILES = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), REPO / "ray_cluster.yaml"])
JSON_FILES = sorted(INFRA.rglob("*.json"))
KUBERAY = {"rayjob.yaml": "RayJob", "raycronjob.yaml": "RayCronJob", "rayservice.yaml": "RayService"}
IMAGE_REPO = "ghcr.io/motionfollower/motionfollower-ray"
VENV_BIN = "/opt/venv/bin/"  # the image's venv (infra/Dockerfile)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (the API server's strict decoding does; PyYAML keeps the
    last one silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load(path: Path):
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_UniqueKeyLoader)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def need_tool(path: str | None, what: str, install: str) -> str:
    """The tool's path; where it is missing, skip with the install hint (fail in CI, whose .ci/run installs it)."""
    if path:
        return path
    msg = f"TOOL-MISSING: {what} not found; install it with: {install}"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def project_version() -> str:
    """``[project] version`` of pyproject.toml."""
    m = re.search(r'^\[project\]$(?:(?!^\[).)*?^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(),
                  re.M | re.S)
    assert m, "pyproject.toml has no [project] version"
    return m.group(1)


def lock_pins(path: Path | None = None) -> dict[str, str]:
    """``{name: version}`` of a lock (default requirements.lock): extras dropped, names normalised (PEP 503)."""
    pins = {}
    for line in (path or REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;\\]+)", line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return pins


def _subcommands() -> dict[str, set[str]]:
    """``{"retarget": set(), "dataset": {"run", "schedule"}, ...}`` from the real parser."""
    parser = build_parser()
    top = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out: dict[str, set[str]] = {}
    for name, sub in top.choices.items():
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        out[name] = set(nested[0].choices) if nested else set()
    return out


def _module_exists(dotted: str) -> bool:
    """Importable, or present as a file in the repo (a module being written elsewhere must at least exist)."""
    try:
        if importlib.util.find_spec(dotted) is not None:
            return True
    except (ImportError, ValueError):
        pass
    rel = Path(*dotted.split("."))
    return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()


def check_command(cmd: str, where: str):
    """An entrypoint line runs `mf SUB [SUBSUB]` or `python -m MODULE` that exists; returns the parsed arguments of
    an `mf` command (the real parser: SystemExit on an argument it rejects)."""
    argv = shlex.split(cmd)
    assert argv, f"{where}: empty command"
    if argv[0].startswith(VENV_BIN) and argv[0][len(VENV_BIN):] in ("mf", "python"):
        argv[0] = argv[0][len(VENV_BIN):]  # the image's venv named by path (ray_cluster.yaml's login shells)
    if argv[0] == "mf" or argv[:3] == ["python", "-m", "jobs.cli"]:
        rest = argv[1:] if argv[0] == "mf" else argv[3:]
        if rest and rest[0] in ("--help", "-h"):
            return None
        subs = _subcommands()
        assert rest and rest[0] in subs, f"{where}: `mf {rest[:1]}` is not an mf sub-command ({sorted(subs)})"
        if subs[rest[0]]:
            assert len(rest) > 1 and rest[1] in subs[rest[0]], \
                f"{where}: `mf {rest[0]} {rest[1:2]}` is not one of {sorted(subs[rest[0]])}"
        return build_parser().parse_args(rest)
    if argv[0].startswith("python") and len(argv) > 2 and argv[1] == "-m":
        assert _module_exists(argv[2]), f"{where}: module {argv[2]} not found"
        return None
    pytest.fail(f"{where}: entry point {argv[0]!r} is neither `mf ...` nor `python -m ...`")


def kuberay_manifest(name: str) -> dict:
    return load(INFRA / "kuberay" / name)


def cluster_spec(doc: dict) -> dict:
    """The RayClusterSpec of a RayJob, RayCronJob or RayService."""
    spec = doc["spec"]
    return {"RayJob": lambda: spec["rayClusterSpec"], "RayCronJob": lambda: spec["jobTemplate"]["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def entrypoint(doc: dict) -> str | None:
    spec = doc["spec"]
    if doc["kind"] == "RayCronJob":
        spec = spec["jobTemplate"]
    return spec.get("entrypoint")


def groups(cluster: dict) -> list[tuple[str, dict]]:
    """``[("head", headGroupSpec), (groupName, workerGroupSpec), ...]``."""
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def _containers(cluster: dict) -> list[dict]:
    return [c for _, g in groups(cluster) for c in g["template"]["spec"]["containers"]]


def gpus_of(container: dict) -> int:
    return int((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def gpu_groups(cluster: dict) -> list[dict]:
    return [g for g in cluster["workerGroupSpecs"] if any(gpus_of(c) for c in g["template"]["spec"]["containers"])]


def image_refs() -> dict[str, str]:
    """Every container image the deployment files name: ``{where: image}``."""
    refs = {"ray_cluster.yaml docker.image": load(REPO / "ray_cluster.yaml")["docker"]["image"]}
    for name in KUBERAY:
        for gname, g in groups(cluster_spec(kuberay_manifest(name))):
            for c in g["template"]["spec"]["containers"]:
                refs[f"{name} {gname}/{c['name']}"] = c["image"]
    return refs


@pytest.mark.parametrize("path", YAML_FILES + JSON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses(path: Path):
    doc = load(path)  # duplicate keys fail here
    assert isinstance(doc, dict) and doc, f"{path} is empty or not a mapping"


def test_expected_files_exist():
    for name in ["Dockerfile", "Dockerfile.dockerignore", "prometheus.yml", "grafana/motionfollower.json",
                 *(f"kuberay/{k}" for k in KUBERAY)]:
        assert (INFRA / name).is_file(), f"infra/{name} is missing"
    assert (REPO / "ray_cluster.yaml").is_file()


@pytest.mark.parametrize("name,kind", sorted(KUBERAY.items()))
def test_kuberay_manifests(name: str, kind: str):
    doc = kuberay_manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"]
    if kind == "RayJob":
        check_command(spec["entrypoint"], f"{name}: spec.entrypoint")
    elif kind == "RayCronJob":
        assert len(spec["schedule"].split()) == 5, f"{name}: spec.schedule is not a cron expression"
        from croniter import croniter
        assert croniter.is_valid(spec["schedule"])
        check_command(spec["jobTemplate"]["entrypoint"], f"{name}: spec.jobTemplate.entrypoint")
        assert spec["jobTemplate"]["entrypoint"].split()[:3] == ["mf", "dataset", "run"]
    else:
        serve = yaml.safe_load(spec["serveConfigV2"])
        apps = serve["applications"]
        assert apps, f"{name}: no Serve applications"
        for app in apps:
            _check_serve_app(app, name)
    cluster = cluster_spec(doc)
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert gpu_groups(cluster), f"{name}: no GPU worker group"
    for g in gpu_groups(cluster):
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # token auth through KubeRay (authOptions + a secret with the key auth_token), never by hand: KubeRay adds
    # RAY_AUTH_MODE/RAY_AUTH_TOKEN only where a container does not set them, and sends the token itself
    assert cluster.get("authOptions", {}).get("mode") == "token", f"{name}: no authOptions.mode: token"
    assert cluster["authOptions"].get("secretName"), f"{name}: authOptions.secretName (key auth_token) not set"
    for c in _containers(cluster):
        hand_set = {e["name"] for e in c.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
        assert not hand_set, f"{name}: container {c['name']} sets {sorted(hand_set)}; authOptions does that"


def _check_serve_app(app: dict, where: str) -> None:
    """The import path is the app builder of jobs.serve, the configured deployments are its deployments, and its
    ``args`` plus the containers' MF_SERVE_TOKENS build the application (as Serve does on the cluster)."""
    from ray import serve

    module, _, attr = app["import_path"].partition(":")
    assert attr, f"{where}: import_path {app['import_path']!r} must be module:attribute"
    assert module == "jobs.serve"
    mod = importlib.import_module(module)
    builder = getattr(mod, attr, None)
    assert callable(builder) and len(inspect.signature(builder).parameters) == 1, \
        f"{where}: jobs.serve:{attr} is no application builder (one parameter, the args)"
    names = {d.name for d in vars(mod).values() if isinstance(d, serve.Deployment)}
    for d in app.get("deployments", []):
        assert d["name"] in names, f"{where}: jobs.serve has no deployment {d['name']} ({sorted(names)})"
    env = app.get("runtime_env", {}).get("env_vars", {})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**env, "MF_SERVE_TOKENS": "token-from-the-secret"}.items():
            mp.setenv(k, str(v))
        assert isinstance(builder(app.get("args", {})), serve.Application), f"{where}: {attr} built no application"


def test_ray_cluster_yaml():
    doc = load(REPO / "ray_cluster.yaml")
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    assert doc["docker"]["image"]
    gpu = [n for n, t in types.items() if n != doc["head_node_type"]]
    assert gpu, "no worker node type"
    for n in gpu:
        assert 0 <= types[n]["min_workers"] <= types[n]["max_workers"] <= doc["max_workers"]
    assert any("--gpus" in o for o in doc["docker"].get("worker_run_options", []))
    assert doc["setup_commands"]
    assert "-e RAY_AUTH_MODE=token" in doc["docker"]["run_options"], "containers start without RAY_AUTH_MODE=token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "ray start" in " ".join(doc[key]), f"ray_cluster.yaml: {key}"
    assert "--head" in " ".join(doc["head_start_ray_commands"])
    mf_cmds = [c for c in doc["setup_commands"] if c.startswith(("mf ", VENV_BIN + "mf "))]
    assert mf_cmds, "ray_cluster.yaml: no setup command checks the image's mf"
    for cmd in mf_cmds:
        check_command(cmd.split(">")[0], "ray_cluster.yaml: setup_commands")


def test_images_are_one_pinned_tag():
    """ray_cluster.yaml and every KubeRay container run the same image, tagged with the project version."""
    refs = image_refs()
    want = f"{IMAGE_REPO}:{project_version()}"
    wrong = {where: img for where, img in refs.items() if img != want}
    assert not wrong, f"images other than {want}: {wrong}"


def test_dockerfile_installs_the_project():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+:\S+", text, re.M) and not re.search(r"^FROM \S+:latest\b", text, re.M)
    assert "infra/image/requirements.lock" in text and "ffmpeg" in text
    assert "pip install --no-cache-dir --no-deps --no-build-isolation -e ." in text
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


def test_prometheus_scrapes_the_metrics_endpoints():
    doc = load(INFRA / "prometheus.yml")
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert {"mf-pipeline", "mf-serve"} <= set(jobs)
    for name in ("mf-pipeline", "mf-serve"):
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in jobs[name]["static_configs"] for t in sc["targets"]]
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)


def _exposed_names() -> set[str]:
    """Sample names a PipelineMetrics registry exposes (…_total, …_bucket, …_sum, …_count)."""
    return exposed_names(PipelineMetrics().registry)


def exposed_names(registry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count", "")}
    names = set()
    for fam in registry.collect():  # families, so a labelled series with no child yet still counts
        names |= {fam.name + sfx for sfx in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """``[(where, PromQL), ...]`` of every panel target."""
    dash = load(INFRA / "grafana" / "motionfollower.json")
    return [(f"panel {p['id']} ({p['title']}) {t['refId']}", t["expr"])
            for p in dash["panels"] for t in p.get("targets", [])]


def dashboard_metric_names(include_serve: bool = False) -> set[str]:
    """The mf_* series the dashboard's panels query. By default those of the pipeline (PipelineMetrics, which `mf
    retarget`/`mf dataset run` expose); ``include_serve`` adds the Serve app's own ``mf_serve_*``."""
    names: set[str] = set()
    for _, expr in dashboard_exprs():
        names |= set(re.findall(r"\b(mf_[a-z0-9_]+)", expr))
    return names if include_serve else {n for n in names if not n.startswith("mf_serve_")}


def test_grafana_dashboard_uses_only_emitted_metrics():
    dash = load(INFRA / "grafana" / "motionfollower.json")
    assert dash["title"] and dash["panels"]
    used = dashboard_metric_names()
    exposed = _exposed_names()
    assert used and used <= exposed, f"dashboard uses metrics the pipeline does not emit: {sorted(used - exposed)}"
    # every panel family the issue asks for is there
    for needed in ("mf_frames_total", "mf_requests_total", "mf_windows_total", "mf_stage_seconds_bucket",
                   "mf_actor_busy_seconds_total", "mf_queue_depth", "mf_gpu_memory_peak_bytes"):
        assert needed in used, f"dashboard has no panel over {needed}"
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.95" in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
