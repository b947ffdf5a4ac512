#!/usr/bin/env bash
# bench_tokenize: gale tokenize against spm_encode (sentencepiece 0.1.97), side by side in one
# run, on two real corpora, each file once (a repeated corpus would flatter gale's word cache):
#   fortunes  every English fortune file of the fortunes packages, ~2.6 MB: small enough that
#             gale's fixed costs (process start, model load) weigh on it;
#   man       the roff sources of the English man pages (sections 1-8, without the ~17,000
#             generated gcloud pages), ~34 MB: the steady-state throughput.
# For each corpus: spm_encode and gale on one thread, outputs checked identical (cmp), MB/s and
# the ratio in wall and in CPU (user + sys) seconds; gale --threads 1 vs 2 in wall and CPU, with
# the same output. Then gale's peak RSS on one 100 MB line (encoded as a stream: memory stays flat).
#
# usage: tests/bench/bench_tokenize.sh [GALE_BIN] [MODEL]     (not run by ctest)
# env: REPS (default 3): each timing is the least wall and the least CPU over REPS runs, since
# the dev machine is shared; CORPORA (default "fortunes man").
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
gale=${1:-${GALE_BIN:-$src/build/gale}}
model=${2:-${GALE_SHARED:-$src/../shared}/tokenizers/mistral-v3.model}
reps=${REPS:-3}
corpora=${CORPORA:-fortunes man}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make_corpus() { # NAME > text
    case $1 in
    fortunes) # top-level files (the per-language folders and Italian symlinks aside), without
        # the three Chinese collections and the .dat/.u8 companions
        for f in /usr/share/games/fortunes/*; do
            case $(basename "$f") in *.dat | *.u8 | chinese | tang300 | song100) continue ;; esac
            [ -f "$f" ] && [ ! -L "$f" ] && cat "$f"
        done ;;
    man)
        find /usr/share/man/man[1-8] -type f -name '*.gz' ! -name 'gcloud*' | LC_ALL=C sort | xargs zcat ;;
    *) echo "bench_tokenize: unknown corpus '$1'" >&2; exit 2 ;;
    esac
}

# best_of OUT CMD...: runs CMD REPS times, stdout to OUT; prints "least-wall least-cpu" in seconds.
# Timed in Python around each child (wall clock and the child's rusage, to the microsecond:
# /usr/bin/time rounds to 10 ms, a tenth of gale's time on the small corpus).
best_of() {
    python3 - "$reps" "$@" << 'EOF'
import resource, subprocess, sys, time
reps, out, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
best_wall = best_cpu = float("inf")
for _ in range(reps):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(cmd, stdout=f, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
print(f"{best_wall:.4f} {best_cpu:.4f}")
EOF
}
rate() { awk "BEGIN{printf \"%.1f\", $1 / 1e6 / ($2 > 0 ? $2 : 1e-6)}"; }
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }

echo "model $(basename "$model"); best of $reps; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
for corpus in $corpora; do
    make_corpus "$corpus" > "$tmp/$corpus.txt"
    text=$tmp/$corpus.txt
    bytes=$(wc -c < "$text")
    echo
    echo "corpus $corpus: $bytes bytes, $(wc -l < "$text") lines"
    read -r spm_wall spm_cpu <<< "$(best_of "$tmp/spm.ids" spm_encode --model="$model" --output_format=id "$text")"
    read -r g1_wall g1_cpu <<< "$(best_of "$tmp/g1.ids" "$gale" tokenize --tokenizer "$model" --threads 1 --input "$text")"
    read -r g2_wall g2_cpu <<< "$(best_of "$tmp/g2.ids" "$gale" tokenize --tokenizer "$model" --threads 2 --input "$text")"
    same="identical"
    cmp -s "$tmp/spm.ids" "$tmp/g1.ids" || same="DIFFERENT (1 thread)"
    cmp -s "$tmp/spm.ids" "$tmp/g2.ids" || same="$same, DIFFERENT (2 threads)"
    [ "$same" = identical ] || status=1
    printf "  %-30s %8s %8s %11s %10s\n" "" "wall s" "cpu s" "MB/s wall" "MB/s cpu"
    printf "  %-30s %8s %8s %11s %10s\n" "spm_encode --output_format=id" "$spm_wall" "$spm_cpu" \
        "$(rate "$bytes" "$spm_wall")" "$(rate "$bytes" "$spm_cpu")"
    printf "  %-30s %8s %8s %11s %10s\n" "gale tokenize --threads 1" "$g1_wall" "$g1_cpu" \
        "$(rate "$bytes" "$g1_wall")" "$(rate "$bytes" "$g1_cpu")"
    printf "  %-30s %8s %8s %11s %10s\n" "gale tokenize --threads 2" "$g2_wall" "$g2_cpu" \
        "$(rate "$bytes" "$g2_wall")" "$(rate "$bytes" "$g2_cpu")"
    echo "  outputs (ids of all three): $same"
    echo "  gale/spm, one thread: $(ratio "$spm_wall" "$g1_wall")x wall, $(ratio "$spm_cpu" "$g1_cpu")x cpu"
    echo "  gale 2 threads vs 1: $(ratio "$g1_wall" "$g2_wall")x wall, $(ratio "$g2_cpu" "$g1_cpu")x the cpu"
done

# one 100 MB line: the fortunes with newlines as spaces, repeated
make_corpus fortunes | tr '\n' ' ' > "$tmp/unit.txt"
: > "$tmp/line.txt"
while [ "$(stat -c %s "$tmp/line.txt")" -lt 100000000 ]; do cat "$tmp/unit.txt" >> "$tmp/line.txt"; done
echo >> "$tmp/line.txt"
/usr/bin/time -o "$tmp/time" -f "%e %M" "$gale" tokenize --tokenizer "$model" --input "$tmp/line.txt" > "$tmp/line.ids"
read -r line_wall line_rss < "$tmp/time"
echo
echo "one line of $(stat -c %s "$tmp/line.txt") bytes: $line_wall s, $(wc -w < "$tmp/line.ids") ids, peak RSS $((line_rss / 1024)) MiB"
exit $status
