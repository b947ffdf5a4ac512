#!/usr/bin/env bash
# gale tokenize with Mistral's Tekken files (the ones mistral-common ships) against
# mistral-common's Tekkenizer, id for id, over the real multilingual and generated stress text
# of the SentencePiece tests (gen_tokenizer_corpus.py); one line longer than gale's batch
# (the streaming encoder); decoding of the ids and of random id lines; and the cache of parsed
# vocabularies (data/tekken_cache.h): the first load writes it, later ones read it, a corrupt or
# cut-short cache file is parsed again from the JSON and rewritten, an unwritable cache folder is
# only slower. Zero mismatches is the only pass; skipped (77) when mistral-common is not installed.
set -euo pipefail
here="${GALE_SOURCE:?}/tests/tok"
ref="$here/tekken_reference.py"
files=$(/usr/bin/python3 "$ref" files) || exit $?
[ -n "$files" ] || { echo "SKIP: mistral-common ships no tekken_*.json"; exit 77; }
source "$here/setup_corpus.sh" /usr/bin/python3
fail=0
export XDG_CACHE_HOME="$tmp/cache" # the loads below go through a cache of this test's own

# compare LABEL TEKKEN CORPUS GALE_ARGS...
compare() {
    local label=$1 tekken=$2 corpus=$3
    shift 3
    /usr/bin/python3 "$ref" encode "$tekken" "$corpus" > "$tmp/expected"
    "$GALE_BIN" tokenize --tokenizer "$tekken" --input "$corpus" "$@" > "$tmp/actual"
    /usr/bin/python3 "$here/compare_lines.py" "$label" "$corpus" "$tmp/expected" "$tmp/actual" || fail=1
}

# decode LABEL TEKKEN IDS: gale --decode against Tekkenizer.decode
decode() {
    /usr/bin/python3 "$ref" decode "$2" "$3" > "$tmp/expected"
    "$GALE_BIN" tokenize --tokenizer "$2" --decode --input "$3" > "$tmp/actual"
    /usr/bin/python3 "$here/compare_lines.py" "$1" "$3" "$tmp/expected" "$tmp/actual" || fail=1
}

for tekken in $files; do
    t=$(basename "$tekken" .json)
    compare "$t real ids (cache written)" "$tekken" "$tmp/real.txt"
    compare "$t stress ids, 2 threads (cache read)" "$tekken" "$tmp/stress.txt" --threads 2
done
caches=$(ls "$XDG_CACHE_HOME"/gale/tekken-*.bin | wc -l)
[ "$caches" -eq "$(echo "$files" | wc -w)" ] || { echo "FAIL: $caches cache files for $(echo "$files" | wc -w) Tekken files"; fail=1; }

# a cache file damaged in the middle, then cut short: parsed again, same ids, cache rewritten
tekken=$(echo "$files" | tail -1)
t=$(basename "$tekken" .json)
for damage in middle short; do
    for c in "$XDG_CACHE_HOME"/gale/tekken-*.bin; do
        size=$(stat -c %s "$c")
        if [ $damage = middle ]; then
            printf 'XXXX' | dd of="$c" bs=1 seek=$((size / 2)) conv=notrunc status=none
        else
            truncate -s $((size / 3)) "$c"
        fi
    done
    compare "$t real ids, cache damaged ($damage)" "$tekken" "$tmp/real.txt"
done
# the index cache damaged while the vocabulary's is valid (with both valid, the vocabulary's
# pieces are not read): the pieces read from the vocabulary's cache and indexed again, same ids
for c in "$XDG_CACHE_HOME"/gale/tok-index-*.bin; do
    printf 'XXXX' | dd of="$c" bs=1 seek=$(($(stat -c %s "$c") / 2)) conv=notrunc status=none
done
compare "$t real ids, index cache damaged" "$tekken" "$tmp/real.txt"
XDG_CACHE_HOME="$tmp/fresh" "$GALE_BIN" tokenize --tokenizer "$tekken" --input /dev/null
fresh=$(ls "$tmp"/fresh/gale/tekken-*.bin)
cmp "$fresh" "$XDG_CACHE_HOME/gale/$(basename "$fresh")" || { echo "FAIL: the damaged cache was not rewritten"; fail=1; }
# a cache folder that cannot be made (its parent is a file)
touch "$tmp/not-a-folder"
XDG_CACHE_HOME="$tmp/not-a-folder" compare "$t real ids, no cache folder" "$tekken" "$tmp/real.txt"
tekken=$(echo "$files" | tail -1)
t=$(basename "$tekken" .json)
"$GALE_BIN" tokenize --tokenizer "$tekken" --input "$tmp/real.txt" > "$tmp/real.ids"
decode "$t real round trip" "$tekken" "$tmp/real.ids"
/usr/bin/python3 "$ref" ids "$tekken" "$tmp/random.ids" 2000
decode "$t random ids" "$tekken" "$tmp/random.ids"

# one line longer than gale's 4 MiB batch goes through the streaming encoder; stdin, and a
# last line without a newline
{ for i in $(seq 12); do tr '\n' ' ' < "$tmp/real.txt"; done; echo; printf 'no newline at the end'; } > "$tmp/long.txt"
/usr/bin/python3 "$ref" encode "$tekken" "$tmp/long.txt" > "$tmp/expected"
"$GALE_BIN" tokenize --tokenizer "$tekken" < "$tmp/long.txt" > "$tmp/actual"
/usr/bin/python3 "$here/compare_lines.py" "$t one line of $(wc -c < "$tmp/long.txt") bytes, stdin" "$tmp/long.txt" "$tmp/expected" "$tmp/actual" || fail=1
exit $fail
