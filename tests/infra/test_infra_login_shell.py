"""ray_cluster.yaml's setup and start commands run the way Ray's cluster launcher runs them in the image's container.

Ray's DockerCommandRunner turns every setup and start command into
``docker exec -it mf_ray /bin/bash -c 'bash --login -c -i '"'"'source ~/.bashrc; ... && (CMD)'"'"''``. A login
shell reads /etc/profile, which on Debian 12 (the image's base) sets PATH afresh for non-root users (the image runs
as uid 1000) and then sources /etc/profile.d/*.sh. So the test:

- builds each command string with Ray's own DockerCommandRunner (its ssh step replaced by a recorder) and runs what
  `docker exec` would run inside the container: the ``/bin/bash -c ...`` part, as uid 1000, with the container's
  environment (the Dockerfile's ``ENV PATH`` and ``HOME``);
- in a private mount namespace (``unshare -m``, root only; nothing outside the namespace changes), where
  /etc/profile is Debian 12's stock file (vendored in tests/infra/schemas/debian12-etc-profile), /etc/profile.d holds
  only what the image puts there (infra/image/mf-venv.sh) and /opt/venv is this test's venv (with a recording stub for
  ``ray`` so ``ray stop``/``ray start`` start nothing);
- checks the venv's tools are found by the login shell, that the setup commands pass (``mf --help``, the PATH
  check, the token file) or fail only for the lack of a GPU (the torch import works: the venv's python ran), and
  that the start commands reach the venv's ``ray`` with RAY_AUTH_MODE=token;
- and, as the control, that without the image's profile.d file a login shell loses the venv (``mf: command not
  found``), which is what ``ray up`` hit before.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.infra.test_infra import INFRA, REPO, in_ci, load

DOCKERFILE = INFRA / "Dockerfile"
SNIPPET = INFRA / "image" / "mf-venv.sh"
DEBIAN_PROFILE = Path(__file__).with_name("schemas") / "debian12-etc-profile"
VENV = "/opt/venv"
UID = 1000
VENV_TOOLS = ("mf", "python", "python3", "ray", "serve", "pip")


# -- static checks --------------------------------------------------------------------------------------------------
def _commands(config: dict, key: str) -> list[str]:
    return list(config.get(key) or [])


def command_words(cmd: str) -> list[str]:
    """The words in command position of a shell command line (after ``;``, ``&&``, ``||``, ``|``, braces and
    parentheses, past ``VAR=value`` assignments); quoted text is one word and never a command."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=";&|(){}")
    lex.whitespace_split = True
    words, at_start = [], True
    for tok in lex:
        if tok and set(tok) <= set(";&|(){}"):
            at_start = True
        elif at_start and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tok):
            continue
        elif at_start:
            words.append(tok)
            at_start = tok in ("!", "then", "do", "else", "exec")
    return words


def test_every_command_names_the_venvs_tools_by_path():
    """Belt and braces with the profile.d file: each command that runs mf, python or ray names /opt/venv/bin/..."""
    config = load(REPO / "ray_cluster.yaml")
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    seen = set()
    for key in keys:
        for cmd in _commands(config, key):
            for word in command_words(cmd):
                if word.rsplit("/", 1)[-1] in VENV_TOOLS:
                    assert word.startswith(f"{VENV}/bin/"), f"{key}: {cmd!r} runs {word!r}, not {VENV}/bin/{word}"
                    seen.add(word.rsplit("/", 1)[-1])
    assert {"mf", "python", "ray"} <= seen
    assert command_words("A=1 ray start; x && { python -c 'mf'; }") == ["ray", "x", "python"]


def test_the_image_installs_the_profile_snippet():
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY infra/image/mf-venv\.sh /etc/profile\.d/mf-venv\.sh$", text, re.M)
    assert re.search(rf"^\s*PATH={VENV}/bin:\$PATH", text, re.M) or f"PATH={VENV}/bin:$PATH" in text
    snippet = SNIPPET.read_text()
    assert f'PATH="{VENV}/bin:${{PATH}}"' in snippet and "export PATH" in snippet
    assert re.search(rf"^RUN python -m venv {VENV}\b", text, re.M), "the venv is no longer at /opt/venv"
    users = re.findall(r"^USER (\d+)", text, re.M)
    assert users and int(users[-1]) == UID


def test_vendored_profile_is_debians():
    """The vendored /etc/profile is base-files' (Debian 12): it resets PATH for non-root users, then sources
    /etc/profile.d/*.sh. Where this machine is Debian 12 too, it is byte for byte the machine's."""
    text = DEBIAN_PROFILE.read_text()
    assert 'PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"' in text
    assert "for i in /etc/profile.d/*.sh; do" in text
    osr = Path("/etc/os-release")
    if osr.exists() and 'VERSION_ID="12"' in osr.read_text() and "ID=debian" in osr.read_text():
        assert Path("/etc/profile").read_text() == text


