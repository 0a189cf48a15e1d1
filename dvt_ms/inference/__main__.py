"""``python -m dvt_ms.inference``: the ``dvt-eval`` command."""

import sys

from .cli import main

sys.exit(main())
