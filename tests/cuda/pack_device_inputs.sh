#!/usr/bin/env bash
# Fills .device/ (git-ignored) with what tests/cuda/device_check.sh needs on a GPU machine,
# where ../shared does not travel and the build's libraries may be missing. From the project
# root, on the development machine (a build with CUDA):
#
#   bash tests/cuda/pack_device_inputs.sh [--rerun-cpu]
#
#   .device/golden/             ../shared/golden's fixtures (gale verify)
#   .device/hf_train_bench.py   ../shared/bench's PyTorch baseline
#   .device/fortunes/           the prepared Debian fortunes (configs/prepare-fortunes.yaml)
#   .device/cpu-run/metrics.jsonl  the CPU bf16 reference run of tests/cuda/mixtral-tiny-check.yaml
#                               (200 steps; kept unless --rerun-cpu)
#   .device/bundle.tar.xz       gale, its CUDA module, test_cuda_ops and bench_train_step for sm_90
#                               (build-device/), the shared libraries they load except glibc,
#                               libstdc++ and CUDA's (the GPU machine has cuBLAS 13), and Open
#                               MPI's components and help files (relocated with OPAL_PREFIX)
#
# The device tool then runs `bash tests/cuda/device_check.sh` with carry [".device"].
set -euo pipefail
cd "$(dirname "$0")/../.."
shared="${GALE_SHARED:-../shared}"
dev=.device
mkdir -p "$dev"

rm -rf "$dev/golden" && mkdir -p "$dev/golden"
for f in "$shared"/golden/*/; do
    cp -r "$f" "$dev/golden/"
done
cp "$shared/bench/hf_train_bench.py" "$dev/"

echo "== build-device: Release, sm_90"
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DGALE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build-device -j"$(nproc)" --target gale gale_commands gale_cuda test_cuda_ops bench_train_step

if [ ! -d "$dev/fortunes" ]; then
    echo "== the fortunes"
    [ -d out/fortunes ] || build-device/gale prepare configs/prepare-fortunes.yaml
    cp -r out/fortunes "$dev/fortunes"
fi
if [ ! -f "$dev/cpu-run/metrics.jsonl" ] || [ "${1:-}" = --rerun-cpu ]; then
    echo "== the CPU bf16 reference run (200 steps)"
    rm -rf "$dev/cpu-run"
    OMP_WAIT_POLICY=passive build-device/gale train tests/cuda/mixtral-tiny-check.yaml
fi
rm -rf "$dev/cpu-run/checkpoints"  # only the loss curve travels

echo "== the bundle"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/ompi/usr/lib/x86_64-linux-gnu" "$stage/ompi/usr/share"
cp build-device/gale build-device/libgale_commands.so build-device/libgale_cuda.so build-device/test_cuda_ops build-device/bench_train_step "$stage/bin/"
ompi=/usr/lib/x86_64-linux-gnu/openmpi
skip='^(libc|libm|libdl|libpthread|librt|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnvidia-.*)\.so'
{
    ldd "$stage"/bin/*
    find "$ompi/lib/openmpi3" -name '*.so' -exec ldd {} \;
} | awk '$3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    base=$(basename "$lib")
    [[ $base =~ $skip ]] || cp -L "$lib" "$stage/lib/$base"
done
cp -r "$ompi" "$stage/ompi/usr/lib/x86_64-linux-gnu/"
cp -r /usr/share/openmpi "$stage/ompi/usr/share/"
du -sh "$stage"
XZ_OPT="-T0 -6" tar -cJf "$dev/bundle.tar.xz" -C "$stage" .
du -sh "$dev" "$dev"/*
