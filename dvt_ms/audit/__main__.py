"""``python -m dvt_ms.audit``: the same as ``dvt-audit``."""

import sys

from .cli import main

sys.exit(main())
