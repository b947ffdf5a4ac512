#!/usr/bin/env bash
# Installs what the benchmarks in tests/bench need beyond launch/setup.sh: Debian's PyTorch
# (for /usr/bin/python3; large, so kept out of the project's own set-up), transformers, and perf
# for profiling. CI runs it too, so that the tests against these peers run rather than skip.
# Idempotent. Run as root (or with sudo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# python3-protobuf and python3-jinja2: transformers' AutoTokenizer on a SentencePiece model and
# its apply_chat_template (tests/train/test_hf_tokenizer.sh); iso-codes: mistral-common's pycountry.
bash "$root/launch/setup.sh" python3-torch python3-psutil linux-perf python3-protobuf python3-jinja2 python3-venv iso-codes
# mistral-common's runtime (setup.sh installs the package alone, for its tokenizer files): the
# reference of the Tekken tokenizer and chat template tests; tiktoken for the tokenizer benchmark.
if ! /usr/bin/python3 -c "import mistral_common.tokens.tokenizers.tekken, tiktoken" 2>/dev/null; then
  /usr/bin/python3 -m pip install --quiet --break-system-packages tiktoken==0.14.0 pydantic==2.14.4 \
    pydantic-extra-types==2.11.1 pycountry==26.2.16 jsonschema==4.26.0 pillow==13.0.0
fi
/usr/bin/python3 -c "import torch" || { echo "setup_bench: /usr/bin/python3 cannot import torch" >&2; exit 1; }
# transformers (PyPI), the version that runs on Debian's torch 1.13: the peer that loads gale's
# checkpoints in tests/train/test_hf_load.sh and generates beside gale sample.
if ! /usr/bin/python3 -c "import transformers" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages "transformers==4.40.2"
fi
# tensorboard (PyPI), whose reader checks gale's event files (tests/train/test_tensorboard.sh):
# in its own virtual environment, .bench/tb, because it would replace Debian's protobuf.
if ! "$root/.bench/tb/bin/python" -c "import tensorboard" 2>/dev/null; then
  /usr/bin/python3 -m venv "$root/.bench/tb"
  "$root/.bench/tb/bin/python" -m pip install --quiet tensorboard==2.21.0
fi
# peft (PyPI), the peer of tests/lora: 0.10 runs on torch 1.13 and transformers 4.40. --no-deps,
# so that its requirements do not replace Debian's torch; accelerate (imported by peft) likewise.
if ! /usr/bin/python3 -c "import peft" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages --no-deps "peft==0.10.0" "accelerate==0.28.0"
fi
echo "setup_bench: all packages present"
