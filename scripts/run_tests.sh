#!/usr/bin/env bash
# Run the test suite; installs dvt_ms with its test extras, torch, scikit-learn, onnx, onnxruntime, the HTTP
# server's packages and Ray Serve when missing.
#   bash scripts/run_tests.sh                      # everything, slow tests included (what CI runs)
#   bash scripts/run_tests.sh --quick              # the everyday tier: no slow tests, one variant of each
#                                                  # exhaustive one (a few minutes on 2 cores)
#   bash scripts/run_tests.sh -m "not slow" tests/models
#   bash scripts/run_tests.sh --sanitize           # the kernel tests against the kernels built with
#                                                  # AddressSanitizer + UndefinedBehaviorSanitizer (CI runs it)
source "$(dirname "$0")/env.sh"
dvt_install test torch demo onnx serve ray
cd "$DVT_ROOT"
if [[ "${1:-}" == "--sanitize" ]]; then
  shift
  preload="$("$DVT_PY" -c "from dvt_ms.kernels.build import sanitizer_preload; print(sanitizer_preload())")"
  # leaks: Python and MindSpore keep memory to exit by design; any other finding ends the run with its report
  export DVT_MS_KERNEL_SANITIZE=1 ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1"
  LD_PRELOAD="$preload" exec "$DVT_PY" -m pytest --quick tests/kernels "$@"
fi
exec "$DVT_PY" -m pytest "$@"
