#!/usr/bin/env bash
# Installs what the benchmarks in tests/bench need beyond launch/setup.sh: Debian's PyTorch
# (for /usr/bin/python3; large, so kept out of the project's own set-up) and perf for profiling.
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
echo "setup_bench: all packages present"
