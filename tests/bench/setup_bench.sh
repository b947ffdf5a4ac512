#!/usr/bin/env bash
# Installs what the benchmarks in tests/bench need beyond launch/setup.sh: Debian's PyTorch
# (for /usr/bin/python3; large, so kept out of the project's own set-up), transformers, and perf
# for profiling. CI runs it too, so that the tests against these peers run rather than skip.
# Idempotent. Run as root (or with sudo).
set -euo pipefail

packages=(python3-torch python3-numpy linux-perf)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup_bench: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
/usr/bin/python3 -c "import torch" || { echo "setup_bench: /usr/bin/python3 cannot import torch" >&2; exit 1; }
# transformers (PyPI), the version that runs on Debian's torch 1.13: the peer that loads gale's
# checkpoints in tests/train/test_hf_load.sh.
if ! /usr/bin/python3 -c "import transformers" 2>/dev/null; then
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages "transformers==4.40.2"
fi
echo "setup_bench: all packages present"
