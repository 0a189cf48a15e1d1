#!/usr/bin/env bash
# Convert official PyTorch DVT checkpoints to MindSpore (and back); all arguments go to dvt-convert.
#   scripts/convert.sh --src DVT_T2t_vit_12.pth.tar --dst dvt_t2t_vit_12.ckpt [--verify]
#   scripts/convert.sh --to-torch --src dvt_t2t_vit_12.ckpt --dst dvt_t2t_vit_12.pth.tar
# PYTHON selects the interpreter (default: python3).
set -euo pipefail
if [ "$#" -eq 0 ]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" -m dvt_ms.convert "$@"
