#!/usr/bin/env bash
# Shards between gale and h5py + hdf5plugin (the standard HDF5 zstd plugin), both ways, and
# h5dump's view of the filter pipeline; see h5py_interop.py. Skips (exit 77, which ctest reports as skipped) when
# hdf5plugin is not installed; launch/setup.sh installs it.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
python=/usr/bin/python3
[ -x "$python" ] || python=python3
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-interop-XXXXXX")
trap 'rm -rf "$work"' EXIT
"$python" "$GALE_SOURCE/tests/shard/h5py_interop.py" "$GALE_BIN" "$GALE_SHARED" "$work"
