"""``mf submit MANIFEST --out URI --address http://HEAD:8265 [--follow]`` and ``mf jobs status|logs|stop|list``."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("mf.submit")



def _retarget_options() -> list[argparse.Action]:
    """The run options of ``mf retarget`` (its own parser's actions), minus those local to one process."""
    from jobs.commands.retarget import LOCAL_ONLY, add_run_options

    p = argparse.ArgumentParser(add_help=False)
    add_run_options(p)
    return [a for a in p._actions if a.option_strings and a.dest not in LOCAL_ONLY]


def _add_forwarded(p: argparse.ArgumentParser) -> None:
    """The retarget options on the submit parser, with no defaults: only what the user gives is forwarded."""
    for a in _retarget_options():
        if isinstance(a, argparse._StoreTrueAction):
            kind = {"action": "store_true"}
        else:
            kind = {"type": a.type, "choices": a.choices, "metavar": a.metavar}
            if isinstance(a, argparse._AppendAction):
                kind["action"] = "append"
        p.add_argument(*a.option_strings, dest=a.dest, default=argparse.SUPPRESS,
                       help=f"passed to `mf retarget`: {a.help}", **kind)


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """The ``mf retarget`` argv for the retarget options given to ``mf submit``."""
    argv: list[str] = []
    for a in _retarget_options():
        if not hasattr(args, a.dest):
            continue
        value = getattr(args, a.dest)
        if isinstance(a, argparse._StoreTrueAction):
            argv += [a.option_strings[0]] if value else []
        elif isinstance(a, argparse._AppendAction):
            argv += [part for v in value for part in (a.option_strings[0], str(v))]
        else:
            argv += [a.option_strings[0], str(value)]
    return argv


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="the cluster's Jobs API, http://HEAD:8265 (default: $MF_RAY_ADDRESS or $RAY_ADDRESS)")
    p.add_argument("--token", default=None,
                   help="auth token sent as a bearer token (default: $MF_RAY_TOKEN, else Ray's own settings: "
                        "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN / ~/.ray/auth_token)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a retargeting run to a Ray cluster as a Ray Job",
                       description="Submit `mf retarget MANIFEST --out URI` as a Ray Job (runtime env carrying this "
                                   "project); --follow streams its logs and exits with the job's outcome "
                                   "(0 succeeded, the run's exit code or 1 failed, 3 stopped, 69 cluster "
                                   "unreachable, 77 token refused).")
    p.add_argument("manifest", help="request manifest URI, as the cluster sees it")
    p.add_argument("--out", required=True, help="output root URI, as the cluster sees it")
    _cluster_args(p)
    p.add_argument("--follow", action="store_true", help="stream logs until the job ends; exit with its outcome")
    p.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var for the job (repeat)")
    p.add_argument("--timeout", type=float, default=None, help="with --follow: give up after this many seconds")
    _add_forwarded(p)
    p.set_defaults(func=run_submit)

    j = sub.add_parser("jobs", help="status, logs or stop of a submitted job")
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    for name, helptext in (("status", "print the job's state; exit code = its outcome when finished"),
                           ("logs", "print the job's logs"), ("stop", "stop the job")):
        q = jsub.add_parser(name, help=helptext)
        q.add_argument("job_id")
        _cluster_args(q)
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
        q.set_defaults(func=run_jobs, action=name)
    q = jsub.add_parser("list", help="list the cluster's jobs")
    _cluster_args(q)
    q.set_defaults(func=run_jobs, action="list")


def _handled(fn):
    def wrapper(args: argparse.Namespace) -> int:
        from jobs.submit import SubmitError

        try:
            return fn(args)
        except SubmitError as exc:
            print(f"mf {args.command}: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
    return wrapper


@_handled
def run_submit(args: argparse.Namespace) -> int:
    from jobs.submit import SubmitError, SubmitRequest
    from jobs.submit import run_submit as _run

    passthrough = forwarded_args(args)
    env = {}
    for kv in args.env:
        if "=" not in kv:
            raise SubmitError(f"--env {kv!r}: expected KEY=VALUE", 2)
        k, v = kv.split("=", 1)
        env[k] = v
    req = SubmitRequest(manifest=args.manifest, out=args.out, retarget_args=passthrough,
                        submission_id=args.submission_id, env_vars=env,
                        entrypoint_num_cpus=args.entrypoint_num_cpus)
    return _run(args.address, req, token=args.token, follow_logs=args.follow, timeout_s=args.timeout)


@_handled
def run_jobs(args: argparse.Namespace) -> int:
    from jobs import submit as S

    client = S.make_client(args.address, args.token)
    address = S.normalise_address(args.address or S.default_address() or "")
    if args.action == "list":
        for info in S.list_jobs(client, address):
            st = getattr(info.status, "value", info.status)
            print(f"{info.submission_id or info.job_id}\t{st}\t{info.entrypoint}")
        return 0
    if args.action == "status":
        info = S.status(client, address, args.job_id)
        st = getattr(info.status, "value", info.status)
        print(f"{args.job_id}\t{st}\t{(info.message or '').strip()}")
        return S.exit_code_of(info)
    if args.action == "logs":
        if args.follow:
            return S.follow(client, address, args.job_id)
        sys.stdout.write(S.logs(client, address, args.job_id))
        return 0
    stopped = S.stop(client, address, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0
