#!/usr/bin/env python3
"""Differential check of gale's Mistral chat templates against mistral-common itself.

Random conversations (seeded): system prompts anywhere the role order allows, runs of user
and assistant messages that merge, empty and space-padded texts, Unicode, tools with
nested float parameters, parallel tool calls whose arguments are JSON text in any layout,
objects or not JSON at all, tool results that are or are not JSON. Each is encoded by
mistral-common's MistralTokenizer (test mode for prompts, finetuning mode for training
data) and by `gale tokenize --chat vN [--prompt]`; the ids must be equal, and a
conversation mistral-common refuses must be refused by gale too.

Templates (--templates): v1 and v3 with the SentencePiece models of ../shared, v3-tekken
(tekken_240718.json, Mistral NeMo's) and v7-tekken (tekken_240911.json as a v7 file, Mistral
Small 3's format), the Tekken files from mistral-common's data folder. Needs mistral-common
(launch/setup.sh installs it; exits 77 without it):
    /usr/bin/python3 tests/bench/check_chat_mistral_common.py --gale build/gale \
        --shared ../shared [--count 300] [--seed 1] [--templates v1,v3,v3-tekken,v7-tekken]
tests/tok/test_chat_tekken_vs_mistral_common.sh runs it on the Tekken templates.
"""
import argparse
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile

try:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
except ImportError:
    print("SKIP: mistral-common is not installed (launch/setup.sh installs it)")
    sys.exit(77)

TEXTS = ["Hello", "What's the weather like in Paris?", "  padded  ", "trailing spaces   ",
         "multi\nline\n\ntext", "ünïcödé 日本語 😀", "tab\there", "", " ", "[INST] not a control",
         '{"json": 1, "b": [1, 2.50]}', "22", "1.50", "null", "true", '"quoted"', "x" * 40,
         "Sure! 5 + 5 = 10.", "\u3000wide space", "a\\b", "</s>"]
FLOATS = [1.5, 0.1, 1e-7, 1e22, 3.0, -0.0, 123456.789, 1e16, 2.5e-5]


def rand_text(rng):
    return "".join(rng.choice(TEXTS) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 3)))


def rand_value(rng, depth=0):
    kind = rng.randrange(7 if depth < 2 else 4)
    if kind == 0:
        return rng.choice(FLOATS)
    if kind == 1:
        return rng.randint(-1000, 10**12)
    if kind == 2:
        return rand_text(rng)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return {rng.choice(["a", "b", "loc", "ünï", "x y"]) + str(i): rand_value(rng, depth + 1)
                for i in range(rng.randint(0, 3))}
    return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def rand_name(rng):
    return rng.choice(["get_weather", "send-email", "f", "lookup_2", "X"])


def rand_id(rng):
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(9))


def rand_arguments(rng):
    args = {k: rand_value(rng) for k in rng.sample(["location", "days", "unit", "q", "n"], rng.randint(0, 3))}
    kind = rng.randrange(5)
    if kind == 0:
        return args
    if kind == 1:
        return "not json {"
    if kind == 2:
        return ""
    return json.dumps(args, indent=rng.choice([None, 2]), separators=rng.choice([None, (",", ":")]),
                      ensure_ascii=rng.random() < 0.5)


def rand_tools(rng):
    tools = []
    for _ in range(rng.randint(0, 3)):
        fn = {"name": rand_name(rng)}
        if rng.random() < 0.7:
            fn["description"] = rand_text(rng)
        # always given: Tool.from_openai would default it to {} (as gale does), but the
        # request model that encode_chat_completion takes requires it
        if True:
            fn["parameters"] = {"type": "object", "properties": {
                "location": {"type": "string", "description": rand_text(rng)},
                "days": {"type": "integer", "minimum": rng.choice(FLOATS)}},
                "required": ["location"]}
        tools.append({"type": "function", "function": fn})
    return tools


def rand_conversation(rng, tools_allowed, training):
    messages = []
    while rng.random() < 0.3:
        messages.append({"role": "system", "content": rand_text(rng)})
    for turn in range(rng.randint(1, 4)):
        for _ in range(rng.choice([1, 1, 1, 2])):
            messages.append({"role": "user", "content": rand_text(rng)})
            if rng.random() < 0.1:
                messages.append({"role": "system", "content": rand_text(rng)})
        while True:
            if tools_allowed and rng.random() < 0.4:
                calls = [{"id": rand_id(rng), "type": "function",
                          "function": {"name": rand_name(rng), "arguments": rand_arguments(rng)}}
                         for _ in range(rng.randint(1, 3))]
                messages.append({"role": "assistant", "content": None, "tool_calls": calls})
                for call in calls:
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": rand_text(rng)})
                continue
            messages.append({"role": "assistant", "content": rand_text(rng).strip() or "ok"})
            if rng.random() < 0.15:
                messages.append({"role": "assistant", "content": rand_text(rng)})
            break
    if not training:
        if messages[-1]["role"] == "assistant" or rng.random() < 0.5:
            messages.append({"role": "user", "content": rand_text(rng)})
    conversation = {"messages": messages}
    if tools_allowed and rng.random() < 0.7:
        conversation["tools"] = rand_tools(rng)
    return conversation


