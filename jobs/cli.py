"""The ``mf`` command line (argparse). Sub-commands live in :mod:`jobs.commands`; what a run prints and where the
rest goes (the log file, ``-v``/``-vv``, exit statuses) is :mod:`jobs.console`'s.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from jobs.commands import COMMAND_MODULES
from jobs.console import Console

log = logging.getLogger("mf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mf", description="MotionFollower video motion editing on Ray")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more on the console: -v every logger's INFO and the native libraries' output, "
                             "-vv debug and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_verbose_to_leaves(sub)
    return parser


def _add_verbose_to_leaves(sub: argparse._SubParsersAction) -> None:
    """``-v`` after the command too (``mf demo -v``); counted apart, added to the global one in :func:`main`."""
    for p in set(sub.choices.values()):
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for n in nested:
                _add_verbose_to_leaves(n)
        elif not any("--verbose" in a.option_strings for a in p._actions):
            p.add_argument("-v", "--verbose", dest="verbose_after", action="count", default=argparse.SUPPRESS,
                           help="more on the console (see mf --help)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = verbose = args.verbose + getattr(args, "verbose_after", 0)
    console = Console(args.command, verbose, getattr(args, "out", None)).start()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI reports, never dumps a trace by default
        if verbose >= 2:
            raise
        log.error("%s: %s", type(exc).__name__, exc)
        console.error_hint()
        return 1
    finally:
        console.close()


if __name__ == "__main__":
    sys.exit(main())
