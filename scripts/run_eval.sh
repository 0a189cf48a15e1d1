#!/usr/bin/env bash
# Evaluate a DVT checkpoint with real early exit; every argument goes to dvt-eval (python -m dvt_ms.inference).
#   scripts/run_eval.sh -c configs/dvt_t2t_vit_12.yaml --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 1
#   scripts/run_eval.sh --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 2 --calib_size 50000 --budget 1.0
#   scripts/run_eval.sh --ckpt X.ckpt --eval_mode 0
#   scripts/run_eval.sh --help            (every flag)
#   scripts/run_eval.sh                   (no arguments: the digits demo, see DEMO_ARGS)
# PYTHON selects the interpreter (default: the active virtual/conda environment, else ./.venv, created
# and filled when missing).
set -euo pipefail

# The run made when no argument is given: the shipped digits demo (real handwritten digits from
# scikit-learn, a small three-exit DVT trained by scripts/train_demo.sh), calibrated (mode 2), and
# evaluated with real early exit at the most accurate curve point within 0.006 GFLOPs per image (a third of
# the last exit's cost); the images go to data/digits/ and the results to outputs/demo/ under
# DVT_DEMO_ROOT (default: the repository).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DVT_ROOT"
DEMO_ROOT="${DVT_DEMO_ROOT:-.}"
DEMO_ARGS=(-c configs/dvt_digits_demo.yaml --ckpt demo/dvt_digits_demo.ckpt --data_dir "$DEMO_ROOT/data/digits"
           --eval_mode 2 --budget 0.006 --output_dir "$DEMO_ROOT/outputs/demo")
if [ "$#" -eq 0 ]; then
    dvt_install demo
    "$DVT_PY" -m dvt_ms digits --out "$DEMO_ROOT/data/digits"
    set -- "${DEMO_ARGS[@]}"
else
    dvt_install
fi
exec "$DVT_PY" -m dvt_ms eval "$@"
