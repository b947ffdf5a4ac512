#!/usr/bin/env bash
# Installs what the benchmarks in tests/bench need beyond launch/setup.sh: Debian's PyTorch
# (for /usr/bin/python3; large, so kept out of the project's own set-up), transformers, and perf
# for profiling. CI runs it too, so that the tests against these peers run rather than skip.
# Idempotent. Run as root (or with sudo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

bash "$root/launch/setup.sh" python3-torch python3-psutil linux-perf
/usr/bin/python3 -c "import torch" || { echo "setup_bench: /usr/bin/python3 cannot import torch" >&2; exit 1; }
# transformers (PyPI), the version that runs on Debian's torch 1.13: the peer that loads gale's
# checkpoints in tests/train/test_hf_load.sh and generates beside gale sample.
if ! /usr/bin/python3 -c "import transformers" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages "transformers==4.40.2"
fi
# peft (PyPI), the peer of tests/lora: 0.10 runs on torch 1.13 and transformers 4.40. --no-deps,
# so that its requirements do not replace Debian's torch; accelerate (imported by peft) likewise.
if ! /usr/bin/python3 -c "import peft" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages --no-deps "peft==0.10.0" "accelerate==0.28.0"
fi
echo "setup_bench: all packages present"
