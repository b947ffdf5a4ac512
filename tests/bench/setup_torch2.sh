#!/usr/bin/env bash
# Installs torch 2.x from PyPI (the PyTorch most users have: MKL, torch.compile) into a virtual
# environment outside the checkout, for bench_train_cpu.sh's torch2 peers. Kept out of the
# system python, where the tests use Debian's python3-torch. The wheel pulls CUDA libraries
# (several GB); torch.compile needs a C compiler (gcc, from launch/setup.sh). Idempotent.
#
#   bash tests/bench/setup_torch2.sh [VENV]      # default: ../venv-torch2 beside the checkout
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-$root/../venv-torch2}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet "torch>=2" numpy
fi
"$venv/bin/python" -c "import torch; print('setup_torch2: torch', torch.__version__, 'in', '$venv')"
