#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (demo/dvt_digits_demo.ckpt): build the digits folder, train
# configs/dvt_digits_demo.yaml with dvt-train on the CPU, calibrate its exit thresholds (dvt-eval
# --eval_mode 2) and store them, with the evaluation figures, inside the copied checkpoint.
source "$(dirname "$0")/env.sh"
dvt_install demo
cd "$DVT_ROOT"
"$DVT_PY" -m dvt_ms digits --out data/digits
"$DVT_PY" -m dvt_ms.train -c configs/dvt_digits_demo.yaml --data_dir data/digits "$@"
"$DVT_PY" -m dvt_ms.inference -c configs/dvt_digits_demo.yaml --ckpt outputs/demo_train/best.ckpt \
    --data_dir data/digits --eval_mode 2 --output_dir outputs/demo_train/eval
mkdir -p demo
"$DVT_PY" -m dvt_ms stamp --ckpt outputs/demo_train/best.ckpt \
    --results outputs/demo_train/eval/eval_results.json --dst demo/dvt_digits_demo.ckpt
