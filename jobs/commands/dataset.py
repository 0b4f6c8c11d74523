"""``mf dataset run SPEC [--date D]`` and ``mf dataset schedule SPEC``: scheduled dataset generation."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("mf.dataset")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="generate a dataset of edits from a YAML spec (run once, or on a schedule)",
                       description="A dataset spec pairs a source catalog with a motion catalog; each run generates "
                                   "the pairs not produced yet into <output>/run_date=D/ (see docs/operations.md).")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", help="dataset spec (YAML, any fsspec URI)")
        q.add_argument("--address", default=None,
                       help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
        q.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the local Ray (default: all)")
        q.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")

    r = dsub.add_parser("run", help="generate the pairs not produced yet into run_date=D/ (no-op when none)")
    common(r)
    r.add_argument("--date", default=None, help="partition date YYYY-MM-DD (default: today, UTC)")
    r.add_argument("--dry-run", action="store_true", help="only list how many pairs are new")
    r.add_argument("--no-preflight", action="store_true",
                   help="skip the check, from a worker, that the inputs can be read and the output written")
    r.set_defaults(func=run)

    s = dsub.add_parser("schedule", help="run the spec on its cron schedule on this machine until stopped")
    common(s)
    s.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    s.add_argument("--once", action="store_true", help="stop after the next scheduled run (= --max-runs 1)")
    s.set_defaults(func=schedule)


def _metrics(args: argparse.Namespace):
    from pipelines.batch.metrics import PipelineMetrics, start_metrics_server

    metrics = PipelineMetrics()
    if args.metrics_port is not None:
        start_metrics_server(args.metrics_port, metrics)
    return metrics


def _report(res) -> None:
    if not res.ran_pipeline:
        print(f"dataset run {res.date}: {res.pairs_total} pairs, all produced already: nothing to do")
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items()))
    print(f"dataset run {res.date}: {res.pairs_total} pairs, {res.already_produced} produced before, "
          f"{res.new_pairs} new -> {counts} in {res.wall_seconds:.1f}s | {res.partition}")


def run(args: argparse.Namespace) -> int:
    from jobs.dataset import load_spec, plan_run, run_dataset
    from jobs.preflight import PreflightError

    spec = load_spec(args.spec)
    if args.dry_run:
        info, _ = plan_run(spec, args.date)
        print(f"dataset run {info.date}: {info.pairs_total} pairs, {info.already_produced} produced, "
              f"{info.new_pairs} new | {info.partition}")
        return 0
    try:
        res = run_dataset(spec, args.date, address=args.address, num_cpus=args.num_cpus, metrics=_metrics(args),
                          preflight=not args.no_preflight)
    except PreflightError as exc:
        log.error("%s", exc)
        return 2
    _report(res)
    return 0 if res.failed == 0 else 2


def schedule(args: argparse.Namespace) -> int:
    from jobs.dataset import Scheduler, install_signal_handlers, load_spec

    spec = load_spec(args.spec)
    max_runs = 1 if args.once else args.max_runs
    metrics = _metrics(args)
    sched = Scheduler(spec, max_runs=max_runs,
                      run_kwargs={"address": args.address, "num_cpus": args.num_cpus, "metrics": metrics})
    install_signal_handlers(sched)
    print(f"dataset {spec.name}: schedule '{spec.schedule}' (UTC); Ctrl-C to stop")
    rc = sched.loop()
    for res in sched.runs:
        if not isinstance(res, Exception):
            _report(res)
    return rc
