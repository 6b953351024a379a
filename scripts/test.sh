#!/usr/bin/env bash
# Builds the test environment from this checkout alone and runs the suite (what .ci/run calls).
#
# The environment is a virtualenv inside the checkout (.venv-test/), made from pyproject.toml's
# extras pinned by scripts/constraints.txt (the tested versions). It is rebuilt whenever either
# file (or this script) changes, so a dependency that pyproject.toml forgets to declare fails here
# instead of being picked up from whatever the machine has installed (this happened with
# flatbuffers, which jax.export's serialization needs). Extra pytest arguments pass through:
#   bash scripts/test.sh tests/test_export.py -k stablehlo
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-test
stamp=$( { "$PYTHON" --version; cat pyproject.toml scripts/constraints.txt scripts/test.sh; } 2>&1 | sha256sum | cut -c1-16)

# This machine's pip configuration names local index folders that hold only some packages; pip
# warns once per package for the others. Everything else pip says is kept (pipefail keeps its
# exit status).
quiet_pip() { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory." || true; }

if [[ ! -x $VENV/bin/python || "$(cat $VENV/.stamp 2>/dev/null)" != "$stamp" ]]; then
  echo "building $VENV (pyproject.toml, scripts/constraints.txt or scripts/test.sh changed, or it is missing)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # torch: the CPU build (reference tests, conversion). deploy: jax2onnx + onnxruntime (ONNX tests).
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[test,torch,deploy]" 2>&1 | quiet_pip
  # hear21passt (the PyTorch PaSST reference) without its timm/torchaudio requirements: those pull
  # a CUDA torch build, and the tests stub the two helpers it takes from them.
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt --no-deps hear21passt 2>&1 | quiet_pip
  # Whatever pip resolved must be exactly the locked set: a package missing from the lock, or a
  # version drifting from it, fails here rather than in some later run.
  "$VENV/bin/python" scripts/check_lock.py scripts/constraints.txt
  echo "$stamp" > "$VENV/.stamp"
fi
exec "$VENV/bin/python" -m pytest -q -n 2 --durations=15 "${@:-tests}"
