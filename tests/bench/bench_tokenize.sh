#!/usr/bin/env bash
# bench_tokenize: gale tokenize against the tokenizers people use, per language and script,
# side by side in one run, outputs compared id for id:
#   SentencePiece (mistral-v3.model): spm_encode 0.1.97 (Debian, whole process) and
#     sentencepiece 0.2.3 from PyPI (encode(lines, num_threads=1): the encode call only);
#   Tekken (tekken_240911.json from mistral-common): tiktoken from PyPI with the same vocabulary
#     and pattern (encode_ordinary_batch(lines, num_threads=1): the encode call only);
#   gale: its whole process, one thread, loading the tokenizer, reading and printing included.
# CPU seconds (user + sys, from rusage), the least of REPS runs: the machine is shared with other
# jobs, and CPU time is what they disturb least. Corpora, each at most CAP bytes of whole lines,
# made valid UTF-8 (U+FFFD for ill-formed bytes) so that the Python peers read the same text:
#   en      English fortunes (fortunes, fortunes-min)        code   C headers in /usr/include
#   paths   dpkg's lists of installed files                  de fr ru ja zh   man pages (and
#           fortunes-ru, the Chinese fortunes)               json   iso-codes' JSON, minified
#   base64  base64 of shared libraries                       chat   generated: fortune lines
#           with emoji, ZWJ sequences and flags between words, as chat messages (seeded)
#   mixed   all of the above, concatenated
# Then gale's fixed cost with the Tekken file (through its vocabulary cache, which the runs
# use, and parsing the JSON), its thread scaling on mixed (2 threads on this 2-core machine),
# and its peak RSS on one 100 MB line (a stream: memory stays flat).
#
# usage: tests/bench/bench_tokenize.sh [GALE_BIN] [MODEL] [TEKKEN]     (not run by ctest)
# env: REPS (default 3), ROUNDS (default 1: rounds of REPS runs that the sides take in turn per
# corpus; the least over all), CAP (default 4000000 bytes), CORPORA (default: all), TOK_VENV (the venv
# of sentencepiece 0.2.3 and tiktoken, made on first use; default .bench/venv-tok), CORPUS_DIR
# (keep the corpora there and reuse them, e.g. for profiling).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
gale=${1:-${GALE_BIN:-$src/build/gale}}
model=${2:-${GALE_SHARED:-$src/../shared}/tokenizers/mistral-v3.model}
tekken=${3:-$(/usr/bin/python3 "$src/tests/tok/tekken_reference.py" files | tail -1)}
reps=${REPS:-3}
rounds=${ROUNDS:-1}
cap=${CAP:-4000000}
corpora=${CORPORA:-en code paths de fr ru ja zh json base64 chat mixed}
venv=${TOK_VENV:-$src/.bench/venv-tok}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
texts=${CORPUS_DIR:-$tmp}
mkdir -p "$texts"
# gale keeps a Tekken file's parsed vocabulary and each tokenizer's lookup tables in a cache
# (data/file_cache.h): the runs below use one of their own, made by a first load, and the fixed
# cost is measured with and without it
export XDG_CACHE_HOME="$tmp/cache"
"$gale" tokenize --tokenizer "$tekken" --input /dev/null
"$gale" tokenize --tokenizer "$model" --input /dev/null

if ! "$venv/bin/python" -c "import sentencepiece, tiktoken" 2>/dev/null; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet sentencepiece==0.2.3 tiktoken==0.14.0
fi

