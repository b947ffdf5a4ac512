#!/usr/bin/env bash
# Installs every system package gale needs to build, test and run its quick start.
# Idempotent: apt-get skips what is already installed. Run as root (or with sudo).
# Extra Debian package names given as arguments are installed too (tests/bench/setup_bench.sh).
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev
  # libraries gale links against
  libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libzstd-dev zstd
  libopenblas-dev libjansson-dev libyaml-dev libxxhash-dev nettle-dev zlib1g-dev libpcre2-dev
  # references the tests compare against
  sentencepiece python3-sentencepiece python3-numpy python3-h5py python3-pip
  # real text for the tokenizer tests and the quick start
  fortune-mod fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-ru fortunes-zh
  manpages manpages-de manpages-es manpages-it manpages-pl manpages-ru manpages-ja manpages-zh
  # plots
  gnuplot-nox
  "$@"
)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# hdf5plugin (PyPI): the standard HDF5 zstd filter, for the shard interop test. --no-deps
# keeps Debian's python3-h5py (HDF5 1.10) rather than pulling a second h5py from PyPI.
if ! /usr/bin/python3 -c "import hdf5plugin" 2>/dev/null; then
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages --no-deps hdf5plugin==7.1.0
fi
# mistral-common (PyPI): Mistral's own tokenizer files (tokenizer.model.v1, the v3 one),
# which gale finds by name (`tokenizer: mistral-v1`). --no-deps: gale reads only its data
# files, and its dependencies would replace Debian's numpy and sentencepiece.
if ! /usr/bin/python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('mistral_common') is None)" 2>/dev/null; then
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages --no-deps mistral-common==1.13.1
fi
echo "setup: all packages present"
