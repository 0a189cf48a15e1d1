"""``python -m dvt_ms.serve export|predict|serve ...``: the ``dvt-export``, ``dvt-predict`` and ``dvt-serve``
commands."""

import sys

from ..command import dispatch

sys.exit(dispatch(sys.argv[1:], only=("export", "predict", "serve"), prog="python -m dvt_ms.serve"))
