"""``python -m dvt_ms.convert``: the ``dvt-convert`` command."""

import sys

from .cli import main

sys.exit(main())
