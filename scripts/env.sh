# Sourced by the launch scripts. Picks the Python to run:
#   $PYTHON if set; else the active virtual or conda environment; else ./.venv (created when missing).
# Defines dvt_install [extra ...]: installs dvt_ms (editable) and the extras' packages when missing.
set -euo pipefail
DVT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DVT_TORCH_PIN="${DVT_TORCH_PIN:-torch==2.13.0}"

if [[ -n "${PYTHON:-}" ]]; then
  DVT_PY="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
  DVT_PY="python"
else
  if [[ ! -x "$DVT_ROOT/.venv/bin/python" ]]; then
    echo "[dvt_ms] creating virtual environment $DVT_ROOT/.venv" >&2
    "${PYTHON3:-python3}" -m venv "$DVT_ROOT/.venv"
  fi
  DVT_PY="$DVT_ROOT/.venv/bin/python"
  export VIRTUAL_ENV="$DVT_ROOT/.venv" PATH="$DVT_ROOT/.venv/bin:$PATH"  # child processes see it too
fi
export PYTHONPATH="$DVT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"  # MindSpore's C++ log: errors only

dvt_install() {
  # dvt_install [test] [torch] [demo] [onnx] [serve] [ray]: install only when an import is missing (or numpy is 2.x).
  if "$DVT_PY" - "$@" <<'PY'
import importlib.util, sys
mods = {"": ["mindspore", "numpy", "yaml", "PIL", "safetensors", "tqdm"], "test": ["pytest", "ruff"],
        "torch": ["torch"], "demo": ["sklearn"], "onnx": ["onnx", "onnxruntime", "torch"],
        "serve": ["fastapi", "uvicorn", "python_multipart", "prometheus_client"], "ray": ["ray"]}
need = [m for extra in [""] + sys.argv[1:] for m in mods.get(extra, [])]
missing = [m for m in need if importlib.util.find_spec(m) is None]
import importlib.metadata as md
try:
    md.version("dvt_ms")
    scripts = {e.name for e in md.distribution("dvt_ms").entry_points}
    if not {"dvt-eval", "dvt-export", "dvt-predict", "dvt-serve", "dvt-train"} <= scripts:
        missing.append("dvt_ms")  # installed by an older version: its commands are out of date
except md.PackageNotFoundError:
    missing.append("dvt_ms")
if not missing:
    import numpy
    missing = ["numpy<2"] if int(numpy.__version__.split(".")[0]) >= 2 else []
sys.exit(1 if missing else 0)
PY
  then return 0; fi
  local extras=() pkgs=()
  for e in "$@"; do
    if [[ "$e" == "torch" ]]; then pkgs+=("$DVT_TORCH_PIN"); else extras+=("$e"); fi
    if [[ "$e" == "onnx" ]]; then pkgs+=("$DVT_TORCH_PIN"); fi  # the exporter's torch: the pinned CPU build
  done
  local spec="$DVT_ROOT"
  if [[ ${#extras[@]} -gt 0 ]]; then spec="$DVT_ROOT[$(IFS=,; echo "${extras[*]}")]"; fi
  local what="dvt_ms"
  if [[ ${#extras[@]} -gt 0 ]]; then what+="[$(IFS=,; echo "${extras[*]}")]"; fi
  if [[ ${#pkgs[@]} -gt 0 ]]; then what+=" ${pkgs[*]}"; fi
  echo "[dvt_ms] installing $what into $("$DVT_PY" -c 'import sys; print(sys.prefix)')" >&2
  "$DVT_PY" -m pip install --quiet --disable-pip-version-check -e "$spec" "numpy<2" "${pkgs[@]}"
}