# -- the commands as Ray runs them ----------------------------------------------------------------------------------
class _Recorder:
    """Stands in for DockerCommandRunner's SSHCommandRunner: records the command it would send over ssh and answers
    `docker exec ... printenv HOME` with the container's HOME."""

    def __init__(self, home: str):
        self.home = home
        self.sent: list[str] = []

    def run(self, cmd, with_output=False, **_):
        if "printenv HOME" in cmd:
            return self.home.encode()
        self.sent.append(cmd)
        return b""


def _docker_exec_commands(config: dict, cmds: list[str], home: str, env: dict | None = None) -> list[list[str]]:
    """What `docker exec` runs in the container for each command: the argv after the container's name."""
    from ray.autoscaler._private.command_runner import DockerCommandRunner

    runner = DockerCommandRunner.__new__(DockerCommandRunner)
    runner.container_name = config["docker"]["container_name"]
    runner.docker_config = config["docker"]
    runner.home_dir = None
    runner.initialized = True
    runner.docker_cmd = "docker"
    runner.ssh_command_runner = _Recorder(home)
    out = []
    for cmd in cmds:
        runner.run(cmd, environment_variables=env, run_env="auto")
        argv = shlex.split(runner.ssh_command_runner.sent[-1])
        assert argv[:2] == ["docker", "exec"] and "-it" in argv, argv
        rest = argv[argv.index(runner.container_name) + 1:]
        assert rest[:2] == ["/bin/bash", "-c"] and rest[2].startswith("bash --login -c -i "), rest
        out.append(rest)
    return out


def _container_path() -> str:
    """The container's PATH: the Dockerfile's `PATH=/opt/venv/bin:$PATH` over the python base image's PATH."""
    base = "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert f"PATH={VENV}/bin:$PATH" in DOCKERFILE.read_text()
    return f"{VENV}/bin:{base}"


def _need_namespace() -> None:
    why = None
    if os.geteuid() != 0:
        why = "needs root (unshare -m, mount, setpriv)"
    elif not (shutil.which("unshare") and shutil.which("setpriv")):
        why = "needs unshare and setpriv (util-linux)"
    else:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            why = f"cannot make a mount namespace: {probe.stderr.strip()}"
    if why:
        msg = f"TOOL-MISSING: the login-shell test {why}"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


def _blocked_ancestor(path: Path) -> tuple[Path, Path] | None:
    """The first directory on ``path`` that others cannot traverse, and its child on the way (uid 1000 runs the
    venv's python, whose base interpreter may live under root's home)."""
    for parent in list(reversed(path.parents))[1:]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            child = path.relative_to(parent).parts[0]
            return parent, parent / child
    return None


def _fake_venv(root: Path) -> Path:
    """/opt/venv as this test's venv: its pyvenv.cfg and lib/, bin/ linking every tool but `ray`, which is a stub
    that records its arguments and RAY_AUTH_MODE instead of starting or stopping anything."""
    real = Path(sys.prefix)
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(real / "pyvenv.cfg", venv / "pyvenv.cfg")
    for sub in ("lib", "lib64", "include"):
        if (real / sub).exists():
            (venv / sub).symlink_to(real / sub)
    for entry in (real / "bin").iterdir():
        if entry.name != "ray":
            (venv / "bin" / entry.name).symlink_to(entry)
    stub = venv / "bin" / "ray"
    stub.write_text('#!/bin/sh\necho "RAY-STUB auth=${RAY_AUTH_MODE:-} head=${RAY_HEAD_IP:-} args=$*"\n')
    stub.chmod(0o755)
    return venv


