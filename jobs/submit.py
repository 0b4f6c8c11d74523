"""Ray Jobs submission of retargeting runs (``mf submit``) and job control (``mf jobs status|logs|stop``).

The run is submitted to a cluster's Job Submission API (``http://HEAD:8265``) with a runtime env that carries this
project (``working_dir`` = the project root, minus ``.venv``, ``.git`` and outputs), and its entrypoint is the same
command as a local run: ``python -m jobs.cli retarget MANIFEST --out URI --address auto ...``, after
``python -m jobs.submit --which`` has logged which Python and which mf run it. Local paths are made absolute
(the job runs in its own copy of the project) or refused where the cluster cannot see them (:func:`resolve_paths`).

Authentication follows Ray's settings: with ``RAY_AUTH_MODE=token`` Ray's client sends the token it finds
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). A token given explicitly (``--token``,
``$MF_RAY_TOKEN``) is sent as ``Authorization: Bearer`` whatever the mode. A refused token and an unreachable
cluster end with one clear line and their own exit codes (:data:`EXIT_AUTH`, :data:`EXIT_UNREACHABLE`).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_EXCLUDES = [".venv", ".git", "outputs", "mf_out", ".mf_cache", "__pycache__", "*.pyc", "*.egg-info",
                    ".pytest_cache", "benchmarks/out", "build", "dist", ".whl"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_STOPPED = 3
EXIT_UNREACHABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_AUTH = 77  # sysexits EX_NOPERM
TOKEN_ENV = "MF_RAY_TOKEN"
AGENT_WAIT_S = float(os.environ.get("MF_SUBMIT_AGENT_WAIT_S", "120"))  # how long a fresh head may take to accept jobs
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
# retarget options whose value is a path the cluster reads (made absolute like the manifest)
PATH_OPTIONS = ("--model", "--weights")


class SubmitError(RuntimeError):
    """A submission or job-control failure with a one-line, user-facing message and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def default_address() -> Optional[str]:
    return os.environ.get("MF_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    return address


def auth_headers(token: Optional[str] = None) -> dict[str, str]:
    """Headers carrying an explicit token (``token`` or ``$MF_RAY_TOKEN``); empty: leave it to Ray's settings."""
    token = token or os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token.strip()}"} if token else {}


