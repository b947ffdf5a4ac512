#!/usr/bin/env bash
# The main job on its built-in defaults: build gale and tokenize Debian's English fortunes
# with the Mistral v1 tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
cat /usr/share/games/fortunes/{fortunes,literature,science} > out/fortunes.txt
build/gale tokenize --tokenizer ../shared/tokenizers/mistral-v1.model --input out/fortunes.txt \
  --threads "$(nproc)" > out/fortunes.ids
echo "quickstart: $(wc -l < out/fortunes.ids) lines tokenized into out/fortunes.ids"
