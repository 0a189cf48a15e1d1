"""What every dvt_ms command does the same way: resolve its config, run, report, exit with a status.

Exit status: 0 success; 1 the run could not go on (the message says why) or an internal error (its
traceback goes to the command's log, or stderr, with a one-line summary); 2 bad usage found while
reading the command line and config file (unknown flag or key, a value of the wrong type or out of
range); 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .config import ConfigError

__all__ = ["run_command"]


def run_command(prog: str, parse: Callable[[], Any], run: Callable[[Any], str | None],
                failures: tuple[type[BaseException], ...], logger: str = "dvt_ms") -> int:
    """``run(parse())``, printing the text it returns, with the statuses of the module docstring.

    ``parse`` reads the command line (usually :func:`~dvt_ms.config.resolve` and the command's own
    checks): a :class:`ConfigError` or argparse's exit there is bad usage. ``failures`` are the
    exceptions that end a run with a one-line message and status 1; anything else is a bug: its
    traceback goes to ``logger`` (the command's log file, else stderr), then one line."""
    try:
        cfg = parse()
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # argparse: --help or a usage error (already printed)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        text = run(cfg)
    except failures as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: keep its traceback, end with the documented status
        logging.getLogger(logger).error("internal error\n%s", traceback.format_exc().rstrip())
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"{prog}: internal error: {type(err).__name__}: {first} (the traceback is above or in the log)",
              file=sys.stderr)
        return 1
    if text:
        print(text)
    return 0
