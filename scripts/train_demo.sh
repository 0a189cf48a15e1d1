#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (demo/dvt_digits_demo.ckpt): build the digits folder, train
# configs/dvt_digits_demo.yaml with dvt-train on the CPU, copy the best checkpoint into demo/.
source "$(dirname "$0")/env.sh"
dvt_install demo
cd "$DVT_ROOT"
python -m dvt_ms.demo.digits --out data/digits
python -m dvt_ms.train -c configs/dvt_digits_demo.yaml --data_dir data/digits "$@"
python - <<'PY'
import os, shutil
src, dst = "outputs/demo_train/best.ckpt", "demo/dvt_digits_demo.ckpt"
os.makedirs("demo", exist_ok=True)
shutil.copyfile(src, dst + ".tmp")
os.replace(dst + ".tmp", dst)
print(f"copied {src} -> {dst} ({os.path.getsize(dst) / 1e6:.2f} MB)")
PY
