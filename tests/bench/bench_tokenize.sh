#!/usr/bin/env bash
# bench_tokenize: gale tokenize against spm_encode (sentencepiece 0.1.97) on one corpus in one
# run: every English fortune file of the fortunes packages concatenated (each file once: a
# repeated corpus would flatter gale's word cache). Checks the outputs are identical, prints
# MB/s of both on one thread and the ratio, gale's scaling over --threads 1 and 2, and gale's
# peak RSS on one 100 MB line (memory must stay flat: it is encoded as a stream).
#
# usage: tests/bench/bench_tokenize.sh [GALE_BIN] [MODEL]     (not run by ctest)
# Each timing is the best of REPS runs (default 3), since the dev machine is shared: the least
# wall and the least CPU (user+sys) seconds, each over the runs.
#
# OPENBLAS_NUM_THREADS=1 unless set: the gale binary links OpenBLAS (for training), whose
# thread pool starts with the process and spins on the idle cores for the whole of a short
# run, doubling the CPU seconds of `gale tokenize` without doing any of its work.
set -euo pipefail
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
src=$(cd "$(dirname "$0")/../.." && pwd)
gale=${1:-${GALE_BIN:-$src/build/gale}}
model=${2:-${GALE_SHARED:-$src/../shared}/tokenizers/mistral-v3.model}
reps=${REPS:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# English fortunes: the top-level files (the per-language folders and the Italian symlinks
# aside), without the three Chinese collections and the .dat/.u8 companions.
for f in /usr/share/games/fortunes/*; do
    case $(basename "$f") in *.dat | *.u8 | chinese | tang300 | song100) continue ;; esac
    [ -f "$f" ] && [ ! -L "$f" ] && cat "$f"
done > "$tmp/en.txt"
bytes=$(wc -c < "$tmp/en.txt")
lines=$(wc -l < "$tmp/en.txt")

# best_of OUT CMD...: runs CMD REPS times (stdout to OUT), prints the least "wall cpu"
best_of() {
    local out=$1 best_wall=999999 best_cpu=999999
    shift
    for _ in $(seq "$reps"); do
        /usr/bin/time -o "$tmp/time" -f "%e %U %S" "$@" > "$out"
        read -r wall user sys < "$tmp/time"
        best_wall=$(awk "BEGIN{print ($wall < $best_wall) ? $wall : $best_wall}")
        best_cpu=$(awk "BEGIN{c = $user + $sys; print (c < $best_cpu) ? c : $best_cpu}")
    done
    echo "$best_wall $best_cpu"
}
mbps() { awk "BEGIN{printf \"%.2f\", $bytes / 1e6 / ($1 > 0 ? $1 : 0.001)}"; }

echo "corpus: English fortunes, $bytes bytes, $lines lines; model $(basename "$model"); best of $reps;" \
    "OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS"
read -r spm_wall spm_cpu <<< "$(best_of "$tmp/spm.ids" spm_encode --model="$model" --output_format=id "$tmp/en.txt")"
read -r g1_wall g1_cpu <<< "$(best_of "$tmp/gale.ids" "$gale" tokenize --tokenizer "$model" --threads 1 --input "$tmp/en.txt")"
if cmp -s "$tmp/spm.ids" "$tmp/gale.ids"; then same="identical"; else same="DIFFERENT"; fi
read -r g2_wall g2_cpu <<< "$(best_of "$tmp/gale2.ids" "$gale" tokenize --tokenizer "$model" --threads 2 --input "$tmp/en.txt")"
cmp -s "$tmp/spm.ids" "$tmp/gale2.ids" || same="DIFFERENT (2 threads)"

printf "%-28s %8s %8s %10s %10s\n" "" "wall s" "cpu s" "MB/s wall" "MB/s cpu"
printf "%-28s %8s %8s %10s %10s\n" "spm_encode --output_format=id" "$spm_wall" "$spm_cpu" "$(mbps "$spm_wall")" "$(mbps "$spm_cpu")"
printf "%-28s %8s %8s %10s %10s\n" "gale tokenize --threads 1" "$g1_wall" "$g1_cpu" "$(mbps "$g1_wall")" "$(mbps "$g1_cpu")"
printf "%-28s %8s %8s %10s %10s\n" "gale tokenize --threads 2" "$g2_wall" "$g2_cpu" "$(mbps "$g2_wall")" "$(mbps "$g2_cpu")"
echo "outputs: $same"
echo "gale/spm, one thread: $(awk "BEGIN{printf \"%.1fx wall, %.1fx cpu\", $spm_wall / $g1_wall, $spm_cpu / $g1_cpu}")"
echo "gale 2 threads vs 1: $(awk "BEGIN{printf \"%.2fx wall\", $g1_wall / $g2_wall}")"

# one 100 MB line: the corpus with newlines as spaces, repeated
while [ "$(stat -c %s "$tmp/line.txt" 2> /dev/null || echo 0)" -lt 100000000 ]; do
    tr '\n' ' ' < "$tmp/en.txt" >> "$tmp/line.txt"
done
echo >> "$tmp/line.txt"
/usr/bin/time -o "$tmp/time" -f "%e %M" "$gale" tokenize --tokenizer "$model" --input "$tmp/line.txt" > "$tmp/line.ids"
read -r line_wall line_rss < "$tmp/time"
/usr/bin/time -o "$tmp/time" -f "%M" "$gale" tokenize --tokenizer "$model" --input "$tmp/en.txt" > /dev/null
read -r corpus_rss < "$tmp/time"
echo "one line of $(stat -c %s "$tmp/line.txt") bytes: $line_wall s, $(wc -w < "$tmp/line.ids") ids, peak RSS $((line_rss / 1024)) MiB (the $bytes-byte corpus: $((corpus_rss / 1024)) MiB)"
