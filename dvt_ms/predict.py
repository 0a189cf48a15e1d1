"""``python -m dvt_ms.predict``: the same as ``dvt-predict`` (see :mod:`dvt_ms.serve.predict`)."""

import sys

from .serve.predict import main

if __name__ == "__main__":
    sys.exit(main())
