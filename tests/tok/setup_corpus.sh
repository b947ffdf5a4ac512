# setup_corpus.sh: sourced by the tests/tok scripts with the sentencepiece tool they compare
# against ($1): checks the ctest environment, skips the test (exit 77) when that tool is not
# installed, and generates the real and stress corpora (gen_tokenizer_corpus.py) into a scratch
# folder removed on exit. Sets here (this folder) and tmp (the scratch folder), and keeps the
# caches gale writes for the tokenizers it loads (data/file_cache.h) in that folder too.
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
if ! command -v "$1" >/dev/null; then
    echo "SKIP: $1 (Debian package sentencepiece) is not installed"
    exit 77
fi
here="$GALE_SOURCE/tests/tok"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export XDG_CACHE_HOME="$tmp/cache"
/usr/bin/python3 "$here/gen_tokenizer_corpus.py" --shared "$GALE_SHARED" --out "$tmp"
