#!/usr/bin/env bash
# gale tokenize against sentencepiece 0.1.97 (Debian's spm_encode), id for id, with
# mistral-v1.model, mistral-v3.model and variants of v1 (remove_extra_whitespaces on, UNUSED
# pieces, no byte fallback, user-defined pieces with and without spaces, scores with many ties),
# over real multilingual text and generated stress and span text (see gen_tokenizer_corpus.py),
# also with the encoders' word cache made tiny; and the models' indexes kept on disk
# (data/file_cache.h): the first load of a model writes its cache file, later ones read it, a
# damaged one is made again and rewritten, an unwritable cache folder is only slower. Zero
# mismatches is the only pass.
set -euo pipefail
source "${GALE_SOURCE:?}/tests/tok/setup_corpus.sh" spm_encode
v1="$GALE_SHARED/tokenizers/mistral-v1.model"
v3="$GALE_SHARED/tokenizers/mistral-v3.model"
fail=0

# compare LABEL MODEL CORPUS SPM_FORMAT GALE_ARGS...
compare() {
    local label=$1 model=$2 corpus=$3 spm_format=$4
    shift 4
    spm_encode --model="$model" --output_format="$spm_format" < "$corpus" > "$tmp/expected"
    "$GALE_BIN" tokenize --tokenizer "$model" --input "$corpus" "$@" > "$tmp/actual"
    /usr/bin/python3 "$here/compare_lines.py" "$label" "$corpus" "$tmp/expected" "$tmp/actual" || fail=1
}

compare "v1 real ids" "$v1" "$tmp/real.txt" id
compare "v3 real ids, 2 threads" "$v3" "$tmp/real.txt" id --threads 2
compare "v1 stress ids, 2 threads" "$v1" "$tmp/stress.txt" id --threads 2
compare "v3 stress ids" "$v3" "$tmp/stress.txt" id
compare "v3 stress pieces" "$v3" "$tmp/stress.txt" piece --format pieces
compare "v1+remove_extra_whitespaces stress ids" "$tmp/remove-extra.model" "$tmp/stress.txt" id
# the rarer paths: UNUSED pieces, <unk> without byte fallback, user-defined pieces with spaces
compare "v1+UNUSED pieces stress ids" "$tmp/unused.model" "$tmp/stress.txt" id
compare "v1 without byte fallback stress ids" "$tmp/no-byte-fallback.model" "$tmp/stress.txt" id
compare "v1+user-defined pieces stress ids" "$tmp/user-defined.model" "$tmp/stress.txt" id
# merges of equal scores: leftmost first, -0.0 equal to 0.0
compare "v1+tied scores real ids" "$tmp/ties.model" "$tmp/real.txt" id
compare "v1+tied scores stress ids" "$tmp/ties.model" "$tmp/stress.txt" id
compare "v1+tied scores+UNUSED pieces stress ids" "$tmp/ties-unused.model" "$tmp/stress.txt" id
caches=$( (find "$XDG_CACHE_HOME/gale" -name "tok-index-*.bin" 2>/dev/null || true) | wc -l)
[ "$caches" -eq 8 ] || { echo "FAIL: $caches index cache files for 8 models"; fail=1; }

# the cache keeps the model's settings and pieces too (the file is not parsed when it is valid):
# ids, pieces and decoded text from it
cached() {
    compare "v3 stress ids ($1)" "$v3" "$tmp/stress.txt" id
    compare "v3 stress pieces ($1)" "$v3" "$tmp/stress.txt" piece --format pieces
    spm_encode --model="$v1" --output_format=id < "$tmp/real.txt" > "$tmp/real.ids"
    spm_decode --model="$v1" --input_format=id < "$tmp/real.ids" > "$tmp/expected"
    "$GALE_BIN" tokenize --tokenizer "$v1" --decode --input "$tmp/real.ids" > "$tmp/actual"
    cmp -s "$tmp/expected" "$tmp/actual" || { echo "FAIL: v1 decode ($1) differs from spm_decode"; fail=1; }
}
cached "index cache read"

