"""``python -m dvt_ms.train``: the same as ``dvt-train``."""

import sys

from .cli import main

sys.exit(main())
