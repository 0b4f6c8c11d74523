"""ray_cluster.yaml checked the way `ray up` checks it, offline: against the schema that ships in the installed ray
package (ray/autoscaler/ray-schema.json, JSON Schema draft-07) and through Ray's own prepare_config/validate_config
(the first steps of `ray up`, before any cloud call); the docker command Ray runs on a node is built by Ray's
docker_start_cmds and must not depend on the environment of the machine running `ray up`."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from tests.infra.test_infra import REPO, VENV_BIN, check_command, load, lock_pins

CONFIG = REPO / "ray_cluster.yaml"
TOKEN_PATH = "~/.ray/auth_token"  # where Ray's token auth looks without RAY_AUTH_TOKEN(_PATH)
# variables Ray itself sets for the commands it runs on a node (with_head_node_ip: worker start commands)
RAY_SET_VARS = {"RAY_HEAD_IP"}
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _prepared() -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(load(CONFIG)))


def test_installed_ray_is_the_pinned_ray():
    import ray

    assert ray.__version__ == lock_pins()["ray"]


def test_against_rays_schema():
    schema = _schema()
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/")
    validator = jsonschema.Draft7Validator(schema)
    for label, config in (("as written", load(CONFIG)), ("after prepare_config", _prepared())):
        errs = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
        assert not errs, f"ray_cluster.yaml {label}:\n" + "\n".join(errs)


def test_rays_prepare_and_validate_config():
    from ray.autoscaler._private.util import validate_config

    config = _prepared()
    validate_config(config)  # raises on an invalid config
    head = config["head_node_type"]
    assert config["available_node_types"][head]["max_workers"] == 0
    workers = [t for n, t in config["available_node_types"].items() if n != head]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers), "no GPU worker type"


def test_schema_check_is_strict():
    """Ray's schema rejects unknown top-level and docker fields, so the test above can fail."""
    from ray.autoscaler._private.util import validate_config

    bad = _prepared()
    bad["docker"]["run_option"] = ["--gpus all"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


def _unexpanded_vars(cmd: str) -> set[str]:
    """``$VAR``/``${VAR}`` a command uses that it does not assign itself (``VAR=... cmd``)."""
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", cmd))
    assigned = set(re.findall(r"(?:^|[\s;&|(])([A-Za-z_][A-Za-z0-9_]*)=", cmd))
    return used - assigned


def test_nothing_depends_on_the_environment_of_ray_up():
    """Ray runs run_options and the commands verbatim over ssh on the node: a `$VAR` there is the node's variable,
    unset, so `-e RAY_AUTH_TOKEN=${MF_RAY_TOKEN}` gave `ray start` an empty token."""
    config = load(CONFIG)
    docker = config["docker"]
    for key in ("run_options", "head_run_options", "worker_run_options"):
        for opt in docker.get(key, []):
            assert not _unexpanded_vars(opt), f"docker.{key}: {opt!r} reads the node's environment"
    for key in COMMAND_KEYS:
        allowed = RAY_SET_VARS if key == "worker_start_ray_commands" else set()
        for cmd in config.get(key, []):
            assert _unexpanded_vars(cmd) <= allowed, f"{key}: {cmd!r} reads {_unexpanded_vars(cmd) - allowed}"


def _dockerfile_home() -> str:
    text = (REPO / "infra" / "Dockerfile").read_text()
    homes = re.findall(r"^ENV HOME=(\S+)", text, re.M)
    assert homes, "the image sets no HOME (Ray reads it from the image config to place file mounts)"
    return homes[-1]


def test_token_reaches_every_node():
    """Token auth without environment variables: the token file is a file mount to the path Ray reads, the
    containers start with RAY_AUTH_MODE=token, and the setup commands stop early without the file."""
    from ray.autoscaler._private.docker import docker_start_cmds

    config = _prepared()
    assert config["file_mounts"].get(TOKEN_PATH) == TOKEN_PATH, f"no file mount of {TOKEN_PATH}"
    docker = config["docker"]
    home = _dockerfile_home()
    for node, extra in (("head", docker.get("head_run_options", [])), ("worker", docker.get("worker_run_options"))):
        cmd = docker_start_cmds("ubuntu", docker["image"], config["file_mounts"], docker["container_name"],
                                docker["run_options"] + (extra or []), config["cluster_name"], home, "docker")
        assert "-e RAY_AUTH_MODE=token" in cmd, f"{node}: {cmd}"
        assert f":{home}/.ray/auth_token " in cmd, f"{node}: the token file is not mounted at {home}/.ray: {cmd}"
        assert "RAY_AUTH_TOKEN" not in cmd and "$" not in cmd, f"{node}: {cmd}"
    assert any(TOKEN_PATH in c and "test -s" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("ray start" in c and "RAY_AUTH_MODE=token" in c for c in config[key]), key


def test_image_and_gpus():
    config = load(CONFIG)
    docker = config["docker"]
    assert not docker["image"].endswith(":latest") and ":" in docker["image"].rsplit("/", 1)[-1]
    assert "--gpus all" in docker.get("worker_run_options", [])
    assert not any("--gpus" in o for o in docker["run_options"]), "the CPU head asks for GPUs"
    assert any("torch.cuda.is_available()" in c for c in config["worker_setup_commands"])
    for cmd in config["setup_commands"]:
        if cmd.startswith(("mf ", VENV_BIN + "mf ")):
            check_command(cmd.split(">")[0], "ray_cluster.yaml: setup_commands")


def test_the_image_has_what_the_launcher_runs():
    """The launcher rsyncs into the container (`rsync -e 'docker exec -i'`) and the head's autoscaler reaches the
    workers over ssh: both tools must be in the image."""
    text = (REPO / "infra" / "Dockerfile").read_text()
    for pkg in ("rsync", "openssh-client"):
        assert re.search(rf"^\s+{re.escape(pkg)}=", text, re.M), f"the image does not install {pkg}"


# -- credentials of the nodes that touch storage --------------------------------------------------------------------
AWS = REPO / "infra" / "aws"


def _profile_name(node_type: dict) -> str:
    profile = node_type["node_config"].get("IamInstanceProfile") or {}
    return profile.get("Name") or profile.get("Arn", "").rsplit("/", 1)[-1]


def test_every_node_type_gets_storage_credentials():
    """Ray's AWS provider gives only the head a (default) instance profile; the head has CPU: 0, so every prepare,
    edit and stitch reads and writes s3:// from a worker: each worker type names its own profile, the head names one
    that may pass it (without one, Ray's default head role has no iam:PassRole and cannot launch the workers)."""
    config = load(CONFIG)
    types = config["available_node_types"]
    head = config["head_node_type"]
    names = {n: _profile_name(t) for n, t in types.items()}
    assert all(names.values()), f"node types without an IamInstanceProfile: {[n for n, v in names.items() if not v]}"
    workers = {names[n] for n in types if n != head}
    assert names[head] not in workers, "the head's profile (EC2 + PassRole) is given to the workers"
    script = (AWS / "create-iam.sh").read_text()
    for name in {names[head], *workers}:
        assert re.search(rf"^role {re.escape(name)}$", script, re.M), f"infra/aws/create-iam.sh does not create {name}"
    passrole = json.loads((AWS / "pass-worker-role.json").read_text())
    passed = {s["Resource"].rsplit("/", 1)[-1] for s in passrole["Statement"] if s["Action"] == "iam:PassRole"}
    assert workers <= passed, f"the head may not pass {workers - passed}"
    s3 = json.loads((AWS / "s3-access.json").read_text())
    actions = {a for s in s3["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    for name in workers:
        assert re.search(rf"--role-name {name} --policy-name \S+ --policy-document file://s3-access\.json", script)
    trust = json.loads((AWS / "ec2-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_rays_bootstrap_keeps_the_configured_head_profile():
    """With the head's IamInstanceProfile set, Ray's AWS bootstrap makes no default role (no AWS call) and launches
    each node type with its own profile."""
    from ray.autoscaler._private.aws.config import _configure_iam_role

    config = _prepared()
    before = copy.deepcopy(config["available_node_types"])
    out = _configure_iam_role(config)
    assert out["available_node_types"] == before
    assert "IamInstanceProfile" not in out.get("head_node", {})


# -- Prometheus service discovery on the head host ------------------------------------------------------------------
def test_rays_service_discovery_file_is_on_the_host():
    """Ray writes /tmp/ray/session_*/prom_metrics_service_discovery.json and keeps /tmp/ray/<that name> pointing at it
    (ray._private.metrics_agent); infra/prometheus.yml's `ray` job reads it on the head host: the container's
    /tmp/ray must be the host's /tmp/ray (the same path, so the link resolves there too) and belong to the image's
    user before the container starts."""
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE
    from ray.autoscaler._private.docker import docker_start_cmds

    config = _prepared()
    docker = config["docker"]
    for extra in (docker.get("head_run_options", []), docker.get("worker_run_options", [])):
        cmd = docker_start_cmds("ubuntu", docker["image"], config["file_mounts"], docker["container_name"],
                                docker["run_options"] + (extra or []), config["cluster_name"], "/home/ray", "docker")
        assert "-v /tmp/ray:/tmp/ray " in cmd + " " and "--net=host" in cmd, cmd
    assert any(re.search(r"chown 1000:1000 /tmp/ray\b", c) for c in config["initialization_commands"])
    uid = re.findall(r"^USER (\d+)", (REPO / "infra" / "Dockerfile").read_text(), re.M)[-1]
    assert uid == "1000"
    prom = load(REPO / "infra" / "prometheus.yml")
    (ray_job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "ray"]
    files = [f for sd in ray_job["file_sd_configs"] for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"], files
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "--metrics-export-port=8080" in config[key][-1], key
