#!/usr/bin/env bash
# gale tokenize --decode against spm_decode --input_format=id: the ids sentencepiece gives the
# real and stress corpora (mistral-v1 and v3), and random id lines (byte pieces that spell
# valid and invalid UTF-8, control ids, <unk>, leading-space pieces). Then the errors of bad
# id lines, which must name the line.
set -euo pipefail
source "${GALE_SOURCE:?}/tests/tok/setup_corpus.sh" spm_decode
fail=0

# check LABEL MODEL IDS
check() {
    spm_decode --model="$2" --input_format=id < "$3" > "$tmp/expected"
    "$GALE_BIN" tokenize --tokenizer "$2" --decode --input "$3" > "$tmp/actual"
    if cmp -s "$tmp/expected" "$tmp/actual"; then
        echo "$1: $(wc -l < "$3") id lines, identical text"
    else
        /usr/bin/python3 "$here/compare_lines.py" "$1" "$3" "$tmp/expected" "$tmp/actual" || true
        fail=1
    fi
}

for m in v1 v3; do
    model="$GALE_SHARED/tokenizers/mistral-$m.model"
    for c in real stress; do
        spm_encode --model="$model" --output_format=id < "$tmp/$c.txt" > "$tmp/$c.$m.ids"
        check "$m $c round trip" "$model" "$tmp/$c.$m.ids"
    done
done
check "v3 random ids" "$GALE_SHARED/tokenizers/mistral-v3.model" "$tmp/ids.txt"

# expect_error LABEL INPUT PATTERN: gale must fail and say PATTERN
expect_error() {
    if printf '%b' "$2" | "$GALE_BIN" tokenize --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --decode \
        > /dev/null 2> "$tmp/err"; then
        echo "$1: gale accepted bad input"; fail=1
    elif ! grep -q -- "$3" "$tmp/err"; then
        echo "$1: message lacks '$3': $(cat "$tmp/err")"; fail=1
    else
        echo "$1: $(cat "$tmp/err")"
    fi
}
expect_error "word" '1 2\n3 x7 4\n' '<stdin>:2: .x7. is not a token id'
expect_error "out of range" '1\n\n32000\n' '<stdin>:3: id 32000 is outside the vocabulary (0..31999)'
expect_error "negative" '-5\n' 'id -5 is outside'
exit $fail