# index cache files damaged in the middle, then cut short, then of another build (the version
# in the header), then another model's file under this one's name: made again, same ids,
# pieces and text, rewritten
for damage in middle short version foreign; do
    files=("$XDG_CACHE_HOME"/gale/tok-index-*.bin)
    for c in "${files[@]}"; do
        size=$(stat -c %s "$c")
        case $damage in
        middle) printf 'XXXX' | dd of="$c" bs=1 seek=$((size / 2)) conv=notrunc status=none ;;
        short) truncate -s $((size / 3)) "$c" ;;
        version) printf 'XXXX' | dd of="$c" bs=1 seek=24 conv=notrunc status=none ;;
        foreign) [ "$c" = "${files[0]}" ] || cp "${files[0]}" "$c" ;;
        esac
    done
    cached "index cache damaged ($damage)"
done
XDG_CACHE_HOME="$tmp/fresh" "$GALE_BIN" tokenize --tokenizer "$v3" --input /dev/null
fresh=$(ls "$tmp"/fresh/gale/tok-index-*.bin)
cmp "$fresh" "$XDG_CACHE_HOME/gale/$(basename "$fresh")" || { echo "FAIL: the damaged index cache was not rewritten"; fail=1; }
touch "$tmp/not-a-folder" # as the cache folder's parent: nothing kept, every load indexes
XDG_CACHE_HOME="$tmp/not-a-folder" compare "v3 stress ids, no cache folder" "$v3" "$tmp/stress.txt" id

# one line longer than gale's batch (4 MiB, 256 KiB with one thread) goes through the streaming
# encoder; stdin input, and a last line without a newline; the same from a file with two threads
{ for i in $(seq 12); do tr '\n' ' ' < "$tmp/real.txt"; done; echo; printf 'no newline at the end'; } > "$tmp/long.txt"
spm_encode --model="$v3" --output_format=id < "$tmp/long.txt" > "$tmp/expected"
"$GALE_BIN" tokenize --tokenizer "$v3" < "$tmp/long.txt" > "$tmp/actual"
/usr/bin/python3 "$here/compare_lines.py" "v3 one line of $(wc -c < "$tmp/long.txt") bytes, stdin" "$tmp/long.txt" "$tmp/expected" "$tmp/actual" || fail=1
"$GALE_BIN" tokenize --tokenizer "$v3" --threads 2 --input "$tmp/long.txt" > "$tmp/actual"
/usr/bin/python3 "$here/compare_lines.py" "v3 one line of $(wc -c < "$tmp/long.txt") bytes, 2 threads" "$tmp/long.txt" "$tmp/expected" "$tmp/actual" || fail=1
# lines longer than one thread's block but shorter than a batch, between short ones: streamed
# with one thread, encoded whole with two
{ head -c 200000 "$tmp/real.txt" | tr '\n' ' '; echo; head -3 "$tmp/real.txt"; head -c 70000 "$tmp/stress.txt" | tr '\n' ' '; echo; } > "$tmp/mid.txt"
compare "v3 lines of 70 and 200 KB" "$v3" "$tmp/mid.txt" id
compare "v3 lines of 70 and 200 KB, 2 threads" "$v3" "$tmp/mid.txt" id --threads 2
# a pipe (read as it comes) and a file (its size known) give the same output
cat "$tmp/real.txt" | "$GALE_BIN" tokenize --tokenizer "$v3" > "$tmp/from-pipe"
"$GALE_BIN" tokenize --tokenizer "$v3" --input "$tmp/real.txt" > "$tmp/from-file"
cmp "$tmp/from-pipe" "$tmp/from-file" || { echo "FAIL: a pipe and a file give different ids"; fail=1; }

# text of recurring spans (runs of spaces and the bytes up to the next space) at the starts of
# lines and inside them; and with the encoders' word cache made two entries
# (GALE_TOKENIZER_CACHE_BITS), where every word evicts the one before
for bits in 16 1; do
    export GALE_TOKENIZER_CACHE_BITS=$bits
    compare "v1 span ids, cache bits $bits" "$v1" "$tmp/spans.txt" id
    compare "v3 span ids, 2 threads, cache bits $bits" "$v3" "$tmp/spans.txt" id --threads 2
    compare "v1 without byte fallback span ids, cache bits $bits" "$tmp/no-byte-fallback.model" "$tmp/spans.txt" id
    compare "v1+user-defined pieces without spaces span ids, cache bits $bits" "$tmp/user-defined-no-space.model" "$tmp/spans.txt" id
done
compare "v3 stress ids, cache bits 1" "$v3" "$tmp/stress.txt" id
compare "v1+user-defined pieces without spaces stress ids, cache bits 1" "$tmp/user-defined-no-space.model" "$tmp/stress.txt" id
unset GALE_TOKENIZER_CACHE_BITS

exit $fail
