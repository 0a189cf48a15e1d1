#!/usr/bin/env bash
# Train or fine-tune a DVT cascade on one device; every argument goes to dvt-train (python -m dvt_ms.train).
#   scripts/run_train.sh -c configs/dvt_t2t_vit_12.yaml --data_dir /data/imagenet --device_target Ascend
#   scripts/run_train.sh -c configs/dvt_tiny_cpu.yaml --data_dir ./data --epoch_size 2
#   scripts/run_train.sh -c configs/dvt_t2t_vit_12.yaml --data_dir /data/cifar10 --dataset cifar10 \
#       --num_classes 10 --pretrained dvt_t2t_vit_12.ckpt --epoch_size 60 --warmup_epochs 5
#   scripts/run_train.sh ... --auto_resume True      (continue the run in --ckpt_save_dir after a stop)
#   scripts/run_train.sh --help                      (every flag)
# PYTHON selects the interpreter (default: the active virtual/conda environment, else ./.venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # DVT_PY: the interpreter, PYTHONPATH set

if [ "$#" -eq 0 ]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
dvt_install
exec "$DVT_PY" -m dvt_ms.train "$@"
