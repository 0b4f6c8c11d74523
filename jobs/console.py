"""What an ``mf`` command prints, and where the rest goes (:class:`Console`, set up by :func:`jobs.cli.main`).

By default a command prints little: its progress display (on a terminal), its result lines, our own summary lines
(loggers ``mf.*`` at INFO) and real warnings and errors (any logger, WARNING and above). Everything else goes to the
run's **log file** only:

* Python logging at INFO of every library and of ``pipelines``/``jobs``/``mf_model`` (Ray's "Started a local Ray
  instance", Ray Data's execution plan, the stage resources...). Ray's and Ray Data's loggers, which print through
  their own handlers, are routed to ours when :func:`jobs.runtime.connect_ray` connects;
* Ray's expected internal warnings (:data:`EXPECTED_WARNINGS`) and Python warnings (``warnings.warn``);
* what native code writes to the process's stderr (file descriptor 2) below Python: MediaPipe/TFLite/absl
  (``inference_feedback_manager.cc ...``, ``absl::InitializeLog()``), Ray's C++ core worker (``core_worker.cc ...``),
  and the stderr of child processes (ffmpeg). For the command's duration fd 2 points at the log file; the console
  (``sys.stderr``, the progress display, our handler) writes to a copy of the original stderr. The variables that
  quiet such libraries where they honour them (:data:`jobs.runtime.QUIET_NATIVE_ENV`: ``GLOG_minloglevel``,
  ``TF_CPP_MIN_LOG_LEVEL``) are set too, unless already set; a local Ray started by the command inherits them.
  Ray workers' own output goes to Ray's session logs (``log_to_driver=False``), not to the console.

The log file is written by the commands that run work (:data:`RUN_COMMANDS`): ``<out>/logs/mf-<command>-<time>.log``
where ``--out`` is a local output root (``mf retarget``, ``mf demo``), else ``$TMPDIR/mf-logs/`` (non-local
``--out`` such as ``s3://``, and commands without an output root). Its path is the first line a run prints; when a
run fails, the error line is followed by it. It holds every logger at INFO (DEBUG with ``-vv``) with timestamps.

``-v`` (before or after the command: ``mf -v demo``, ``mf demo -v``) brings the rest back to the console: INFO of
every logger (Ray's included), Python warnings and Ray's expected warnings, and the native libraries' output (fd 2
is left alone and the quieting variables are not set). ``-vv``: DEBUG as well, and a failing command shows its
traceback. Exit status: the command's own (0 success), 1 an error, 130 interrupted, 2 a usage error (argparse).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import IO, Optional

log = logging.getLogger("mf")

# the commands that run work (Ray, MediaPipe, ffmpeg) and get a log file and the native-output redirection
RUN_COMMANDS = frozenset({"retarget", "demo", "prepare", "dataset", "serve"})
# the commands whose --out is an output root the log file may go into (prepare's --out is the official layout)
OUT_ROOT_COMMANDS = frozenset({"retarget", "demo"})
# (logger name prefix, message start) of warnings that are expected and harmless: log file only, unless -v
EXPECTED_WARNINGS = (
    ("ray.data", "Progress bars disabled"),  # we disable them: the driver shows its own progress
)
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_ours(name: str) -> bool:
    return name == "mf" or name.startswith("mf.")


def _expected(record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return any((record.name == n or record.name.startswith(n + ".")) and msg.startswith(m)
               for n, m in EXPECTED_WARNINGS)


class _ConsoleFilter(logging.Filter):
    """Default: WARNING and above of every logger (minus expected ones and Python warnings), INFO of ``mf.*``.
    Verbose: everything the handler's level lets through."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if getattr(record, "hide", False):  # Ray Data's "not for the console" marker
            return False
        if record.levelno >= logging.WARNING:
            return record.name != "py.warnings" and not _expected(record)
        return record.levelno >= logging.INFO and _is_ours(record.name)


