"""``python -m dvt_ms.serve export|predict ...``: the ``dvt-export`` and ``dvt-predict`` commands."""

import sys

from ..command import dispatch

sys.exit(dispatch(sys.argv[1:], only=("export", "predict"), prog="python -m dvt_ms.serve"))