def mutate(rng, conversation):
    """One change that may make the conversation invalid: both sides must then agree on it."""
    messages = conversation["messages"]
    i = rng.randrange(len(messages))
    m = messages[i]
    kind = rng.randrange(9)
    if kind == 0:
        del messages[i]
    elif kind == 1:
        m["role"] = rng.choice(["system", "user", "assistant", "tool", "bot"])
    elif kind == 2:
        m["content"] = rng.choice([None, 3, ["list"], ""])
    elif kind == 3 and m.get("tool_calls"):
        # not "call_1" or "abc": gale maps ids that are not v3 ids (data/chat_formats.h) where
        # mistral-common refuses them; test_chat_formats checks the mapping
        m["tool_calls"][0]["id"] = "null"
    elif kind == 4 and m.get("tool_calls"):
        del m["tool_calls"][0]["function"]["name"]
    elif kind == 5 and m["role"] == "tool":
        m["tool_call_id"] = rng.choice([None, "123456789"])
    elif kind == 6 and m["role"] == "assistant":
        m["content"] = "both"
        m["tool_calls"] = [{"id": rand_id(rng), "function": {"name": "f", "arguments": "{}"}}]
    elif kind == 7:
        messages.insert(i, {"role": "tool", "tool_call_id": rand_id(rng), "content": "extra"})
    elif kind == 8 and conversation.get("tools"):
        conversation["tools"][0]["function"]["name"] = "has space"


def mistral_common_ids(tokenizer, conversation):
    request = ChatCompletionRequest(messages=conversation["messages"], tools=conversation.get("tools") or None)
    return tokenizer.encode_chat_completion(request).tokens


def run_gale(gale, model, template, training, lines):
    cmd = [gale, "tokenize", "--tokenizer", model, "--chat", template] + ([] if training else ["--prompt"])
    return subprocess.run(cmd, input="".join(lines), capture_output=True, text=True)


def tokenizer_files(template, shared, tmp):
    """The tokenizer gale reads and the copy mistral-common reads (it tells the version from the
    name of a .model file, and from config.version of a Tekken file), for a --templates entry."""
    if template in ("v1", "v3"):
        model = os.path.join(shared, "tokenizers", f"mistral-{template}.model")
        named = os.path.join(tmp, f"tokenizer.model.{template}")
        shutil.copy(model, named)
        return model, named
    import mistral_common
    data = os.path.join(os.path.dirname(mistral_common.__file__), "data")
    if template == "v3-tekken":
        tekken = os.path.join(data, "tekken_240718.json")
        return tekken, tekken
    # v7-tekken: the same vocabulary with the v7 instruct format (Mistral Small 3's)
    d = json.load(open(os.path.join(data, "tekken_240911.json")))
    d["config"]["version"] = "v7"
    tekken = os.path.join(tmp, "tekken_v7.json")
    json.dump(d, open(tekken, "w"))
    return tekken, tekken


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gale", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--templates", default="v1,v3,v3-tekken,v7-tekken")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = tempfile.mkdtemp()
    failures = 0
    try:
        for name in a.templates.split(","):
            template = name.split("-")[0]
            model, named = tokenizer_files(name, a.shared, tmp)
            for training in [False, True]:
                mode = ValidationMode.finetuning if training else ValidationMode.test
                tokenizer = MistralTokenizer.from_file(named, mode=mode)
                accepted, expected, refused = [], [], []
                for _ in range(a.count):
                    conversation = rand_conversation(rng, template != "v1", training)
                    if rng.random() < 0.3:
                        mutate(rng, conversation)
                    line = json.dumps(conversation, ensure_ascii=False) + "\n"
                    try:
                        expected.append(mistral_common_ids(tokenizer, conversation))
                        accepted.append(line)
                    except Exception as e:
                        refused.append((line, str(e).splitlines()[0]))
                out = run_gale(a.gale, model, template, training, accepted)
                while out.returncode != 0:
                    # "gale tokenize: <stdin>:N: why": drop line N, a refusal where mistral-common accepts
                    n = int(out.stderr.split("<stdin>:")[1].split(":")[0]) - 1
                    failures += 1
                    print(f"FAIL {name} training={training}: gale refuses ({out.stderr.strip()}), "
                          f"mistral-common accepts: {accepted[n].strip()}")
                    del accepted[n], expected[n]
                    out = run_gale(a.gale, model, template, training, accepted)
                got = out.stdout.splitlines()
                for n, (line, want) in enumerate(zip(accepted, expected)):
                    ids = [int(x) for x in got[n].split()] if n < len(got) else None
                    if ids != want:
                        failures += 1
                        print(f"FAIL {name} training={training}: {line.strip()}\n  gale  {ids}\n  mc    {want}")
                for line, why in refused:
                    if run_gale(a.gale, model, template, training, [line]).returncode == 0:
                        failures += 1
                        print(f"FAIL {name} training={training}: mistral-common refuses ({why}), "
                              f"gale accepts: {line.strip()}")
                print(f"{name} {'training' if training else 'prompt'}: {len(accepted)} equal-checked, "
                      f"{len(refused)} refused by both checked")
    finally:
        shutil.rmtree(tmp)
    print(f"{failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