class _ConsoleFormatter(logging.Formatter):
    """Default: our INFO lines as plain messages, warnings and errors as ``LEVEL logger: message``; verbose: with
    timestamps."""

    def __init__(self, verbose: int) -> None:
        super().__init__(FILE_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s")
        self.plain = None if verbose else logging.Formatter("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if self.plain is not None and record.levelno < logging.WARNING:
            return self.plain.format(record)
        return super().format(record)


class _ConsoleHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` while a progress bar is shown, so lines do not tear the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_mod = sys.modules.get("tqdm")
        bar_cls = getattr(tqdm_mod, "tqdm", None)
        if bar_cls is not None and getattr(bar_cls, "_instances", None):
            try:
                bar_cls.write(self.format(record), file=self.stream)
            except Exception:  # noqa: BLE001 - logging must not raise
                self.handleError(record)
            return
        super().emit(record)


def log_file_path(command: str, out: Optional[str]) -> str:
    """Where a run's log file goes: ``<out>/logs/`` for a local output root, else ``$TMPDIR/mf-logs/``."""
    name = f"mf-{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if out and command in OUT_ROOT_COMMANDS:
        local = out[len("file://"):] if out.startswith("file://") else (None if "://" in out else out)
        if local is not None:
            folder = os.path.join(os.path.abspath(local), "logs")
            try:
                os.makedirs(folder, exist_ok=True)
                return os.path.join(folder, name)
            except OSError:
                pass
    folder = os.path.join(tempfile.gettempdir(), "mf-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


class Console:
    """The logging set-up of one ``mf`` command (see the module docstring); :meth:`close` undoes it."""

    def __init__(self, command: str, verbose: int, out: Optional[str] = None) -> None:
        self.command, self.verbose, self.out = command, verbose, out
        self.log_path: Optional[str] = None
        self.handlers: list[logging.Handler] = []
        self._root_level = logging.getLogger().level
        self._saved_fd: Optional[int] = None
        self._saved_stderr: Optional[IO[str]] = None
        self._console_stream: Optional[IO[str]] = None
        self._ray_was_up = _ray_initialized()

    def start(self) -> Console:
        from jobs import runtime

        root = logging.getLogger()
        level = logging.DEBUG if self.verbose >= 2 else logging.INFO
        root.setLevel(level)
        if self.command in RUN_COMMANDS:
            try:
                self.log_path = log_file_path(self.command, self.out)
                fh = logging.FileHandler(self.log_path, encoding="utf-8")
            except OSError as exc:
                self.log_path = None
                print(f"mf: no log file ({exc})", file=sys.stderr)
            else:
                fh.setLevel(level)
                fh.setFormatter(logging.Formatter(FILE_FORMAT))
                self.handlers.append(fh)
            if self.verbose == 0:
                runtime.quiet_native_env()
                if self.log_path is not None:
                    self._redirect_native_output(self.log_path)
            runtime.route_ray_logs(True)
        console = _ConsoleHandler(self._console_stream or sys.stderr)
        console.setLevel(level)
        console.addFilter(_ConsoleFilter(self.verbose))
        console.setFormatter(_ConsoleFormatter(self.verbose))
        self.handlers.append(console)
        for h in self.handlers:
            root.addHandler(h)
        if self.log_path is not None:
            logging.captureWarnings(True)  # Python warnings: the log file (the console too with -v)
            log.info("log: %s", self.log_path)
        return self

    def _redirect_native_output(self, path: str) -> None:
        """fd 2 → the log file; the console (and ``sys.stderr`` where it was fd 2) → a copy of the old fd 2."""
        try:
            real_stderr = sys.stderr is not None and sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            real_stderr = False
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            self._saved_fd = os.dup(2)
            target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            if self._saved_fd is not None:
                os.close(self._saved_fd)
            self._saved_fd = None
            return
        if real_stderr:
            enc = getattr(sys.stderr, "encoding", None) or "utf-8"
            self._console_stream = open(self._saved_fd, "w", buffering=1, encoding=enc, errors="backslashreplace",
                                        closefd=False)
            self._saved_stderr, sys.stderr = sys.stderr, self._console_stream
        os.dup2(target, 2)
        os.close(target)

    def error_hint(self) -> None:
        if self.log_path is not None:
            log.error("details: %s", self.log_path)

    def close(self) -> None:
        from jobs import runtime

        if self.command in RUN_COMMANDS and not self._ray_was_up and _ray_initialized():
            _shutdown_ray()  # its exit chatter goes to the log file too, not after we restore the console
        runtime.route_ray_logs(False)
        if self.log_path is not None:
            logging.captureWarnings(False)
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        self.handlers = []
        root.setLevel(self._root_level)
        if self._saved_fd is not None:
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except (AttributeError, OSError, ValueError):
                    pass
            os.dup2(self._saved_fd, 2)
            if self._saved_stderr is not None:
                sys.stderr = self._saved_stderr
            if self._console_stream is not None:
                self._console_stream.close()
            os.close(self._saved_fd)
            self._saved_fd = self._saved_stderr = self._console_stream = None


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported ray
        return False


def _shutdown_ray() -> None:
    try:
        sys.modules["ray"].shutdown()
    except Exception as exc:  # noqa: BLE001 - the command's outcome stands
        log.debug("ray.shutdown: %s", exc)


