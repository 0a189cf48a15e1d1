"""``python -m dvt_ms.export``: the same as ``dvt-export`` (see :mod:`dvt_ms.serve.export`)."""

import sys

from .serve.export import main

if __name__ == "__main__":
    sys.exit(main())
