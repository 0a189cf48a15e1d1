# Sourced by the launch scripts: use the active virtual environment, or create and fill ./.venv.
# Installs dvt_ms (editable) with the extras named in DVT_EXTRAS when something is missing.
set -euo pipefail
DVT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DVT_EXTRAS="${DVT_EXTRAS:-}"
DVT_TORCH_PIN="${DVT_TORCH_PIN:-torch==2.13.0}"

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x "$DVT_ROOT/.venv/bin/python" ]]; then
    echo "[dvt_ms] creating virtual environment $DVT_ROOT/.venv" >&2
    "${PYTHON:-python3}" -m venv "$DVT_ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$DVT_ROOT/.venv/bin/activate"
fi

dvt_install() {
  # dvt_install [extra ...]: pip-install the package and what the extras need, only when missing.
  local want=("$@") missing=0
  python - "$@" <<'PY' || missing=1
import importlib.util, sys
mods = {"": ["mindspore", "numpy", "yaml", "PIL", "dvt_ms"], "test": ["pytest"], "torch": ["torch"],
        "demo": ["sklearn"], "plot": ["matplotlib"]}
need = [m for extra in [""] + sys.argv[1:] for m in mods.get(extra, [])]
missing = [m for m in need if importlib.util.find_spec(m) is None]
import numpy
sys.exit(1 if missing or int(numpy.__version__.split(".")[0]) >= 2 else 0)
PY
  if [[ $missing -eq 1 ]]; then
    local spec="$DVT_ROOT"
    local extras=()
    for e in "${want[@]}"; do [[ "$e" != "torch" ]] && extras+=("$e"); done
    if [[ ${#extras[@]} -gt 0 ]]; then spec="$DVT_ROOT[$(IFS=,; echo "${extras[*]}")]"; fi
    echo "[dvt_ms] installing $spec ${want[*]/torch/$DVT_TORCH_PIN}" >&2
    python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    local pkgs=(-e "$spec" "numpy<2")
    for e in "${want[@]}"; do [[ "$e" == "torch" ]] && pkgs+=("$DVT_TORCH_PIN"); done
    python -m pip install --quiet "${pkgs[@]}"
  fi
}