raw_corpus() { # NAME > bytes
    local man=/usr/share/man fort=/usr/share/games/fortunes
    case $1 in
    en) for f in "$fort"/*; do
            case $(basename "$f") in *.dat | *.u8 | chinese | tang300 | song100) continue ;; esac
            [ -f "$f" ] && [ ! -L "$f" ] && cat "$f"
        done ;;
    code) find /usr/include -name '*.h' | LC_ALL=C sort | xargs cat ;;
    paths) cat /var/lib/dpkg/info/*.list ;;
    de | fr | ja) find "$man/$1" -name '*.gz' | LC_ALL=C sort | xargs zcat ;;
    ru) cat "$fort"/ru/* 2>/dev/null || true; find "$man/ru" -name '*.gz' | LC_ALL=C sort | xargs zcat ;;
    zh) cat "$fort"/chinese "$fort"/tang300 "$fort"/song100 2>/dev/null || true
        find "$man/zh_CN" -name '*.gz' | LC_ALL=C sort | xargs zcat ;;
    json) /usr/bin/python3 -c '
import glob, json
for p in sorted(glob.glob("/usr/share/iso-codes/json/*.json")):
    print(json.dumps(json.load(open(p, encoding="utf-8")), ensure_ascii=False, separators=(",", ":")))' ;;
    base64) find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'lib*.so.*' -type f | LC_ALL=C sort | head -40 |
            xargs cat | base64 -w 76 ;;
    chat) { raw_corpus en 2>/dev/null || true; } | /usr/bin/python3 -c '
import json, random, sys
rng = random.Random(9)
emoji = ["\U0001F600", "\U0001F602", "\U0001F44D", "\u2764\ufe0f", "\U0001F525", "\U0001F389", "\U0001F914",
         "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1EB\U0001F1F7", "\U0001F44B\U0001F3FD", "\u2728",
         "\U0001F680", "\U0001F64F", "\U0001F60D\U0001F60D\U0001F60D", ":)", "!!!"]
for line in sys.stdin.read().split("\n"):
    words = line.split()
    if not words:
        continue
    out = []
    for w in words:
        out.append(w)
        if rng.random() < 0.25:
            out.append(rng.choice(emoji))
    role = rng.choice(["user", "assistant"])
    print(json.dumps({"role": role, "content": " ".join(out)}, ensure_ascii=False))' ;;
    *) echo "bench_tokenize: unknown corpus '$1'" >&2; exit 2 ;;
    esac
}

# make_corpus NAME OUT: valid UTF-8, whole lines, at most CAP bytes
make_corpus() {
    if [ "$1" = mixed ]; then
        for c in en code paths de fr ru ja zh json base64 chat; do
            [ -f "$texts/$c.txt" ] || make_corpus "$c" "$texts/$c.txt"
            cat "$texts/$c.txt"
        done > "$2"
        return
    fi
    { raw_corpus "$1" 2>/dev/null || true; } | head -c $((cap * 2)) | /usr/bin/python3 -c '
import sys
cap = int(sys.argv[1])
text = sys.stdin.buffer.read().decode("utf-8", "replace").encode("utf-8")[:cap]
sys.stdout.buffer.write(text[:text.rfind(b"\n") + 1])' "$cap" > "$2"
}

# best_of OUT CMD...: runs CMD REPS times, stdout to OUT; prints the least CPU seconds
# (the child's rusage) and the least wall seconds.
best_of() {
    /usr/bin/python3 - "$reps" "$@" << 'PY'
import resource, subprocess, sys, time
reps, out, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
best_cpu = best_wall = float("inf")
for _ in range(reps):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(cmd, stdout=f, check=True)
    best_wall = min(best_wall, time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    best_cpu = min(best_cpu, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
print(f"{best_cpu:.4f} {best_wall:.4f}")
PY
}
least() { awk "BEGIN{a = \"$1\" == \"inf\" ? $2 : $1; print (a < $2 ? a : $2)}"; }
rate() { awk "BEGIN{printf \"%.1f\", $1 / 1e6 / ($2 > 0 ? $2 : 1e-6)}"; }
ratio() { awk "BEGIN{printf \"%.1f\", $1 / $2}"; }
peers() { "$venv/bin/python" "$src/tests/bench/bench_tokenize_peers.py" "$@" "$reps"; }

echo "gale $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?'); $(basename "$model") and $(basename "$tekken");" \
     "best of $rounds x $reps CPU seconds (rounds taken in turn by every side); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs));" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "MB/s of CPU time; ratios are gale's speed over the peer's"
printf "%-7s %6s | %9s %9s %9s %8s %8s | %9s %9s %8s | %s\n" corpus MB spm_encode "sp 0.2.3" gale \
    "/sp0.2.3" "/spm_enc" tiktoken "gale tek" /tiktoken "ids"
status=0
for corpus in $corpora; do
    text=$texts/$corpus.txt
    [ -f "$text" ] || make_corpus "$corpus" "$text"
    bytes=$(wc -c < "$text")
    spm_cpu=inf sp_cpu=inf g_cpu=inf tt_cpu=inf gt_cpu=inf
    for _ in $(seq "$rounds"); do # each side in turn, so that a slow spell of the VM hits both
        read -r t _ <<< "$(best_of "$tmp/spm.ids" spm_encode --model="$model" --output_format=id "$text")"
        spm_cpu=$(least "$spm_cpu" "$t")
        sp_cpu=$(least "$sp_cpu" "$(peers sentencepiece "$model" "$text" "$tmp/sp.ids")")
        read -r t _ <<< "$(best_of "$tmp/g.ids" "$gale" tokenize --tokenizer "$model" --threads 1 --input "$text")"
        g_cpu=$(least "$g_cpu" "$t")
        tt_cpu=$(least "$tt_cpu" "$(peers tiktoken "$tekken" "$text" "$tmp/tt.ids")")
        read -r t _ <<< "$(best_of "$tmp/gt.ids" "$gale" tokenize --tokenizer "$tekken" --threads 1 --input "$text")"
        gt_cpu=$(least "$gt_cpu" "$t")
    done
    same=identical
    cmp -s "$tmp/spm.ids" "$tmp/g.ids" || same="DIFFERENT(spm_encode)"
    cmp -s "$tmp/sp.ids" "$tmp/g.ids" || same="$same DIFFERENT(sp 0.2.3)"
    cmp -s "$tmp/tt.ids" "$tmp/gt.ids" || same="$same DIFFERENT(tiktoken)"
    [ "$same" = identical ] || status=1
    printf "%-7s %6.1f | %9s %9s %9s %7sx %7sx | %9s %9s %7sx | %s\n" "$corpus" "$(awk "BEGIN{print $bytes/1e6}")" \
        "$(rate "$bytes" "$spm_cpu")" "$(rate "$bytes" "$sp_cpu")" "$(rate "$bytes" "$g_cpu")" \
        "$(ratio "$sp_cpu" "$g_cpu")" "$(ratio "$spm_cpu" "$g_cpu")" \
        "$(rate "$bytes" "$tt_cpu")" "$(rate "$bytes" "$gt_cpu")" "$(ratio "$tt_cpu" "$gt_cpu")" "$same"
done

read -r load_cpu _ <<< "$(best_of "$tmp/empty.ids" "$gale" tokenize --tokenizer "$tekken" --input /dev/null)"
: > "$tmp/not-a-folder" # as XDG_CACHE_HOME: no cache to read or write, the JSON parsed each time
read -r parse_cpu _ <<< "$(XDG_CACHE_HOME="$tmp/not-a-folder" best_of "$tmp/empty.ids" "$gale" tokenize \
    --tokenizer "$tekken" --input /dev/null)"
read -r sp_load_cpu _ <<< "$(best_of "$tmp/empty.ids" "$gale" tokenize --tokenizer "$model" --input /dev/null)"
read -r sp_index_cpu _ <<< "$(XDG_CACHE_HOME="$tmp/not-a-folder" best_of "$tmp/empty.ids" "$gale" tokenize \
    --tokenizer "$model" --input /dev/null)"
read -r start_cpu _ <<< "$(best_of "$tmp/empty.ids" "$gale" --help)"
echo
echo "gale's fixed cost with the Tekken file (no text): $load_cpu CPU s through its caches," \
     "$parse_cpu CPU s parsing its 19 MB of JSON and indexing it; with $(basename "$model"): $sp_load_cpu CPU s" \
     "through its index cache, $sp_index_cpu CPU s indexing it; the process alone (gale --help): $start_cpu CPU s"

if [ -f "$texts/mixed.txt" ]; then
    text=$texts/mixed.txt
    bytes=$(wc -c < "$text")
    read -r c1 w1 <<< "$(best_of "$tmp/t1.ids" "$gale" tokenize --tokenizer "$model" --threads 1 --input "$text")"
    read -r c2 w2 <<< "$(best_of "$tmp/t2.ids" "$gale" tokenize --tokenizer "$model" --threads 2 --input "$text")"
    cmp -s "$tmp/t1.ids" "$tmp/t2.ids" || { echo "threads: DIFFERENT ids"; status=1; }
    echo
    echo "threads (mixed, $(basename "$model")): 1 thread $(rate "$bytes" "$w1") MB/s wall, 2 threads" \
         "$(rate "$bytes" "$w2") MB/s wall ($(ratio "$w1" "$w2")x, $(ratio "$c2" "$c1")x the CPU), ids identical;" \
         "the 2 cores are shared with other jobs"
fi

# one 100 MB line: the English fortunes with newlines as spaces, repeated
{ raw_corpus en 2>/dev/null || true; } | tr '\n' ' ' > "$tmp/unit.txt"
: > "$tmp/line.txt"
while [ "$(stat -c %s "$tmp/line.txt")" -lt 100000000 ]; do cat "$tmp/unit.txt" >> "$tmp/line.txt"; done
echo >> "$tmp/line.txt"
/usr/bin/time -o "$tmp/time" -f "%e %M" "$gale" tokenize --tokenizer "$model" --input "$tmp/line.txt" > "$tmp/line.ids"
read -r line_wall line_rss < "$tmp/time"
echo "one line of $(stat -c %s "$tmp/line.txt") bytes: $line_wall s, $(wc -w < "$tmp/line.ids") ids, peak RSS $((line_rss / 1024)) MiB"
exit $status