@pytest.fixture
def tmp_path():
    """A temporary folder uid 1000 can reach (pytest's own lies under root's 0700 /tmp/pytest-of-root)."""
    path = Path(tempfile.mkdtemp(prefix="mf-login-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_as_container_user(tmp_path: Path, argv_list: list[list[str]], *, profile_d: bool = True,
                           extra_env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Run each argv (what `docker exec` runs) as uid 1000 in a mount namespace laid out as the image."""
    home = tmp_path / "home"
    sysroot = Path(tempfile.mkdtemp(prefix="sys-", dir=tmp_path))
    pd = sysroot / "profile.d"
    pd.mkdir(parents=True)
    if profile_d:
        shutil.copy(SNIPPET, pd / "mf-venv.sh")
    venv = _fake_venv(sysroot)
    os.chown(tmp_path, UID, UID)  # the user's home lies below
    for path in [home, *home.rglob("*")]:
        os.chown(path, UID, UID)
    setup = ["set -e", "mount --make-rprivate /",
             f"mount --bind {shlex.quote(str(DEBIAN_PROFILE))} /etc/profile",
             f"mount --bind {shlex.quote(str(pd))} /etc/profile.d",
             "mount -t tmpfs -o mode=755 tmpfs /opt",
             f"cp -a {shlex.quote(str(venv))} /opt/venv"]
    blocked = _blocked_ancestor(Path(os.path.realpath(sys.executable)))
    if blocked:  # e.g. /root (0700) above the base interpreter: show uid 1000 only the interpreter's tree
        parent, child = blocked
        keep = sysroot / "keep"
        setup += [f"mkdir -p {keep} && mount --bind {shlex.quote(str(child))} {keep}",
                  f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(parent))}",
                  f"mkdir -p {shlex.quote(str(child))} && mount --bind {keep} {shlex.quote(str(child))}"]
    env = {"HOME": str(home), "PATH": _container_path(), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "LANG": "C.UTF-8", **(extra_env or {})}
    results = []
    for argv in argv_list:
        run = " ".join(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "env", "-i",
                        *(shlex.quote(f"{k}={v}") for k, v in env.items()), *map(shlex.quote, argv)])
        script = "\n".join([*setup, f"cd {shlex.quote(str(home))}", run])
        results.append(subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                                      capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL))
    return results


def _home(tmp_path: Path) -> Path:
    """The image user's home as useradd --create-home lays it out (Debian's /etc/skel), plus the token file the
    cluster's file_mounts put there."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    for name in (".bashrc", ".profile", ".bash_logout"):
        if Path("/etc/skel", name).exists():
            shutil.copy(Path("/etc/skel", name), home / name)
    (home / ".bashrc").touch()  # Ray's wrapper sources it
    (home / ".ray" / "auth_token").write_text("t" * 64)
    (home / ".ray" / "auth_token").chmod(0o600)
    return home


def _noise(stderr: str) -> str:
    """stderr without bash's job-control notices (`-i` without a terminal)."""
    return "\n".join(ln for ln in stderr.splitlines()
                     if "cannot set terminal process group" not in ln and "no job control" not in ln)


def test_setup_and_start_commands_run_as_ray_runs_them(tmp_path: Path):
    _need_namespace()
    config = load(REPO / "ray_cluster.yaml")
    home = str(_home(tmp_path))
    probe = "command -v mf python ray; python -c 'import sys, ray, torch; print(sys.prefix)'"
    head_setup = _commands(config, "setup_commands") + _commands(config, "head_setup_commands")
    worker_setup = _commands(config, "worker_setup_commands")
    gpu_free = [c for c in worker_setup if not c.startswith("nvidia-smi")]  # no nvidia-smi on this machine
    head_start = _commands(config, "head_start_ray_commands")
    from ray.autoscaler._private.util import with_head_node_ip

    worker_start = with_head_node_ip(_commands(config, "worker_start_ray_commands"), "10.0.0.7")
    worker_env = {"RAY_OVERRIDE_RESOURCES": {"CPU": 8, "GPU": 1}}  # what the updater adds for a worker type
    argvs = _docker_exec_commands(config, [probe, *head_setup, *gpu_free], home)
    argvs += _docker_exec_commands(config, head_start, home, {"RAY_USAGE_STATS_ENABLED": 0})
    argvs += _docker_exec_commands(config, worker_start, home, worker_env)
    res = _run_as_container_user(tmp_path, argvs)
    it = iter(res)

    first = next(it)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.split()
    assert lines[:3] == [f"{VENV}/bin/mf", f"{VENV}/bin/python", f"{VENV}/bin/ray"], first.stdout
    assert lines[3] == VENV, f"python's prefix is {lines[3]}, not the venv"

    for cmd in head_setup:
        r = next(it)
        assert r.returncode == 0, f"setup command {cmd!r} failed as Ray runs it:\n{r.stdout}{_noise(r.stderr)}"
    for cmd in gpu_free:  # without a GPU these fail, but only once torch imported in the venv's python
        r = next(it)
        err = _noise(r.stderr)
        assert "command not found" not in err and "ModuleNotFoundError" not in err, f"{cmd!r}:\n{err}"
        assert r.returncode != 0 and ("CUDA unavailable: torch" in err or "CUDA" in err or "cuda" in err), err
    for cmd in head_start:
        r = next(it)
        assert r.returncode == 0, f"{cmd!r}:\n{r.stdout}{_noise(r.stderr)}"
        assert "RAY-STUB" in r.stdout, r.stdout
        if "start" in cmd:
            assert "auth=token" in r.stdout and "args=start --head" in r.stdout, r.stdout
    for cmd in worker_start:
        r = next(it)
        assert r.returncode == 0, f"{cmd!r}:\n{r.stdout}{_noise(r.stderr)}"
        if "start" in cmd.split("ray", 1)[-1]:
            assert "auth=token head=10.0.0.7 args=start --address=10.0.0.7:6379" in r.stdout, r.stdout


def test_without_the_profile_snippet_login_shells_lose_the_venv(tmp_path: Path):
    """The control: the same login shell in an image without /etc/profile.d/mf-venv.sh is what `ray up` hit."""
    _need_namespace()
    config = load(REPO / "ray_cluster.yaml")
    home = str(_home(tmp_path))
    (argv,) = _docker_exec_commands(config, ["mf --help > /dev/null"], home)
    (r,) = _run_as_container_user(tmp_path, [argv], profile_d=False)
    assert r.returncode == 127 and "mf: command not found" in r.stderr, r.stdout + r.stderr
    (argv,) = _docker_exec_commands(config, [next(c for c in config["setup_commands"] if "command -v python" in c)],
                                    home)
    (r,) = _run_as_container_user(tmp_path, [argv], profile_d=False)
    assert r.returncode != 0 and "login shells do not find /opt/venv/bin/python" in r.stderr, r.stderr
