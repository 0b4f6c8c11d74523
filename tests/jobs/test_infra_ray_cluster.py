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

from tests.jobs.test_infra import REPO, check_command, load, lock_pins

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
        if cmd.startswith("mf "):
            check_command(cmd.split(">")[0], "ray_cluster.yaml: setup_commands")


def test_the_image_has_what_the_launcher_runs():
    """The launcher rsyncs into the container (`rsync -e 'docker exec -i'`) and the head's autoscaler reaches the
    workers over ssh: both tools must be in the image."""
    text = (REPO / "infra" / "Dockerfile").read_text()
    for pkg in ("rsync", "openssh-client"):
        assert re.search(rf"^\s+{re.escape(pkg)}=", text, re.M), f"the image does not install {pkg}"
