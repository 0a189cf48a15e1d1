"""``python -m dvt_ms COMMAND [flags]``: every dvt_ms command without its console script.

    python -m dvt_ms eval -c configs/dvt_digits_demo.yaml --ckpt demo/dvt_digits_demo.ckpt --eval_mode 0
    python -m dvt_ms predict --exported outputs/export --images photos/

``python -m dvt_ms`` alone lists the commands; ``python -m dvt_ms COMMAND --help`` shows a command's flags.
"""

from __future__ import annotations

import sys

from .command import dispatch

if __name__ == "__main__":
    sys.exit(dispatch(sys.argv[1:]))
