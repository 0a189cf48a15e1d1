"""What every dvt_ms command does the same way: resolve its config, run, report, exit with a status.

Exit status: 0 success; 1 the run could not go on (the message says why); 2 bad usage (unknown flag,
bad config file or value); 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .config import ConfigError, Option, resolve

__all__ = ["run_command"]


def run_command(prog: str, options: Iterable[Option], argv: Sequence[str] | None, description: str,
                run: Callable[[dict[str, Any]], str | None], failures: tuple[type[BaseException], ...],
                shared_with: Iterable[Option] = (), check: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Resolve ``argv`` against ``options`` (see :func:`~dvt_ms.config.resolve`), ``check(cfg)`` (a
    :class:`ConfigError` there is bad usage too), call ``run(cfg)`` and print the text it returns.
    ``failures`` are the exceptions that end a run with a one-line message and status 1; anything else
    is a bug and keeps its traceback."""
    try:
        cfg = resolve(options, argv, description, prog, shared_with=shared_with)
        if check is not None:
            check(cfg)
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
    if text:
        print(text)
    return 0
