#!/usr/bin/env bash
# Evaluate a DVT checkpoint with real early exit; every argument goes to dvt-eval (python -m dvt_ms.inference).
#   scripts/run_eval.sh -c configs/dvt_t2t_vit_12.yaml --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 1
#   scripts/run_eval.sh --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 2 --calib_size 50000 --budget 1.0
#   scripts/run_eval.sh --ckpt X.ckpt --eval_mode 0
#   scripts/run_eval.sh --help            (every flag)
# PYTHON selects the interpreter (default: the active virtualenv, else the repo's .venv, else python3).
set -euo pipefail

# The run made when no argument is given. Empty: print what to pass and exit 2.
DEFAULT_ARGS=()

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "${PYTHON}"
    elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "${VIRTUAL_ENV}/bin/python" ]; then
        echo "${VIRTUAL_ENV}/bin/python"
    elif [ -x "${ROOT}/.venv/bin/python" ]; then
        echo "${ROOT}/.venv/bin/python"
    else
        echo python3
    fi
}

if [ "$#" -eq 0 ]; then
    if [ "${#DEFAULT_ARGS[@]}" -eq 0 ]; then
        cat >&2 <<'MSG'
run_eval.sh: no arguments given and no default run is set up yet (the demo checkpoint is not part of
this checkout). Pass at least a checkpoint and a data set, for example:
  scripts/run_eval.sh -c configs/dvt_t2t_vit_12.yaml --ckpt dvt_t2t_vit_12.ckpt --data_dir /data/imagenet --eval_mode 1
  scripts/run_eval.sh --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 2 --calib_size 50000
  scripts/run_eval.sh --ckpt X.ckpt --eval_mode 0
--data_dir holds val/<class>/<images> (and train/ for --eval_mode 2), or the CIFAR binary files with
--dataset cifar10|cifar100. See scripts/run_eval.sh --help for every flag.
MSG
        exit 2
    fi
    set -- "${DEFAULT_ARGS[@]}"
fi

PY="$(pick_python)"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export GLOG_v="${GLOG_v:-3}"  # MindSpore's C++ log: errors only
exec "${PY}" -m dvt_ms.inference "$@"
