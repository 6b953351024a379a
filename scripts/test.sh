#!/usr/bin/env bash
# Installs asc-jax with its test extras (PyTorch CPU for the conversion tests) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,torch]"
# hear21passt (the PyTorch PaSST reference) without its timm/torchaudio requirements: those pull
# a CUDA torch build, and the tests stub the two helpers it takes from them.
python -m pip install -q --no-deps hear21passt==0.0.26
python -m pytest -q -n 2 --durations=15 tests