def make_client(address: Optional[str], token: Optional[str] = None, verify: bool | str = True):
    """A ``JobSubmissionClient`` for ``address``; raises :class:`SubmitError` when unreachable or refused."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or default_address()
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 (or set RAY_ADDRESS)", 2)
    address = normalise_address(address)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers(token) or None, verify=verify)
    except Exception as exc:  # noqa: BLE001 - classified below
        raise classify(exc, address) from None


def classify(exc: BaseException, address: str) -> SubmitError:
    """Turn a client exception into a :class:`SubmitError` that says what went wrong."""
    import requests
    from ray.exceptions import AuthenticationError

    mode = os.environ.get("RAY_AUTH_MODE", "<unset>")
    if isinstance(exc, AuthenticationError) or "Authentication" in str(exc) and ("401" in str(exc) or
                                                                                  "403" in str(exc)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return SubmitError(f"the Ray cluster at {address} refused the request: {first} "
                           f"(RAY_AUTH_MODE={mode}; give the cluster's token with --token, ${TOKEN_ENV}, "
                           "RAY_AUTH_TOKEN or ~/.ray/auth_token)", EXIT_AUTH)
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return SubmitError(f"cannot reach the Ray cluster at {address}: is the head running and its dashboard "
                           "(Jobs API, default port 8265) reachable from here?", EXIT_UNREACHABLE)
    return SubmitError(f"Ray Jobs API at {address}: {type(exc).__name__}: {exc}", 1)


def _call(client, address: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SubmitError:
        raise
    except Exception as exc:  # noqa: BLE001
        err = classify(exc, address)
        if err.exit_code == 1 and "does not exist" in str(exc):
            err = SubmitError(f"no job {args[0] if args else ''!s} on {address}", 1)
        raise err from None


# ------------------------------------------------------------------------------------------------------ submit

@dataclass
class SubmitRequest:
    manifest: str
    out: str
    retarget_args: list[str] = field(default_factory=list)  # passed through to `mf retarget`
    submission_id: Optional[str] = None
    env_vars: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: Optional[float] = None
    working_dir: Path = PROJECT_ROOT
    pip: Optional[list[str]] = None  # extra packages for the job (the image/venv normally has them)

    def entrypoint(self) -> str:
        """``python -m jobs.submit --which && python -m jobs.cli retarget ...``: the job's log first says which
        Python and which mf run it (and stops there, with the reason, when that Python lacks mf's dependencies),
        then the run itself."""
        argv = ["python", "-m", "jobs.cli", "retarget", self.manifest, "--out", self.out, "--address", "auto",
                "--no-progress", *self.retarget_args]
        return "python -m jobs.submit --which && " + " ".join(shlex.quote(a) for a in argv)

    def runtime_env(self) -> dict:
        env = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **self.env_vars}
        if os.environ.get("RAY_AUTH_MODE"):
            env.setdefault("RAY_AUTH_MODE", os.environ["RAY_AUTH_MODE"])
        rt: dict = {"working_dir": str(self.working_dir), "excludes": list(RUNTIME_EXCLUDES), "env_vars": env}
        if self.pip:
            rt["pip"] = list(self.pip)
        return rt


def _host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.split("]", 1)[0] + "]" if rest.startswith("[") else rest.split(":", 1)[0].split("/", 1)[0]


def resolve_paths(req: SubmitRequest, address: str, cwd: Optional[str] = None) -> SubmitRequest:
    """``req`` with its local paths made absolute (the job runs in the cluster's copy of the project, not in the
    user's folder: ``req.csv`` would be looked up there). :class:`SubmitError` (exit 2) where the cluster cannot see
    a local path: on this machine (a loopback address) the manifest must exist; on another machine a local manifest,
    ``--out`` or weights path is refused unless ``--shared-fs`` declares the path a mount the cluster sees too."""
    import dataclasses

    cwd = cwd or os.getcwd()
    local_cluster = _host(address) in LOOPBACK
    shared = "--shared-fs" in req.retarget_args

    def absolute(what: str, uri: str) -> str:
        if "://" in uri:
            if uri.startswith("memory://"):
                raise SubmitError(f"{what} {uri}: memory:// is private to this process; the cluster cannot read it",
                                  2)
            return uri
        path = os.path.abspath(os.path.join(cwd, os.path.expanduser(uri)))
        if not local_cluster and not shared:
            raise SubmitError(f"{what} {uri} is a path on this machine and the cluster at {address} is another one: "
                              "it cannot read or write it. Use s3:// or gs:// URIs, or pass --shared-fs when the "
                              f"path {path} is a mount the cluster's nodes see at the same place", 2)
        return path

    manifest = absolute("manifest", req.manifest)
    if "://" not in manifest and local_cluster and not os.path.exists(manifest):
        raise SubmitError(f"manifest {req.manifest} not found (looked for {manifest})", 2)
    out = absolute("--out", req.out)
    args = list(req.retarget_args)
    for i, a in enumerate(args[:-1]):
        if a in PATH_OPTIONS:
            args[i + 1] = absolute(a, args[i + 1])
    if local_cluster:
        for what, before, after in (("manifest", req.manifest, manifest), ("--out", req.out, out)):
            if before != after:
                log.info("%s %s is %s on the cluster", what, before, after)
    return dataclasses.replace(req, manifest=manifest, out=out, retarget_args=args)


def submit(client, address: str, req: SubmitRequest) -> str:
    """Submit the run (local paths made absolute or refused: :func:`resolve_paths`); returns the submission id.
    A head that has just started has no job agent yet (Ray answers "No available agent to submit job"): the
    submission is retried for :data:`AGENT_WAIT_S` seconds."""
    req = resolve_paths(req, address)
    kwargs = {}
    if req.entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = req.entrypoint_num_cpus
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=req.entrypoint(), runtime_env=req.runtime_env(),
                                       submission_id=req.submission_id,
                                       metadata={"app": "motionfollower-ray", "out": req.out}, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001
            # a head that just started has no job agent yet: Ray answers 500 "No available agent ... try again"
            if "No available agent" in str(exc):
                if time.monotonic() < deadline:
                    log.info("the cluster's job agent is not up yet; retrying")
                    time.sleep(2.0)
                    continue
                raise SubmitError(f"the Ray cluster at {address} accepts no jobs yet (no job agent after "
                                  f"{AGENT_WAIT_S:.0f} s): is its head still starting? Try again, or raise "
                                  "$MF_SUBMIT_AGENT_WAIT_S", EXIT_UNREACHABLE) from None
            raise classify(exc, address) from None
    log.info("submitted %s to %s: %s", job_id, address, req.entrypoint())
    return job_id


# ------------------------------------------------------------------------------------------------------ follow

def exit_code_of(info) -> int:
    """Exit code of ``mf submit --follow`` / ``mf jobs status`` for a job's final state."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return EXIT_STOPPED
    if status == "FAILED":
        code = getattr(info, "driver_exit_code", None)
        return int(code) if code and 0 < int(code) < 256 and code not in (EXIT_AUTH, EXIT_UNREACHABLE) else 1
    return 0  # PENDING / RUNNING: not an error


def follow(client, address: str, job_id: str, out: TextIO = sys.stdout, poll_s: float = 1.0,
           timeout_s: Optional[float] = None) -> int:
    """Stream the job's logs and status changes until it ends; returns :func:`exit_code_of` its final state.

    Polls ``get_job_logs`` (robust through proxies; the websocket tail is not needed for a batch run).
    Ctrl-C stops following, never the job.
    """
    seen = 0
    last_status = None
    t0 = time.monotonic()
    try:
        while True:
            info = _call(client, address, client.get_job_info, job_id)
            status = str(getattr(info.status, "value", info.status))
            logs = _call(client, address, client.get_job_logs, job_id) or ""
            if len(logs) > seen:
                out.write(logs[seen:])
                out.flush()
                seen = len(logs)
            if status != last_status:
                log.info("job %s: %s", job_id, status)
                last_status = status
            if status in TERMINAL:
                if status != "SUCCEEDED" and info.message:
                    log.error("job %s %s: %s", job_id, status.lower(), info.message.strip().splitlines()[-1])
                return exit_code_of(info)
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f}s", 1)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log.warning("stopped following; job %s goes on (mf jobs stop %s --address %s)", job_id, job_id, address)
        return 130


def status(client, address: str, job_id: str):
    return _call(client, address, client.get_job_info, job_id)


def logs(client, address: str, job_id: str) -> str:
    return _call(client, address, client.get_job_logs, job_id) or ""


def stop(client, address: str, job_id: str) -> bool:
    return bool(_call(client, address, client.stop_job, job_id))


def list_jobs(client, address: str) -> list:
    return list(_call(client, address, client.list_jobs))


def run_submit(address: Optional[str], req: SubmitRequest, *, token: Optional[str] = None, follow_logs: bool = False,
               out: TextIO = sys.stdout, timeout_s: Optional[float] = None) -> int:
    """``mf submit``: submit, print the id, optionally follow to the end; returns the exit code."""
    client = make_client(address, token)
    address = normalise_address(address or default_address() or "")
    job_id = submit(client, address, req)
    print(f"submitted job {job_id} to {address}", file=out, flush=True)
    if not follow_logs:
        print(f"follow it: mf jobs logs {job_id} --address {address} --follow", file=out, flush=True)
        return 0
    rc = follow(client, address, job_id, out=out, timeout_s=timeout_s)
    info = status(client, address, job_id)
    print(f"job {job_id}: {getattr(info.status, 'value', info.status)} (exit {rc})", file=out, flush=True)
    return rc


# ------------------------------------------------------------------------------------------- in the job itself

REQUIRED_MODULES = ("ray", "torch", "pyarrow", "fsspec", "av")


def which(out: TextIO = sys.stdout) -> int:
    """``python -m jobs.submit --which``, the job's first command: print which Python runs it, from where the
    ``jobs`` package (the project copy of the job's working_dir) and its dependencies come; exit 1 with the reason
    when that Python lacks one of :data:`REQUIRED_MODULES` (Ray was started from another Python than the project's
    venv or image, so entrypoints run that one)."""
    import importlib

    import jobs

    print(f"mf job: python {sys.executable} ({sys.version.split()[0]}), prefix {sys.prefix}", file=out)
    print(f"mf job: mf code {Path(jobs.__file__).resolve().parent.parent}", file=out)
    missing = []
    for name in REQUIRED_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - absent or broken: either way this Python cannot run mf
            mod = None
        if mod is None or not getattr(mod, "__file__", None):  # a namespace package (a stray folder) is no module
            missing.append(name)
            continue
        print(f"mf job: {name} {getattr(mod, '__version__', '')} {Path(mod.__file__).resolve().parent}", file=out)
    out.flush()
    if missing:
        print(f"mf job: this Python ({sys.executable}) lacks {', '.join(missing)}: the cluster's nodes run the first "
              "`python` on their PATH; start Ray from the project's venv (`.venv/bin/ray start ...`) or use the "
              "image (infra/Dockerfile)", file=sys.stderr, flush=True)
        return 1
    return 0


__all__: Sequence[str] = ["SubmitError", "SubmitRequest", "make_client", "submit", "follow", "status", "logs",
                          "stop", "list_jobs", "run_submit", "exit_code_of", "EXIT_AUTH", "EXIT_UNREACHABLE",
                          "EXIT_STOPPED"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--which"]:
        sys.exit(which())
    print("usage: python -m jobs.submit --which", file=sys.stderr)
    sys.exit(2)
