#!/usr/bin/env bash
# Data-parallel training with dvt-train on N devices, launched by msrun or by a rank table (HCCL).
#
#   msrun (Ascend, GPU or CPU; one call per node):
#     scripts/run_distribute_train.sh -n 8 -- -c configs/dvt_t2t_vit_12.yaml --data_dir /data/imagenet \
#         --device_target Ascend
#     two nodes of 8:  node 0: scripts/run_distribute_train.sh -n 16 -m 8 -a 10.0.0.1 -r 0 -- ...
#                      node 1: scripts/run_distribute_train.sh -n 16 -m 8 -a 10.0.0.1 -r 1 -- ...
#   rank table (Ascend clusters that still use RANK_TABLE_FILE; one call per node):
#     scripts/run_distribute_train.sh --rank_table /path/hccl_8p.json -n 8 -- -c configs/... --device_target Ascend
#     second node of 16:  ... --rank_table hccl_16p.json -n 16 -m 8 --rank_start 8 -- ...
#
# Options (before --):
#   -n, --worker_num N       devices in the whole job (required)
#   -m, --local_worker_num M devices on this node (default: N)
#   -a, --master_addr ADDR   msrun scheduler address (default 127.0.0.1)
#   -p, --master_port PORT   msrun scheduler port (default 8118; pick a free one when several jobs share a host)
#   -r, --node_rank R        msrun rank of this node (default 0)
#   -l, --log_dir DIR        launcher logs (default outputs/distribute_logs)
#   --rank_table FILE        launch with this rank table instead of msrun
#   --rank_start K           rank table: global rank of this node's first device (default 0)
#   --join False             msrun: return at once instead of waiting for the workers
# Everything after -- goes to dvt-train; --distribute True is added. PYTHON selects the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "run_distribute_train.sh: $*" >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # DVT_PY: the interpreter, PYTHONPATH set

WORKERS="" LOCAL="" ADDR="127.0.0.1" PORT="8118" NODE_RANK="0" LOG_DIR="outputs/distribute_logs"
RANK_TABLE="" RANK_START="0" JOIN="True"
while [ "$#" -gt 0 ]; do
    case "$1" in
        -n|--worker_num) WORKERS="${2:-}"; shift 2 ;;
        -m|--local_worker_num) LOCAL="${2:-}"; shift 2 ;;
        -a|--master_addr) ADDR="${2:-}"; shift 2 ;;
        -p|--master_port) PORT="${2:-}"; shift 2 ;;
        -r|--node_rank) NODE_RANK="${2:-}"; shift 2 ;;
        -l|--log_dir) LOG_DIR="${2:-}"; shift 2 ;;
        --rank_table) RANK_TABLE="${2:-}"; shift 2 ;;
        --rank_start) RANK_START="${2:-}"; shift 2 ;;
        --join) JOIN="${2:-}"; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) fail "unknown option $1 (dvt-train flags go after --)" ;;
    esac
done
[ -n "$WORKERS" ] || usage
LOCAL="${LOCAL:-$WORKERS}"
for v in WORKERS LOCAL PORT NODE_RANK RANK_START; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || fail "$v must be a non-negative integer, got '${!v}'"
done
[ "$WORKERS" -ge 1 ] && [ "$LOCAL" -ge 1 ] && [ "$LOCAL" -le "$WORKERS" ] \
    || fail "need 1 <= local_worker_num ($LOCAL) <= worker_num ($WORKERS)"
[ "$#" -gt 0 ] || fail "no dvt-train arguments after -- (at least -c configs/<model>.yaml --data_dir ...)"

dvt_install
PY="$DVT_PY"
mkdir -p "$LOG_DIR"

if [ -z "$RANK_TABLE" ]; then
    MSRUN="$(dirname "$PY")/msrun"
    [ -x "$MSRUN" ] || MSRUN="$(command -v msrun || true)"
    [ -n "$MSRUN" ] || fail "msrun not found (it comes with MindSpore >= 2.3)"
    # msrun starts the workers as `python <args>` from PATH: make that name the chosen interpreter.
    if [ "$(command -v python || true)" != "$(command -v "$PY")" ]; then
        # A wrapper, not a symlink: a symlinked venv interpreter would not find its environment.
        SHIM="$(mktemp -d)"
        printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v "$PY")" > "$SHIM/python"
        chmod +x "$SHIM/python"
        export PATH="$SHIM:$PATH"
    fi
    exec "$MSRUN" --worker_num="$WORKERS" --local_worker_num="$LOCAL" --master_addr="$ADDR" \
        --master_port="$PORT" --node_rank="$NODE_RANK" --log_dir="$LOG_DIR" --join="$JOIN" \
        python -m dvt_ms.train "$@" --distribute True
fi

[ -f "$RANK_TABLE" ] || fail "rank table not found: $RANK_TABLE"
[ $((RANK_START + LOCAL)) -le "$WORKERS" ] || fail "rank_start $RANK_START + $LOCAL local devices exceeds $WORKERS"
export RANK_TABLE_FILE="$(cd "$(dirname "$RANK_TABLE")" && pwd)/$(basename "$RANK_TABLE")"
export RANK_SIZE="$WORKERS"
pids=()
for ((i = 0; i < LOCAL; i++)); do
    rank=$((RANK_START + i))
    echo "rank $rank on device $i: log $LOG_DIR/rank_$rank.log" >&2
    DEVICE_ID="$i" RANK_ID="$rank" "$PY" -m dvt_ms.train "$@" --distribute True > "$LOG_DIR/rank_$rank.log" 2>&1 &
    pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
[ "$status" -eq 0 ] || echo "run_distribute_train.sh: a rank failed (exit $status); see $LOG_DIR/rank_*.log" >&2
exit "$status"
