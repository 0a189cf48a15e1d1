#!/usr/bin/env bash
# Run the test suite; installs dvt_ms with its test extras, torch, scikit-learn, onnx and onnxruntime when missing.
#   bash scripts/run_tests.sh                      # everything, slow tests included (what CI runs)
#   bash scripts/run_tests.sh --quick              # the everyday tier: no slow tests, one variant of each
#                                                  # exhaustive one (a few minutes on 2 cores)
#   bash scripts/run_tests.sh -m "not slow" tests/models
source "$(dirname "$0")/env.sh"
dvt_install test torch demo onnx
cd "$DVT_ROOT"
exec "$DVT_PY" -m pytest "$@"
