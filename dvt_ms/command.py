"""What every dvt_ms command does the same way: resolve its config, run, report, exit with a status.

Exit status: 0 success; 1 the run could not go on (the message says why) or an internal error (its
traceback goes to the command's log, or stderr, with a one-line summary); 2 bad usage: an unknown flag
or key, a value of the wrong type or out of range, settings that contradict each other, whether found
while reading the command line and config file or once the run looks at them (``ConfigError``);
130 interrupted. Every command runs through :func:`run_command`, so the same bad value gets the same
status everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib import import_module
from typing import Any

from . import interrupts
from .config import ConfigError
from .files import FileError

__all__ = ["COMMANDS", "Interrupted", "abort", "dispatch", "run_command"]

INTERRUPTED = 130


class Interrupted(Exception):
    """A run stopped on request (Ctrl-C) after putting its work in order; the message says what it kept."""


def abort(prog: str, message: str, status: int = 1) -> None:
    """End the process now, from any thread, with ``prog: error: message`` on stderr and ``status``: for an
    event the main thread cannot be told of (it may be blocked for ever, e.g. on a lost data worker). Log
    handlers are flushed first; nothing else runs (no ``finally`` blocks, no atexit handlers)."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)


def run_command(prog: str, parse: Callable[[], Any], run: Callable[[Any], str | None],
                failures: tuple[type[BaseException], ...], logger: str = "dvt_ms") -> int:
    """``run(parse())``, printing the text it returns, with the statuses of the module docstring.

    ``parse`` reads the command line into the command's settings (:func:`dvt_ms.options.parse_command`,
    which checks every value): a :class:`ConfigError` or argparse's exit there is bad usage. ``failures``
    are the exceptions that end a run with a one-line message and status 1 (besides them, always
    :class:`~dvt_ms.files.FileError`; a :class:`ConfigError` raised while running is bad usage, 2);
    anything else is a bug: its traceback goes to ``logger`` (the command's log file, else stderr), then
    one line."""
    try:
        cfg = parse()
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # argparse: --help or a usage error (already printed)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        with interrupts.deferred(), _console_log():  # Ctrl-C stops the run where it can stop cleanly
            text = run(cfg)
    except ConfigError as err:  # a setting found unusable only once the run looked at it: still bad usage
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (*failures, FileError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"{prog}: interrupted: {err}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:  # a bug: keep its traceback, end with the documented status
        logging.getLogger(logger).error("internal error\n%s", traceback.format_exc().rstrip())
        err = _kernel_error(err) or err
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"{prog}: internal error: {type(err).__name__}: {first} (the traceback is above or in the log)",
              file=sys.stderr)
        return 1
    if text:
        print(text)
    return 0


@contextlib.contextmanager
def _console_log() -> Iterator[None]:
    """The library's log records (``dvt_ms.*`` loggers, INFO and up) on stderr while a command runs, unless the
    command (training: its log files) or the caller set up handlers of their own."""
    package = logging.getLogger("dvt_ms")
    if package.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def _kernel_error(err: Exception) -> Exception | None:
    """MindSpore's report of a fused kernel that refused its arguments, as the kernel's own message (naming the
    argument, what it expects and what it got), else ``None``."""
    if not (isinstance(err, RuntimeError) and "AOT kernel(" in str(err)):
        return None
    from .kernels import kernel_error_from  # only here: commands start without importing MindSpore

    return kernel_error_from(err)


#: command -> (module whose ``main(argv)`` runs it, console script, one line of help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("dvt_ms.train.cli", "dvt-train", "train or fine-tune a cascade"),
    "eval": ("dvt_ms.inference.cli", "dvt-eval", "evaluate a checkpoint: per-exit accuracy, curve, real early exit"),
    "export": ("dvt_ms.serve.export", "dvt-export", "a checkpoint -> one graph per exit + manifest.json"),
    "predict": ("dvt_ms.serve.predict", "dvt-predict", "classify image files with real early exit"),
    "serve": ("dvt_ms.serve.server", "dvt-serve", "classify images sent over HTTP, exit-aware batching"),
    "convert": ("dvt_ms.convert.cli", "dvt-convert", "official PyTorch checkpoints <-> MindSpore"),
    "audit": ("dvt_ms.audit.cli", "dvt-audit", "check that every compiled graph is Ascend-clean"),
    "data-check": ("dvt_ms.data.cli", "", "find every unreadable image of a data set before a run does"),
    "stamp": ("dvt_ms.inference.stamp", "", "store calibrated thresholds in a checkpoint"),
    "digits": ("dvt_ms.demo.digits", "", "write the handwritten-digits demo image folder"),
}


def _usage(prog: str, names: Sequence[str]) -> str:
    width = max(map(len, names))
    lines = [f"usage: {prog} COMMAND [flags]   ({prog} COMMAND --help shows its flags)", "", "commands:"]
    lines += [f"  {n:<{width}}  {COMMANDS[n][2]}" + (f" ({COMMANDS[n][1]})" if COMMANDS[n][1] else "")
              for n in names]
    return "\n".join(lines)


def dispatch(argv: Sequence[str], only: Sequence[str] | None = None, prog: str = "python -m dvt_ms") -> int:
    """Run the command named by ``argv[0]`` with the rest of ``argv``; returns its exit status
    (2 with the list of commands when the name is missing or unknown)."""
    names = list(only or COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, names), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in names:
        print(f"{prog}: error: unknown command {argv[0]!r}\n\n{_usage(prog, names)}", file=sys.stderr)
        return 2
    return import_module(COMMANDS[argv[0]][0]).main(list(argv[1:]))
