#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (demo/dvt_digits_demo.ckpt): build the digits folder, train
# configs/dvt_digits_demo.yaml with dvt-train on the CPU, calibrate its exit thresholds (dvt-eval
# --eval_mode 2) and store them, with the evaluation figures, in outputs/demo_train/dvt_digits_demo.ckpt.
#   bash scripts/train_demo.sh             # train, calibrate, stamp; print the figures (about 6 minutes on 2 cores)
#   bash scripts/train_demo.sh --install   # the same, then copy the result over demo/dvt_digits_demo.ckpt
# Training is deterministic: on this project's machines the figures equal the shipped checkpoint's (README,
# configs/README.md). Folders go under DVT_DEMO_ROOT (default: the repository): data/digits, outputs/demo_train.
set -euo pipefail
source "$(dirname "$0")/env.sh"
install=0
for arg in "$@"; do
    case "$arg" in
        --install) install=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "train_demo.sh: unknown argument $arg (use --install or nothing)" >&2; exit 2 ;;
    esac
done
dvt_install demo
cd "$DVT_ROOT"
root="${DVT_DEMO_ROOT:-.}"
out="$root/outputs/demo_train"
"$DVT_PY" -m dvt_ms digits --out "$root/data/digits"
"$DVT_PY" -m dvt_ms train -c configs/dvt_digits_demo.yaml --data_dir "$root/data/digits" --ckpt_save_dir "$out"
"$DVT_PY" -m dvt_ms eval -c configs/dvt_digits_demo.yaml --ckpt "$out/best.ckpt" --data_dir "$root/data/digits" \
    --eval_mode 2 --throughput_batches 0 --examples_per_exit 0 --output_dir "$out/eval"
"$DVT_PY" -m dvt_ms stamp --ckpt "$out/best.ckpt" --results "$out/eval/eval_results.json" \
    --dst "$out/dvt_digits_demo.ckpt"
if [ "$install" = 1 ]; then
    "$DVT_PY" -m dvt_ms stamp --ckpt "$out/best.ckpt" --results "$out/eval/eval_results.json" \
        --dst demo/dvt_digits_demo.ckpt
    echo "installed demo/dvt_digits_demo.ckpt"
fi
