"""tokenizer.json in general: the pre-tokenizer's Split regex read from the file (GPT-2,
Llama-3 and Qwen2 patterns), added tokens matched in text (special ones only when allowed,
longest first), tokenizer_config.json (bos/eos/pad, added_tokens_decoder), decoding with
and without special tokens, saving, and clear refusals. Ids are checked against an
independent byte-level BPE in Python (tok_ref.py, the `regex` module), not fdpo output."""
import json
import os
import random
import shutil
import subprocess
import unicodedata

import pytest

from tok_ref import (CORPUS, GPT2_PAT, LLAMA3_PAT, QWEN2_PAT, RefBPE, build_vocab, train_merges,
                     write_tokenizer)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(ROOT, "build/fdpo-harness"))

LLAMA3_ADDED = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
                ("<|end_header_id|>", True), ("<|eot_id|>", True), ("<|reserved_special_token_0|>", True)]
# Qwen2.5 marks its tool-call tags non-special; "<|x|>" / "<|x|>y" test longest-first matching.
QWEN2_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<tool_call>", False),
               ("</tool_call>", False), ("<|x|>", True), ("<|x|>y", True)]
GPT2_ADDED = [("<|endoftext|>", True)]

SMOLLM2_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<repo_name>", True)]

FAMILIES = {
    "gpt2": (GPT2_PAT, GPT2_ADDED, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    # SmolLM2 (StarCoder's scheme): Digits(individual_digits) then ByteLevel with GPT-2's regex
    "smollm2": (GPT2_PAT, SMOLLM2_ADDED, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                          "pad_token": "<|im_end|>"}),
    "llama3": (LLAMA3_PAT, LLAMA3_ADDED, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                          "pad_token": None}),
    "qwen2": (QWEN2_PAT, QWEN2_ADDED, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}

TEXTS = [
    "Hello world! It's 2024, DON'T panic; they'RE here and we'Ve won.",
    "numbers 1234567 and 3.14159, 42 times",
    "Ünïcödé café naïve — 日本語のテキスト 🤖🚀 Ελληνικά",
    "  Indented\tline\r\nend\n\n\n   trailing spaces   ",
    "code:\n    return x+y  # comment\n\n\tdone!!!\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "a<|x|>yb<|x|>c<|x|>",
    "<tool_call>{\"name\": \"f\"}</tool_call> after",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
    "text <|endoftext|> more <|reserved_special_token_0|><|eot_id|>",
    "",
    " leading space and 'quotes' and 's",
]


def random_texts(seed, n):
    rng = random.Random(seed)
    alphabet = list("abcXYZ019 '\n\t.,!é日🤖") + ["<|im_end|>", "<|x|>", "<|x|>y", "<tool_call>", "<|eot_id|>",
                                                "<|endoftext|>", "  ", "\r\n", "'s", "123456"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def run(*args, input=None):
    return subprocess.run([FDPO, *args], input=input, capture_output=True, timeout=120)


def ok(r):
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


def make(d, family, *, with_config=True, **edit):
    pattern, added, cfg = FAMILIES[family]
    digits = family == "smollm2"
    merges = train_merges(CORPUS, pattern, 120, digits)
    vocab = build_vocab(merges, added)
    config = None
    if with_config:
        config = dict(cfg)
        config["added_tokens_decoder"] = {str(vocab[c]): {"content": c, "special": s, "lstrip": False, "rstrip": False,
                                                          "normalized": False, "single_word": False}
                                          for c, s in added}
    normalizer = {"type": "NFC"} if family == "qwen2" else None
    kind = "digits" if digits else family
    write_tokenizer(str(d), kind, pattern, vocab, merges, added, config, normalizer, **edit)
    return RefBPE(vocab, merges, pattern, added, digits, nfc=normalizer is not None), vocab, merges


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    base = tmp_path_factory.mktemp("tj")
    out = {}
    for fam in FAMILIES:
        ref, vocab, merges = make(base / fam, fam)
        out[fam] = (str(base / fam), ref, vocab)
    return out


def fdpo_ids(tok_dir, texts, tmp, *extra):
    p = os.path.join(tmp, "texts.jsonl")
    with open(p, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    out = ok(run("tokenize", "--tokenizer", tok_dir, "--jsonl-field", "text", *extra, p))
    return [[int(x) for x in line.split()] for line in out.split("\n")[:-1]]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("allow_special", [False, True])
def test_ids_match_the_reference(toks, family, allow_special, tmp_path):
    tok_dir, ref, _ = toks[family]
    texts = TEXTS + random_texts(hash(family) % 1000 + allow_special, 60)
    got = fdpo_ids(tok_dir, texts, str(tmp_path), *(["--allow-special"] if allow_special else []))
    want = [ref.encode(t, allow_special) for t in texts]
    for t, g, w in zip(texts, got, want):
        assert g == w, f"{family} allow_special={allow_special}: {t!r}"


def test_the_patterns_differ_where_they_should(toks, tmp_path):
    """The three regexes give different ids on digits and case-insensitive contractions, so
    the previous test would catch a pattern that is not read from the file."""
    t = ["1234567 DON'T"]
    ids = {f: fdpo_ids(toks[f][0], t, str(tmp_path))[0] for f in FAMILIES}
    pieces = {f: len(ids[f]) for f in FAMILIES}
    assert ids["gpt2"] != ids["llama3"] and ids["llama3"] != ids["qwen2"], pieces
    assert ids["smollm2"] != ids["gpt2"], pieces


def test_tokenizer_json_is_read_before_vocab_json(toks, tmp_path):
    """Qwen2 directories also hold vocab.json + merges.txt (no added tokens, no regex); the
    tokenizer.json wins, as in Hugging Face's fast tokenizers."""
    tok_dir, ref, vocab = toks["qwen2"]
    d = tmp_path / "q"
    shutil.copytree(tok_dir, d)
    base = {k: v for k, v in vocab.items() if k not in {a for a, _ in QWEN2_ADDED}}
    (d / "vocab.json").write_text(json.dumps(base))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(
        json.load(open(os.path.join(tok_dir, "tokenizer.json")))["model"]["merges"]) + "\n")
    t = ["abc 1234 <|im_start|>x"]
    assert fdpo_ids(str(d), t, str(tmp_path), "--allow-special") == [ref.encode(t[0], True)]


def test_vocab_json_with_added_tokens_decoder(toks, tmp_path):
    """vocab.json + merges.txt + tokenizer_config.json: the config's added_tokens_decoder
    extends the vocabulary and its special tokens are matched (GPT-2's regex)."""
    _, _, vocab = toks["qwen2"]
    tj = json.load(open(os.path.join(toks["qwen2"][0], "tokenizer.json")))
    d = tmp_path / "v"
    d.mkdir()
    base = tj["model"]["vocab"]
    (d / "vocab.json").write_text(json.dumps(base))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tj["model"]["merges"]) + "\n")
    cfg = json.load(open(os.path.join(toks["qwen2"][0], "tokenizer_config.json")))
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    merges = [tuple(m.split(" ")) for m in tj["model"]["merges"]]
    ref = RefBPE(vocab, merges, GPT2_PAT, QWEN2_ADDED)
    texts = TEXTS + random_texts(7, 30)
    got = fdpo_ids(str(d), texts, str(tmp_path), "--allow-special")
    assert got == [ref.encode(t, True) for t in texts]


def pair_dir(toks, d, tokenizer_class):
    """The qwen2 vocabulary as vocab.json + merges.txt + tokenizer_config.json (Qwen2's
    slow-tokenizer files) with the given tokenizer_class (None: the key absent)."""
    tj = json.load(open(os.path.join(toks["qwen2"][0], "tokenizer.json")))
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(tj["model"]["vocab"]))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tj["model"]["merges"]) + "\n")
    cfg = json.load(open(os.path.join(toks["qwen2"][0], "tokenizer_config.json")))
    if tokenizer_class is not None:
        cfg["tokenizer_class"] = tokenizer_class
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return [tuple(m.split(" ")) for m in tj["model"]["merges"]]


@pytest.mark.parametrize("cls", ["Qwen2Tokenizer", "Qwen2TokenizerFast"])
def test_vocab_json_of_qwen2_tokenizer_class(toks, cls, tmp_path):
    """tokenizer_class Qwen2Tokenizer beside vocab.json + merges.txt: transformers splits with
    Qwen2's regex and normalises NFC (its converter writes both into the tokenizer.json it
    builds); fdpo used GPT-2's regex and no NFC. Ids are the reference's with Qwen2's
    pattern and NFC, and differ from GPT-2's on digits, contractions and decomposed text.
    The saved directory keeps the class, so it reloads the same."""
    _, _, vocab = toks["qwen2"]
    d = tmp_path / "v"
    merges = pair_dir(toks, d, cls)
    ref = RefBPE(vocab, merges, QWEN2_PAT, QWEN2_ADDED, nfc=True)
    gpt2 = RefBPE(vocab, merges, GPT2_PAT, QWEN2_ADDED)
    texts = TEXTS + DECOMPOSED + random_texts(11, 30)
    want = [ref.encode(t, True) for t in texts]
    assert fdpo_ids(str(d), texts, str(tmp_path), "--allow-special") == want
    assert sum(w != gpt2.encode(t, True) for t, w in zip(texts, want)) >= 8
    dst = tmp_path / "saved"
    r = subprocess.run([HARNESS, "tok-save", str(d), str(dst)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.load(open(dst / "tokenizer_config.json"))["tokenizer_class"] == cls
    assert fdpo_ids(str(dst), texts, str(tmp_path), "--allow-special") == want


@pytest.mark.parametrize("cls", [None, "GPT2Tokenizer", "GPT2TokenizerFast"])
def test_vocab_json_of_gpt2_tokenizer_class(toks, cls, tmp_path):
    """GPT-2's classes (and no class) keep GPT-2's regex and no normalizer"""
    _, _, vocab = toks["qwen2"]
    merges = pair_dir(toks, tmp_path / "v", cls)
    ref = RefBPE(vocab, merges, GPT2_PAT, QWEN2_ADDED)
    texts = TEXTS + DECOMPOSED
    assert fdpo_ids(str(tmp_path / "v"), texts, str(tmp_path), "--allow-special") == [ref.encode(t, True) for t in texts]


@pytest.mark.parametrize("cls,msg", [
    ("LlamaTokenizer", "tokenizer_config.json: tokenizer_class 'LlamaTokenizer' is not supported beside a vocabulary "
                       "and merges file (GPT2Tokenizer, GPT2TokenizerFast, Qwen2Tokenizer and Qwen2TokenizerFast are; "
                       "other tokenizers need their tokenizer.json)"),
    ("CodeGenTokenizer", "tokenizer_class 'CodeGenTokenizer' is not supported"),
    (5, "tokenizer_config.json: tokenizer_class must be a string"),
])
def test_vocab_json_of_another_tokenizer_class_is_refused(toks, cls, msg, tmp_path):
    pair_dir(toks, tmp_path / "v", cls)
    r = run("tokenize", "--tokenizer", str(tmp_path / "v"), input=b"x")
    assert r.returncode == 1 and msg in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("allow_special", [False, True])
def test_ignore_merges_finds_only_model_vocab_words(toks, allow_special, tmp_path):
    """With ignore_merges, a pre-token that is a whole model.vocab entry is that token (as in
    Hugging Face's BPE model); an added token is not in model.vocab, so its text as one
    pre-token ("<|>" under Llama-3's regex) is byte-pair encoded unless specials are
    matched. fdpo found the added token by its text: a special id without --allow-special.
    A special token that model.vocab itself holds ("Hello" here) is the model's word."""
    tok_dir, _, vocab = toks["llama3"]
    d = tmp_path / "im"
    shutil.copytree(tok_dir, d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["ignore_merges"] = True
    added = list(LLAMA3_ADDED) + [("<|>", True), ("::", True), ("Hello", True)]
    vocab = dict(vocab)
    for c, _ in added[len(LLAMA3_ADDED):]:
        vocab.setdefault(c, len(vocab))
    tj["added_tokens"] += [{"id": vocab[c], "content": c, "special": s, "lstrip": False, "rstrip": False,
                            "normalized": False, "single_word": False} for c, s in added[len(LLAMA3_ADDED):]]
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    model_vocab = tj["model"]["vocab"]
    assert "<|>" not in model_vocab and "::" not in model_vocab and model_vocab["Hello"] == vocab["Hello"]
    merges = [tuple(m.split(" ")) for m in tj["model"]["merges"]]
    ref = RefBPE(vocab, merges, LLAMA3_PAT, added, ignore_merges_vocab=model_vocab)
    texts = ["<|>", "a <|> b", "x<|>y", "::", "a:: b", "Hello", " Hello <|>!", "<|eot_id|>", "hello world",
             "The answer is 42"]
    extra = ["--allow-special"] if allow_special else []
    got = fdpo_ids(str(d), texts, str(tmp_path), *extra)
    assert got == [ref.encode(t, allow_special) for t in texts]
    if not allow_special:
        assert vocab["<|>"] not in got[0] and vocab["::"] not in got[3] and got[5] == [vocab["Hello"]]


def harness_json(*args):
    r = subprocess.run([HARNESS, *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_tokens_and_specials(toks, family):
    tok_dir, _, vocab = toks[family]
    _, added, cfg = FAMILIES[family]
    info = harness_json("tok-info", tok_dir)
    assert info["vocab_size"] == len(vocab)
    assert info["eos"] == vocab[cfg["eos_token"]]
    assert info["bos"] == (vocab[cfg["bos_token"]] if cfg.get("bos_token") else -1)
    assert info["pad"] == (vocab[cfg["pad_token"]] if cfg.get("pad_token") else -1)
    assert sorted(info["special"]) == sorted(vocab[c] for c, s in added if s)


def test_without_config_eos_is_endoftext(tmp_path):
    make(tmp_path / "g", "gpt2", with_config=False)
    info = harness_json("tok-info", str(tmp_path / "g"))
    assert info["eos"] == info["special"][0] and info["bos"] == -1 and info["chat"] == "plain"


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_decode_keeps_or_skips_specials(toks, family, tmp_path):
    tok_dir, ref, vocab = toks[family]
    _, added, _ = FAMILIES[family]
    text = TEXTS[5] if family == "qwen2" else TEXTS[8]
    ids = ref.encode(text, True)
    p = tmp_path / "ids.txt"
    p.write_text(" ".join(map(str, ids)) + "\n")
    assert ok(run("tokenize", "--tokenizer", tok_dir, "--decode", str(p))) == text
    stripped = text
    for c, s in sorted(added, key=lambda a: -len(a[0])):
        if s:
            stripped = stripped.replace(c, "")
    assert ok(run("tokenize", "--tokenizer", tok_dir, "--decode", "--skip-special-tokens", str(p))) == stripped
    assert stripped != text


def test_skip_special_tokens_needs_decode(toks):
    r = run("tokenize", "--tokenizer", toks["qwen2"][0], "--skip-special-tokens", input=b"x")
    assert r.returncode != 0 and b"--skip-special-tokens" in r.stderr
    # and encoding's flags with --decode (they were ignored)
    for flag in ("--allow-special", "--stats"):
        r = run("tokenize", "--tokenizer", toks["qwen2"][0], "--decode", flag, input=b"1 2")
        assert r.returncode == 1 and f"fdpo tokenize: {flag}: encoding only (not with --decode)".encode() in r.stderr, r.stderr


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_save_keeps_the_files(toks, family, tmp_path):
    tok_dir, ref, _ = toks[family]
    dst = tmp_path / "saved"
    r = subprocess.run([HARNESS, "tok-save", tok_dir, str(dst)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    texts = TEXTS + random_texts(3, 20)
    assert fdpo_ids(str(dst), texts, str(tmp_path), "--allow-special") == [ref.encode(t, True) for t in texts]
    assert harness_json("tok-info", str(dst)) == harness_json("tok-info", tok_dir)


# ---- bad input: the field at fault is named ----

SP = "SentencePiece"
BAD = [
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer.type 'Whitespace' is not supported"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "Punctuation"}]},
     "pre_tokenizer.pretokenizers[0].type 'Punctuation' is not supported"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": False}]},
     "pre_tokenizer.pretokenizers[1]: Digits is supported only first in the sequence"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "use_regex": False}]}, "behavior 'Removed' is not supported"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": False}]}, "pre_tokenizer regex: missing closing parenthesis"),
    # no regex anywhere: Hugging Face would byte-pair encode each whole stretch (between
    # digits after Digits); fdpo ran GPT-2's regex inside a Sequence
    ("pre_tokenizer", {"type": "ByteLevel", "use_regex": False},
     "pre_tokenizer ByteLevel with use_regex = false and no Split is not supported"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel", "use_regex": False}]},
     "pre_tokenizer.pretokenizers[0] ByteLevel with use_regex = false and no Split is not supported"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": False}]},
     "pre_tokenizer.pretokenizers[1] ByteLevel with use_regex = false and no Split is not supported"),
    ("pre_tokenizer", {"type": "Metaspace", "replacement": "\u2581"}, SP),
    ("pre_tokenizer", None, "pre_tokenizer is null"),
    ("normalizer", {"type": "Lowercase"}, "normalizer.type 'Lowercase' is not supported"),
    ("decoder", {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}, SP),
    ("added_tokens", [{"id": "7", "content": "<|a|>", "special": True}], "added_tokens[0]: 'id' missing or not a number"),
    ("added_tokens", [{"id": 9999, "content": "<|a|>", "special": True, "rstrip": True}],
     "added_tokens[0]: 'rstrip' = true is not supported"),
    ("added_tokens", [{"id": 5, "content": "!", "special": True}], "token '!' has id 5, but the vocabulary gives it id 0"),
    ("added_tokens", {"id": 5}, "added_tokens is not an array"),
]


@pytest.mark.parametrize("field,value,msg", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_tokenizer_json(tmp_path, field, value, msg):
    d = tmp_path / "bad"
    make(d, "gpt2", with_config=False)
    tj = json.load(open(d / "tokenizer.json"))
    tj[field] = value
    (d / "tokenizer.json").write_text(json.dumps(tj))
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and msg in err and "tokenizer.json" in err, err


@pytest.mark.parametrize("case", ["model-vocab", "added-vs-vocab", "added-vs-added", "vocab-json", "decoder-vs-vocab-json"])
def test_a_repeated_id_is_named(tmp_path, case):
    """Two tokens with one id: "id N used by both 'a' and 'b'", naming the added token's
    entry when it is the repeat. The range check ran first and said "ids must be 0..V-1 for
    V tokens, found id V-1" (or named model.vocab for an added token)."""
    d = tmp_path / "t"
    make(d, "gpt2", with_config=False)
    tj = json.load(open(d / "tokenizer.json"))
    vocab = tj["model"]["vocab"]
    n = len(vocab)  # <|endoftext|> is added_tokens[0], id n
    last = max(vocab, key=vocab.get)
    assert tj["added_tokens"][0]["id"] == n and vocab["!"] == 0
    if case == "model-vocab":
        vocab["zz"] = vocab[last]
        msg = f"tokenizer.json: model.vocab: id {n - 1} used by both '{last}' and 'zz'"
    elif case == "added-vs-vocab":
        tj["added_tokens"].append({"id": 0, "content": "<|a|>", "special": True})
        msg = "tokenizer.json: added_tokens[1]: id 0 used by both '!' and '<|a|>'"
    elif case == "added-vs-added":
        tj["added_tokens"].append({"id": n, "content": "<|eot|>", "special": True})
        msg = f"tokenizer.json: added_tokens[1]: id {n} used by both '<|endoftext|>' and '<|eot|>'"
    if case.startswith("vocab-json") or case.startswith("decoder"):
        os.remove(d / "tokenizer.json")
        v = dict(vocab, **{"<|endoftext|>": n})
        if case == "vocab-json":
            v["zz"] = vocab[last]
            msg = f"vocab.json: id {n - 1} used by both '{last}' and 'zz'"
        else:
            (d / "tokenizer_config.json").write_text(json.dumps(
                {"added_tokens_decoder": {str(n): {"content": "<|im_end|>", "special": True}}}))
            msg = (f"tokenizer_config.json: added_tokens_decoder[\"{n}\"]: id {n} used by both '<|endoftext|>' "
                   "and '<|im_end|>'")
        (d / "vocab.json").write_text(json.dumps(v, ensure_ascii=False))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tj["model"]["merges"]) + "\n", encoding="utf-8")
    else:
        (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and f"{d}/{msg}" in err, err


@pytest.mark.parametrize("edit,msg", [
    ({"type": "Unigram", "vocab": []}, "model.type is Unigram; only \"BPE\""),
    ({"byte_fallback": True}, SP),
])
def test_bad_model(tmp_path, edit, msg):
    d = tmp_path / "bad"
    make(d, "gpt2")
    tj = json.load(open(d / "tokenizer.json"))
    tj["model"].update(edit)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    assert r.returncode == 1 and msg in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("cfg,msg", [
    ('{"eos_token": "<|nope|>"}', "tokenizer_config.json: eos_token '<|nope|>' is not in the vocabulary"),
    ('{"bos_token": 3}', "tokenizer_config.json: bos_token must be a string"),
    ('{"eos_token": ', "tokenizer_config.json:1: malformed JSON"),
    ('{"added_tokens_decoder": {"x1": {"content": "<|q|>"}}}', "added_tokens_decoder[\"x1\"]: the key is not a token id"),
    ('{"chat_template": 5}', "chat_template must be a string"),
    # a list entry transformers cannot make {name: template} of (it fails to load; fdpo skipped it)
    ('{"chat_template": [{"name": "default"}]}', "tokenizer_config.json: chat_template[0].template is missing or not a string"),
    ('{"chat_template": [{"template": "x"}]}', "tokenizer_config.json: chat_template[0].name is missing or not a string"),
    ('{"chat_template": [{"name": "default", "template": "x"}, "y"]}', "tokenizer_config.json: chat_template[1] is not an object"),
])
def test_bad_tokenizer_config(tmp_path, cfg, msg):
    d = tmp_path / "bad"
    make(d, "gpt2", with_config=False)
    (d / "tokenizer_config.json").write_text(cfg)
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    assert r.returncode == 1 and msg in r.stderr.decode(), r.stderr


def test_split_on_a_literal_string_leaves_gaps_as_pieces(tmp_path):
    """Split {"String": "+."} (regex metacharacters taken literally): the matches and the text
    between them are the pieces (Isolated), each byte-pair encoded."""
    import regex
    from tok_ref import pieces
    lit = "+."
    merges = train_merges(CORPUS, regex.escape(lit), 60)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "lit"
    write_tokenizer(str(d), "split", "x", vocab, merges, GPT2_ADDED, None, None)
    tj = json.load(open(d / "tokenizer.json"))
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"String": lit}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    ref = RefBPE(vocab, merges, regex.escape(lit), GPT2_ADDED)
    texts = ["a+.b", "hello world+.+.again", "x+y.z", "no match at all", "+.", "ends with+."]
    assert pieces(regex.escape(lit), "a+.b") == ["a", "+.", "b"]
    assert fdpo_ids(str(d), texts, str(tmp_path)) == [ref.encode(t) for t in texts]


# Decomposed (NFD-style) text: NFC composes e + U+0301 -> U+00E9, Hangul jamo -> syllables,
# reorders combining marks canonically, maps the singletons U+212B/U+2126, keeps
# compatibility characters (U+FB01, U+00BD: NFKC would change them), and composes '>' +
# U+0338 -> U+226F, except across a special token matched in between.
DECOMPOSED = ["cafe\u0301", "nai\u0308ve Cafe\u0301!", "A\u030angstro\u0308m", "\u1100\u1161\u11a8 \ud55c",
              "a\u0302\u0323 vs a\u0323\u0302", "\u212b ohm \u2126", "x\ufb01 \u00bd", "e\u0301<|im_end|>\u0301x",
              "1 <|im_end|>\u0338 2", "plain ascii", ""]


@pytest.mark.parametrize("allow_special", [False, True])
def test_nfc_normalizer_is_applied(toks, allow_special, tmp_path):
    """Qwen2's tokenizer.json asks for NFC: fdpo normalises each stretch of text between added
    tokens (ICU) before the regex, as Hugging Face does. Ids equal the reference's on
    unicodedata.normalize('NFC', stretch) and the ids of the composed text, and differ from
    the ids of the raw decomposed bytes; a tokenizer without the normalizer keeps them."""
    tok_dir, ref, _ = toks["qwen2"]
    extra = ["--allow-special"] if allow_special else []
    got = fdpo_ids(tok_dir, DECOMPOSED, str(tmp_path), *extra)
    assert got == [ref.encode(t, allow_special) for t in DECOMPOSED]
    assert ref.nfc
    composed = [unicodedata.normalize("NFC", t) for t in DECOMPOSED[:7]]
    assert fdpo_ids(tok_dir, composed, str(tmp_path), *extra) == got[:7]
    raw = RefBPE(ref.vocab, list(ref.rank), ref.pattern, ref.added)
    changed = [t for t, g in zip(DECOMPOSED, got) if g != raw.encode(t, allow_special)]
    # all but the compatibility characters, the ASCII, the empty text and, when the special
    # token is matched between them, '>' + U+0338
    assert len(changed) == (7 if allow_special else 8), changed
    # the same vocabulary without a normalizer encodes the decomposed bytes as they are
    plain = tmp_path / "plain"
    shutil.copytree(tok_dir, plain)
    j = json.loads((plain / "tokenizer.json").read_text())
    j["normalizer"] = None
    (plain / "tokenizer.json").write_text(json.dumps(j))
    assert fdpo_ids(str(plain), DECOMPOSED, str(tmp_path), *extra) == [raw.encode(t, allow_special) for t in DECOMPOSED]


def test_nfc_in_a_normalizer_sequence(toks, tmp_path):
    """{"type": "Sequence", "normalizers": [{"type": "NFC"}]} normalises too"""
    tok_dir, ref, _ = toks["qwen2"]
    d = tmp_path / "seq"
    shutil.copytree(tok_dir, d)
    j = json.loads((d / "tokenizer.json").read_text())
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    (d / "tokenizer.json").write_text(json.dumps(j))
    assert fdpo_ids(str(d), DECOMPOSED, str(tmp_path)) == [ref.encode(t) for t in DECOMPOSED]


# ---- tokens tokenizer_config.json names are special (transformers' SPECIAL_TOKENS_ATTRIBUTES) ----

def gpt2_model(toks):
    """The gpt2 family's model.vocab (without the added <|endoftext|>, id n) and merges."""
    tj = json.load(open(os.path.join(toks["gpt2"][0], "tokenizer.json")))
    vocab = tj["model"]["vocab"]
    return dict(vocab), tj["model"]["merges"], len(vocab)


def strip_specials(text, specials):
    for c in sorted(specials, key=len, reverse=True):
        text = text.replace(c, "")
    return text


SPECIAL_TEXTS = ["hi<|endoftext|>", "a<|tok|>b <|endoftext|><|tok|>", "<|tok|> and <|endoftext|> are special", "plain"]


def check_added_tokens(d, tmp_path, full, merged, added, token_id):
    """d's ids for SPECIAL_TEXTS equal the reference BPE's with these added tokens (content,
    special), with and without --allow-special; token_id is in SPECIAL_TEXTS[1]'s ids, whose
    --skip-special-tokens decoding leaves out the special ones. Returns that decoding."""
    ref = RefBPE(full, merged, GPT2_PAT, added)
    for allow in (True, False):
        got = fdpo_ids(str(d), SPECIAL_TEXTS, str(tmp_path), *(["--allow-special"] if allow else []))
        assert got == [ref.encode(t, allow) for t in SPECIAL_TEXTS]
    ids = ref.encode(SPECIAL_TEXTS[1], True)
    assert token_id in ids
    p = tmp_path / "ids.txt"
    p.write_text(" ".join(map(str, ids)) + "\n")
    want = strip_specials(SPECIAL_TEXTS[1], [c for c, special in added if special])
    assert ok(run("tokenize", "--tokenizer", str(d), "--decode", "--skip-special-tokens", str(p))) == want
    return want


@pytest.mark.parametrize("key", ["eos_token", "bos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                                 "mask_token", "additional_special_tokens"])
def test_tokens_the_config_names_are_special(toks, key, tmp_path):
    """transformers adds every token tokenizer_config.json names (bos/eos/unk/sep/pad/cls/mask
    and additional_special_tokens) as a special added token, also when the tokenizer.json
    lists it only in model.vocab: it is matched in text under --allow-special, left out by
    --skip-special-tokens. fdpo marked only the added_tokens' specials (a config token never,
    unless the files had no added tokens at all)."""
    vocab, merges, n = gpt2_model(toks)
    vocab["<|tok|>"] = n + 1  # in model.vocab, not in added_tokens
    d = tmp_path / "t"
    merged = [tuple(m.split(" ")) for m in merges]
    write_tokenizer(str(d), "gpt2", GPT2_PAT, dict(vocab, **{"<|endoftext|>": n}), merged, GPT2_ADDED,
                    {key: ["<|tok|>"] if key == "additional_special_tokens" else "<|tok|>"})
    tj = json.load(open(d / "tokenizer.json"))
    assert "<|tok|>" in tj["model"]["vocab"] and [a["content"] for a in tj["added_tokens"]] == ["<|endoftext|>"]
    info = harness_json("tok-info", str(d))
    assert sorted(info["special"]) == [n, n + 1]
    full = dict(vocab, **{"<|endoftext|>": n})
    check_added_tokens(d, tmp_path, full, merged, [("<|endoftext|>", True), ("<|tok|>", True)], n + 1)


def test_a_named_token_the_files_added_as_text_stays_text_and_a_missing_one_is_left_out(toks, tmp_path):
    """transformers adds a config-named token only when it is not an added token yet: a
    pad_token that add_tokens made non-special (special false in added_tokens) is still matched
    in text and kept by --skip-special-tokens. A named mask_token or additional special token that
    is not in the vocabulary was ignored before fdpo read those keys, and is again (it refused
    the file: "mask_token '<mask>' is not in the vocabulary"). Both were a review's finds."""
    vocab, merges, n = gpt2_model(toks)
    d = tmp_path / "t"
    merged = [tuple(m.split(" ")) for m in merges]
    full = dict(vocab, **{"<|endoftext|>": n, "<|tok|>": n + 1})
    added = GPT2_ADDED + [("<|tok|>", False)]
    write_tokenizer(str(d), "gpt2", GPT2_PAT, full, merged, added,
                    {"pad_token": "<|tok|>", "mask_token": "<mask>", "additional_special_tokens": ["<extra_0>"]})
    assert "<mask>" not in full and "<extra_0>" not in full
    info = harness_json("tok-info", str(d))
    assert sorted(info["special"]) == [n]
    assert "<|tok|>" in check_added_tokens(d, tmp_path, full, merged, [("<|endoftext|>", True), ("<|tok|>", False)], n + 1)


def write_slow_tokenizer(d, vocab, merges, config):
    """d/vocab.json + merges.txt (no tokenizer.json) + tokenizer_config.json = config"""
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(config))


def test_a_named_token_only_added_tokens_decoder_lists_as_text_is_special(toks, tmp_path):
    """vocab.json + merges.txt (no tokenizer.json): transformers builds the backend without added
    tokens and adds added_tokens_decoder's entries with special = their flag or being named, so a
    pad_token listed there with special false is special (left out by --skip-special-tokens). A
    first fix of the tokenizer.json case kept the decoder's false here too (a review's find)."""
    vocab, merges, n = gpt2_model(toks)
    d, full = tmp_path / "v", dict(vocab, **{"<|endoftext|>": n})
    write_slow_tokenizer(d, full, merges, {"eos_token": "<|endoftext|>", "pad_token": "<|tok|>",
                                           "added_tokens_decoder": {str(n + 1): {"content": "<|tok|>", "special": False}}})
    info = harness_json("tok-info", str(d))
    assert sorted(info["special"]) == [n, n + 1]
    full["<|tok|>"] = n + 1
    ref = RefBPE(full, [tuple(m.split(" ")) for m in merges], GPT2_PAT, [("<|endoftext|>", True), ("<|tok|>", True)])
    p = tmp_path / "ids.txt"
    p.write_text(" ".join(map(str, ref.encode("h<|tok|>i<|endoftext|>", True))) + "\n")
    assert ok(run("tokenize", "--tokenizer", str(d), "--decode", "--skip-special-tokens", str(p))) == "hi"


def test_eos_stays_special_when_added_tokens_decoder_leaves_it_out(toks, tmp_path):
    """vocab.json + merges.txt + a tokenizer_config.json whose eos_token is <|endoftext|> and
    whose added_tokens_decoder lists only <|pad|>: both are special, as in transformers. The eos
    was not: <|endoftext|> was text under --allow-special, kept by --skip-special-tokens, and
    the Zephyr template wrote each turn's eos as text tokens."""
    vocab, merges, n = gpt2_model(toks)
    d, full = tmp_path / "v", dict(vocab, **{"<|endoftext|>": n})
    write_slow_tokenizer(d, full, merges, {"eos_token": "<|endoftext|>",
                                           "added_tokens_decoder": {str(n + 1): {"content": "<|pad|>", "special": True}}})
    info = harness_json("tok-info", str(d))
    assert info["eos"] == n and sorted(info["special"]) == [n, n + 1]
    full["<|pad|>"] = n + 1
    ref = RefBPE(full, [tuple(m.split(" ")) for m in merges], GPT2_PAT, [("<|endoftext|>", True), ("<|pad|>", True)])
    texts = ["hi<|endoftext|>", "a<|pad|>b<|endoftext|>c", "<|endoftext|>"]
    assert fdpo_ids(str(d), texts, str(tmp_path), "--allow-special") == [ref.encode(t, True) for t in texts]
    p = tmp_path / "ids.txt"
    p.write_text(" ".join(map(str, ref.encode("hi<|endoftext|>", True))) + "\n")
    assert ok(run("tokenize", "--tokenizer", str(d), "--decode", "--skip-special-tokens", str(p))) == "hi"
    # Zephyr: '<|ROLE|>\nCONTENT' + eos + '\n' per turn, the eos one token
    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    seq = harness_json("data-chat-sft", str(d), "zephyr", str(data))["sequences"][0]["tokens"]
    assert seq == ref.encode("<|user|>\nhi<|endoftext|>\n<|assistant|>\nyo<|endoftext|>", True)


# ---- added_tokens_decoder keys: transformers reads them with int() ----

@pytest.mark.parametrize("form", ["hex", "float", "exponent", "sign", "space"])
def test_added_tokens_decoder_key_is_a_decimal_integer(toks, form, tmp_path):
    """A key that denotes the next id but is not a decimal integer ("0x...", "N.0", "N/100e2")
    was read with strtod and taken; transformers' int(key) raises on it (checked here with
    Python's int)."""
    vocab, merges, n = gpt2_model(toks)
    d = tmp_path / "v"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(dict(vocab, **{"<|endoftext|>": n}), ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    nxt = n + 1
    key = {"hex": hex(nxt), "float": f"{nxt}.0", "exponent": f"{nxt / 100}e2", "sign": f"+{nxt}", "space": f" {nxt}"}[form]
    if form in ("hex", "float", "exponent"):
        with pytest.raises(ValueError):
            int(key)
    cfg = {"added_tokens_decoder": {str(nxt): {"content": "<|new|>", "special": True}}}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert harness_json("tok-info", str(d))["vocab_size"] == nxt + 1  # the decimal key is an id
    cfg = {"added_tokens_decoder": {key: {"content": "<|new|>", "special": True}}}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and f'tokenizer_config.json: added_tokens_decoder["{key}"]: the key is not a token id' in err, err


# ---- a POSIX bracket class inside a class ----

@pytest.mark.parametrize("pattern", [r"[[:digit:]\s]+|.", r"[^[:digit:]\s]{1,2}|[[:digit:]]+|\s+", r"[[:cntrl:][:xdigit:]]+|\w+|."])
def test_posix_class_inside_a_class(toks, pattern, tmp_path):
    r"""A Split regex with a POSIX class ([:digit:], which Oniguruma and PCRE2 have) in a bracket
    class beside \s: its ']' closed the outer class in fdpo's \s rewriting, so `[[:digit:]\s]+`
    became a class of '[', ':', 'd', ... followed by text. Pieces from Python's `regex` module;
    ASCII digits and punctuation only, where its POSIX classes agree with Oniguruma's."""
    import regex
    from tok_ref import pieces
    assert pieces(r"[[:digit:]\s]+|.", "12 ab") == ["12 ", "a", "b"]
    _, _, vocab = toks["gpt2"]
    tj = json.load(open(os.path.join(toks["gpt2"][0], "tokenizer.json")))
    merges = [tuple(m.split(" ")) for m in tj["model"]["merges"]]
    d = tmp_path / "px"
    write_tokenizer(str(d), "split", pattern, vocab, merges, GPT2_ADDED, None, None)
    ref = RefBPE(vocab, merges, pattern, GPT2_ADDED)
    texts = ["12 ab", "numbers 1234567 and 3.14159, 42 times", "a: b; c! (d) [e] 9\t8\n7", TEXTS[0], TEXTS[3], "::]]1"]
    assert all(not regex.search(r"[^\x00-\x7f]", t) for t in texts)
    assert fdpo_ids(str(d), texts, str(tmp_path)) == [ref.encode(t) for t in texts]


# ---- ill-formed UTF-8 in the files ----

@pytest.mark.parametrize("case", ["vocab-overlong", "vocab-ff", "merges", "config", "tokenizer-json"])
def test_ill_formed_utf8_in_a_file_is_refused(toks, case, tmp_path):
    """Python's json.load (and Hugging Face's loaders) refuse a file that is not UTF-8; fdpo
    read the vocab.json key "<\\xC0\\xAF>" (an overlong '/') as "</>" and took a raw 0xFF."""
    vocab, merges, n = gpt2_model(toks)
    d = tmp_path / "v"
    d.mkdir()
    vj = json.dumps(dict(vocab, **{"<|endoftext|>": n}), ensure_ascii=False).encode()
    mt = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode()
    cfg = b'{"eos_token": "<|endoftext|>"}'
    if case == "vocab-overlong":
        vj, name, bad = vj[:-1] + b', "<\xc0\xaf>": %d}' % (n + 1), "vocab.json", 0xC0
    elif case == "vocab-ff":
        vj, name, bad = vj[:-1] + b', "<\xff>": %d}' % (n + 1), "vocab.json", 0xFF
    elif case == "merges":
        mt, name, bad = mt + b"\xe2\x28 \xa1\n", "merges.txt", 0xE2
    elif case == "config":
        cfg, name, bad = b'{"eos_token": "<|endoftext|>",\n "x": "\xed\xa0\x80"}', "tokenizer_config.json", 0xED
    (d / "vocab.json").write_bytes(vj)
    (d / "merges.txt").write_bytes(mt)
    (d / "tokenizer_config.json").write_bytes(cfg)
    if case == "tokenizer-json":
        shutil.copy(os.path.join(toks["gpt2"][0], "tokenizer.json"), d / "tokenizer.json")
        raw = (d / "tokenizer.json").read_bytes()
        (d / "tokenizer.json").write_bytes(raw.replace(b'"version"', b'"\xc1\xbf": 1, "version"', 1))
        name, bad = "tokenizer.json", 0xC1
    data = (d / name).read_bytes()
    with pytest.raises(UnicodeDecodeError) as e:
        data.decode("utf-8")  # what json.load(open(path, encoding="utf-8")) reads first
    first = e.value.start
    assert data[first] == bad
    line = data[:first].count(b"\n") + 1
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and f"{d}/{name}:{line}: invalid UTF-8 (byte 0x{bad:02X} at byte offset {first})" in err, err


def test_an_invalid_u_escape_in_tokenizer_json_is_refused(tmp_path):
    """A \\u escape without four hex digits (here in an added token's content) was read by cJSON
    as U+0000, the token's text cut there; Python's json (so transformers) refuses the file.
    The same check as every JSONL reader's, named by FILE:LINE and json's column."""
    d = tmp_path / "bad"
    make(d, "gpt2")
    text = (d / "tokenizer.json").read_text()
    tj = json.loads(text)
    tj["added_tokens"][0]["content"] = "<|end\\uZZZZoftext|>"   # a placeholder, made an escape below
    text = json.dumps(tj, indent=2).replace("\\\\uZZZZ", "\\uZZZZ")
    (d / "tokenizer.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text)
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    want = f"{d}/tokenizer.json:{e.value.lineno}: invalid JSON: the \\u escape at column {e.value.colno} needs four hex digits"
    assert r.returncode == 1 and want in r.stderr.decode(), r.stderr


def _set_flag(tj, where, key, value):
    if where == "added":
        tj["added_tokens"][0][key] = value
    elif where == "model":
        tj["model"][key] = value
    else:  # pre_tokenizer Sequence [Digits, Split, ByteLevel]: index by type
        for e in tj["pre_tokenizer"]["pretokenizers"]:
            if e["type"] == where:
                e[key] = value


NON_BOOL_FLAGS = [("added", k) for k in ("lstrip", "rstrip", "single_word", "normalized", "special")] + [
    ("model", "byte_fallback"), ("model", "ignore_merges"), ("Digits", "individual_digits"),
    ("Split", "invert"), ("ByteLevel", "add_prefix_space"), ("ByteLevel", "use_regex")]


@pytest.mark.parametrize("value", [1, 0, "true", None], ids=["1", "0", "str", "null"])
@pytest.mark.parametrize("where,key", NON_BOOL_FLAGS, ids=[k for _, k in NON_BOOL_FLAGS])
def test_a_boolean_field_that_is_not_a_boolean_is_refused(tmp_path, where, key, value):
    """Hugging Face tokenizers reads each of these fields with serde as `bool` (AddedToken's
    lstrip/rstrip/single_word/normalized/special, BPE's byte_fallback/ignore_merges,
    Digits.individual_digits, Split.invert, ByteLevel.add_prefix_space/use_regex), and
    serde_json never coerces a number, string or null to a bool: `Tokenizer.from_file` fails
    ("invalid type: integer `1`, expected a boolean"). fdpo read them with cJSON_IsTrue, so
    `individual_digits: 1` silently meant false (digit runs merged), `lstrip: 1` bypassed the
    refusal and `use_regex: 0` meant true."""
    merges = train_merges(CORPUS, LLAMA3_PAT, 40, True)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "t"
    write_tokenizer(str(d), "split", LLAMA3_PAT, vocab, merges, GPT2_ADDED, None, None)
    tj = json.load(open(d / "tokenizer.json"))
    tj["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Digits", "individual_digits": True})
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    assert run("tokenize", "--tokenizer", str(d), input=b"12 x").returncode == 0
    _set_flag(tj, where, key, value)
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    r = run("tokenize", "--tokenizer", str(d), input=b"12 x")
    err = r.stderr.decode()
    assert r.returncode == 1 and f"'{key}' must be true or false" in err and "tokenizer.json" in err, err


@pytest.mark.parametrize("key", ["lstrip", "normalized"])
def test_a_non_boolean_flag_in_added_tokens_decoder_is_refused(toks, key, tmp_path):
    """tokenizer_config.json's added_tokens_decoder entries become tokenizers.AddedToken(**entry),
    whose flags are Rust bools: 1 is refused there too."""
    d = tmp_path / "t"
    shutil.copytree(toks["gpt2"][0], d)
    cfg = json.load(open(d / "tokenizer_config.json"))
    next(iter(cfg["added_tokens_decoder"].values()))[key] = 1
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and "tokenizer_config.json: added_tokens_decoder" in err and f"'{key}' must be true or false" in err, err


def test_a_long_run_under_a_quantified_group_is_split_as_the_pattern_says(tmp_path):
    """A Split pattern with a repeated group, over a run of ~1,400+ characters, exhausted
    PCRE2's JIT stack; the error was taken as "no match", so the rest of the text became one
    piece and merges crossed the pattern's boundaries (' ' + 'the' -> 'Ġthe'). The ids must be
    the reference's (Python `regex` splits these texts, as Hugging Face's Oniguruma does)."""
    pat = r"(?:\p{L}|\p{N})+|\s+|[^\s\p{L}\p{N}]+"
    # "Ġ the" is a merge the pattern never lets apply (' ' and 'the' are separate pieces)
    merges = train_merges(CORPUS, pat, 60) + [("t", "h"), ("th", "e"), ("\u0120", "the")]
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "grp"
    write_tokenizer(str(d), "split", pat, vocab, merges, GPT2_ADDED, None, None)
    ref = RefBPE(vocab, merges, pat, GPT2_ADDED)
    texts = ["ab" * n + " the end, x1y2" * 3 for n in (600, 700, 5000)] + ["z9" * 20000 + " the"]
    got = fdpo_ids(str(d), texts, str(tmp_path))
    for t, g in zip(texts, got):
        assert g == ref.encode(t), len(t)


# ---- special_tokens_map.json: transformers' legacy loading ----
# PreTrainedTokenizerBase._from_pretrained, when tokenizer_config.json has no
# added_tokens_decoder (saved before transformers 4.34, or hand-written), reads
# special_tokens_map.json and sets each of its keys over the config's value; its
# additional_special_tokens are appended to the config's. With added_tokens_decoder the file is
# not read at all. Expected ids below are hand-built from the vocabulary by those rules.

def legacy_dir(d, family, config, special_map, pair):
    """family's tokenizer with <|im_end|> (and <|tool|>) in the vocabulary as plain entries,
    the given tokenizer_config.json and special_tokens_map.json; vocab.json + merges.txt when
    pair (the slow GPT2Tokenizer layout), else tokenizer.json."""
    ref, vocab, merges = make(d, family, with_config=False)
    for extra in ("<|im_end|>", "<|tool|>"):
        vocab.setdefault(extra, len(vocab))
    tj = json.load(open(d / "tokenizer.json"))
    if pair:
        os.remove(d / "tokenizer.json")
        (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tj["model"]["merges"]) + "\n", encoding="utf-8")
    else:
        tj["model"]["vocab"]["<|im_end|>"] = vocab["<|im_end|>"]
        tj["model"]["vocab"]["<|tool|>"] = vocab["<|tool|>"]
        (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    if special_map is not None:
        (d / "special_tokens_map.json").write_text(json.dumps(special_map))
    return ref, vocab


OLD_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "additional_special_tokens": ["<|tool|>"]}
OLD_MAP = {"eos_token": {"content": "<|im_end|>", "lstrip": False, "rstrip": False, "normalized": False,
                         "single_word": False}, "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|im_end|>"}


@pytest.mark.parametrize("pair", [True, False], ids=["vocab-json", "tokenizer-json"])
def test_special_tokens_map_overrides_a_legacy_config(pair, tmp_path):
    """tokenizer.add_special_tokens({"eos_token": "<|im_end|>"}); save_pretrained(d) before 4.34
    left the new eos only in special_tokens_map.json: transformers' eos and pad are
    <|im_end|>, a special token; fdpo did not read the file and used <|endoftext|>."""
    d = tmp_path / "t"
    ref, vocab = legacy_dir(d, "gpt2", OLD_CONFIG, OLD_MAP, pair)
    info = harness_json("tok-info", str(d))
    assert (info["eos"], info["bos"], info["pad"]) == (vocab["<|im_end|>"], vocab["<|endoftext|>"], vocab["<|im_end|>"])
    # the config's additional_special_tokens stay special beside the map's tokens
    assert sorted(info["special"]) == sorted([vocab["<|endoftext|>"], vocab["<|im_end|>"], vocab["<|tool|>"]])
    want = ref.encode_text("hi") + [vocab["<|im_end|>"]] + ref.encode_text(" x") + [vocab["<|tool|>"]]
    assert fdpo_ids(str(d), ["hi<|im_end|> x<|tool|>"], str(tmp_path), "--allow-special")[0] == want
    # a save carries the file, so the checkpoint loads with the same tokens
    dst = tmp_path / "saved"
    r = subprocess.run([HARNESS, "tok-save", str(d), str(dst)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.load(open(dst / "special_tokens_map.json")) == OLD_MAP
    assert harness_json("tok-info", str(dst)) == info


def test_special_tokens_map_appends_additional_special_tokens(tmp_path):
    d = tmp_path / "t"
    cfg = dict(OLD_CONFIG, additional_special_tokens=["<|tool|>"])
    _, vocab = legacy_dir(d, "gpt2", cfg, {"additional_special_tokens": ["<|im_end|>"]}, True)
    info = harness_json("tok-info", str(d))
    assert info["eos"] == vocab["<|endoftext|>"]   # the map has no eos_token: the config's stands
    assert sorted(info["special"]) == sorted([vocab["<|endoftext|>"], vocab["<|im_end|>"], vocab["<|tool|>"]])


def test_special_tokens_map_is_not_read_beside_added_tokens_decoder(tmp_path):
    """A config with added_tokens_decoder (transformers >= 4.34 wrote it) is complete:
    transformers does not read special_tokens_map.json then (a malformed one included)."""
    d = tmp_path / "t"
    _, vocab = legacy_dir(d, "gpt2", {}, None, False)
    n = vocab["<|endoftext|>"]
    cfg = dict(OLD_CONFIG, added_tokens_decoder={str(n): {"content": "<|endoftext|>", "special": True}})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "special_tokens_map.json").write_text(json.dumps(OLD_MAP))
    info = harness_json("tok-info", str(d))
    assert info["eos"] == n and info["pad"] == -1
    (d / "special_tokens_map.json").write_text("{not json")
    assert harness_json("tok-info", str(d))["eos"] == n


@pytest.mark.parametrize("content,msg", [
    ('{"eos_token": "<|nope|>"}', "special_tokens_map.json: eos_token '<|nope|>' is not in the vocabulary"),
    ('{"eos_token": ', "special_tokens_map.json:1: malformed JSON"),
    ('[]', "special_tokens_map.json: not a JSON object"),
])
def test_a_bad_special_tokens_map_is_named(content, msg, tmp_path):
    d = tmp_path / "t"
    legacy_dir(d, "gpt2", OLD_CONFIG, None, True)
    (d / "special_tokens_map.json").write_text(content)
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    assert r.returncode == 1 and msg in r.stderr.decode(), r.stderr


def assert_split_ids(pat, ref_pat, texts, n_merges, tmp_path):
    """fdpo's ids for texts under the Split regex pat are the reference's (Python's `regex`) under
    ref_pat, with merges trained on the texts across any boundary, so the pieces show in the ids."""
    merges = train_merges(texts * 3, ".+", n_merges)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "t"
    write_tokenizer(str(d), "split", pat, vocab, merges, GPT2_ADDED, None, None)
    ref = RefBPE(vocab, merges, ref_pat, GPT2_ADDED)
    assert fdpo_ids(str(d), texts, str(tmp_path)) == [ref.encode(t) for t in texts], pat


# Oniguruma's classes (Hugging Face tokenizers compiles Split patterns with libonig 6.9.8), as
# that engine matches them, not as its doc/RE words them ("Letter | Mark | Number |
# Connector_Punctuation"): enumerating every code point assigned in Unicode 14 through libonig
# 6.9.8 (onig_new, UTF-8, Ruby or Oniguruma syntax), \w, \W, \b and \B outside a class use
# Alphabetic | Mark | Decimal_Number | Connector_Punctuation plus the six Latin-1 numbers
# U+00B2 U+00B3 U+00B9 U+00BC..U+00BE (below U+0100 libonig tests \w with its ISO-8859-1 ctype
# table), and a \w inside [...] is the Unicode range alone, without those six. So the circled
# letters (U+24B6.., U+1F130.., Other_Alphabetic) are word characters and the No numbers
# (U+2460, U+2074, U+09F4) are not. \h is a hexadecimal digit. PCRE2's \h is horizontal
# space and its \w (10.42) has no marks and only "_" of the connectors.
ONIG_W_RANGE = r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}"
ONIG_W = ONIG_W_RANGE + r"\xB2\xB3\xB9\xBC-\xBE"
ONIG_CASES = [
    (r"\h+", r"[0-9a-fA-F]+"),
    (r"\w+", f"[{ONIG_W}]+"),
    (r"\H+|\h+", r"[^0-9a-fA-F]+|[0-9a-fA-F]+"),
    (r"[\w\s]+|\W", f"[{ONIG_W_RANGE}\\s]+|[^{ONIG_W}]"),
    (r"[\h_]+", r"[0-9a-fA-F_]+"),
    (r"\b\w+|\B.", (rf"(?:(?<=[{ONIG_W}])(?![{ONIG_W}])|(?<![{ONIG_W}])(?=[{ONIG_W}]))[{ONIG_W}]+"
                     rf"|(?:(?<=[{ONIG_W}])(?=[{ONIG_W}])|(?<![{ONIG_W}])(?![{ONIG_W}]))."))
]
ONIG_TEXTS = ["cafe xyz", "e\u0301 x", "a\u203fb c_d", "Face 0xBEEF\tdead beef", "x\u00b2 \u0915\u093f\u0924 ab\u0301cd",
              "  \u00e9t\u00e9 \u0301", "a\u24b6\u24b7b x\u2460y \U0001f130\U0001f131 \u0663\u0664",
              "\u00bex \u00bd \u2074x \u2155z \u09f4a \u00b9", "a\u00bda\u00bda\u00bda"]


@pytest.mark.parametrize("case", range(len(ONIG_CASES)))
def test_split_escapes_mean_what_oniguruma_says(case, tmp_path):
    import regex
    pat, ref_pat = ONIG_CASES[case]
    regex.compile(ref_pat)
    assert_split_ids(pat, ref_pat, ONIG_TEXTS, 60, tmp_path)


@pytest.mark.parametrize("neg", ["W", "H", "S"])
def test_a_negated_class_escape_inside_a_class_is_refused(neg, tmp_path):
    merges = train_merges(CORPUS, GPT2_PAT, 10)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "t"
    write_tokenizer(str(d), "split", rf"[\{neg}x]+", vocab, merges, GPT2_ADDED, None, None)
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    assert r.returncode == 1 and f"\\{neg} inside a character class is not supported" in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("pat", [r"(?=\p{Lu})", r"\b", r"(?=\p{Lu})|\d+", r"a*"])
def test_an_empty_match_is_only_a_boundary(pat, tmp_path):
    r"""A Split regex that can match empty (a lookahead, \b): Oniguruma's find_iter (Hugging Face
    tokenizers) and Python's finditer use an empty match as a boundary only and search on one
    code point later, so that code point stays in the text up to the next match. fdpo made it a
    piece of its own (`HelloWorld` was H|ello|W|orld; HF gives Hello|World). Pieces from `regex`."""
    from tok_ref import pieces
    assert pieces(r"(?=\p{Lu})", "HelloWorld") == ["Hello", "World"]
    texts = ["HelloWorld", "hello world. 123", "the the.the", "aXbYc12Zd", "\u00e9t\u00e9 \u00c9T\u00c9", "bab aab", ""]
    assert_split_ids(pat, pat, texts[:-1], 60, tmp_path)


@pytest.mark.parametrize("kind,ref_pat", [("Regex", ""), ("String", "")])
def test_an_empty_split_pattern_loads_as_in_hugging_face(kind, ref_pat, tmp_path):
    """An empty Split pattern was refused as "must be {"Regex": string} ...", which it is.
    Hugging Face tokenizers (0.23.2) loads it: an empty Regex matches empty everywhere, so every
    code point is a piece ("ab c" -> a, b, space, c), and a String is escaped into a regex, so
    "" is the same (ids 97 98 32 99 from tokenizers' npm package for both, review of wave 45).
    Pieces from Python's `regex`."""
    from tok_ref import pieces
    assert pieces("", "ab c") == ["a", "b", " ", "c"]
    texts = ["ab c", "hello hello world", "\u00e9t\u00e9 x"]
    merges = train_merges(texts * 3, ".+", 40)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "t"
    write_tokenizer(str(d), "split", "", vocab, merges, GPT2_ADDED, None, None)
    tj = json.load(open(d / "tokenizer.json", encoding="utf-8"))
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {kind: ""}
    json.dump(tj, open(d / "tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
    ref = RefBPE(vocab, merges, ref_pat, GPT2_ADDED)
    assert fdpo_ids(str(d), texts, str(tmp_path)) == [ref.encode(t) for t in texts]


@pytest.mark.parametrize("pat,ref_pat", [(r"[[:word:]]+|.", f"[{ONIG_W_RANGE}]+|."),
                                         (r"[[:space:]x]+|.", r"[\p{White_Space}x]+|.")])
def test_posix_word_and_space_mean_what_oniguruma_says(pat, ref_pat, tmp_path):
    r"""Oniguruma's [:word:] is its [\w] (\p{Alphabetic}\p{M}\p{Nd}\p{Pc}, measured over every code
    point through libonig 6.9.8, see ONIG_W) and [:space:] is White_Space, as its \s; PCRE2's
    have no marks but No numbers (x² whole, e+U+0301 split) and U+180E."""
    texts = ["e\u0301 x\u00b2 \u2160a_b", "a \u180e b \u180e c \u180e\u3000d\u0085e", "\u24b6\u24b7 \u2460 \u0663\u0664"]
    assert_split_ids(pat, ref_pat, texts, 60, tmp_path)


# The POSIX classes PCRE2 reads as other sets, as libonig 6.9.8 (UTF-8, Ruby syntax, the one Hugging
# Face tokenizers bundles) matches them inside a class: measured over every code point with a libonig
# probe; test_posix_reference_sets_are_libonigs re-checks these sets on the texts below wherever
# libonig is installed. PCRE2's [:alpha:] is \p{L} (no Alphabetic marks such as U+093F), its
# [:alnum:] has the No numbers (U+00B2, U+2460), [:upper:]/[:lower:] are Lu/Ll (not U+2160, U+24B6,
# U+00AA, U+02B0), [:blank:] has U+180E.
ONIG_POSIX = {"alpha": r"\p{Alphabetic}", "alnum": r"\p{Alphabetic}\p{Nd}", "upper": r"\p{Uppercase}",
              "lower": r"\p{Lowercase}", "blank": r"\t\p{Zs}"}
POSIX_TEXTS = ["\u0915\u093f\u0924 x\u00b2 \u2460z", "\u2160\u2161 \u24b6\u24b7\u24d0 Abc \u00aa\u02b0 \u2170\u2171i",
               "a\u180eb c\td\u3000e\u00a0f", "Hello WORLD \u00c9t\u00e9 e\u0301 \u0345x 42\u0663", "\u0663 \u2070 \u00bd_",
               "\u24b6\u24d1 A\u00aa\u02b0 \u2160\u2171 AB\u24d0\u24d1 ab\u2170x"]
POSIX_CASES = [
    (r"[[:alpha:]]+|.", r"[\p{Alphabetic}]+|."),
    (r"[[:alnum:]_]+|.", r"[\p{Alphabetic}\p{Nd}_]+|."),
    (r"[[:upper:]][[:lower:]]*|.", r"[\p{Uppercase}][\p{Lowercase}]*|."),
    (r"[[:blank:]]+|[^[:blank:]]+", r"[\t\p{Zs}]+|[^\t\p{Zs}]+"),
    (r"[[:^alpha:]]+|.", r"[\P{Alphabetic}]+|."),
    (r"[^[:upper:][:digit:]]+|.", r"[^\p{Uppercase}\p{Nd}]+|."),
    (r"[[:^lower:][:space:]]{1,3}|.", r"[\P{Lowercase}\p{White_Space}]{1,3}|."),
    (r"(?i:ab)[[:alpha:]]+|.", r"(?i:ab)[\p{Alphabetic}]+|."),
]


@pytest.mark.parametrize("pat,ref_pat", POSIX_CASES)
def test_posix_classes_mean_what_oniguruma_says(pat, ref_pat, tmp_path):
    r"""[:alpha:] [:alnum:] [:upper:] [:lower:] [:blank:] (and the negated [:^alpha:] [:^upper:]
    [:^lower:]) were refused; they are now Oniguruma's sets (ONIG_POSIX), which differ from
    PCRE2's on these texts (a Devanagari vowel sign, x², circled and Roman-numeral letters, ª,
    U+180E). Against Python's `regex` with the sets written out."""
    assert_split_ids(pat, ref_pat, POSIX_TEXTS, 80, tmp_path)


ONIG_PROBE = r"""
#include <stdio.h>
#include <string.h>
extern char OnigEncodingUTF8[], OnigSyntaxRuby[];
int onig_initialize(void *encs[], int n);
int onig_new(void **reg, const unsigned char *p, const unsigned char *pe, unsigned opt, void *enc, void *syn, void *einfo);
int onig_match(void *reg, const unsigned char *s, const unsigned char *e, const unsigned char *at, void *region, unsigned opt);
void *onig_region_new(void);
int main(int argc, char **argv) { /* argv[1] a pattern, then strings: prints 1 where it matches all of one, else 0 */
    void *e[1] = {OnigEncodingUTF8}, *reg, *rg;
    char einfo[64];
    onig_initialize(e, 1);
    if (onig_new(&reg, (unsigned char *)argv[1], (unsigned char *)argv[1] + strlen(argv[1]), 0, OnigEncodingUTF8,
                 OnigSyntaxRuby, einfo)) return 2;
    rg = onig_region_new();
    for (int a = 2; a < argc; a++) {
        const unsigned char *s = (const unsigned char *)argv[a];
        int n = (int)strlen(argv[a]);
        putchar(onig_match(reg, s, s + n, s, rg, 0) == n ? '1' : '0');
    }
    return 0;
}
"""


@pytest.mark.parametrize("name", sorted(ONIG_POSIX))
def test_posix_reference_sets_are_libonigs(name, tmp_path):
    """The reference sets of ONIG_POSIX, and their negations, are the ones libonig itself matches on
    every code point of POSIX_TEXTS and around the places PCRE2 differs (a probe built against the
    system's libonig5, the engine Hugging Face tokenizers bundles; skipped where it is absent)."""
    import regex
    lib = next((p for p in ("/usr/lib/x86_64-linux-gnu/libonig.so.5", "/usr/lib/aarch64-linux-gnu/libonig.so.5",
                            "/usr/lib/libonig.so.5") if os.path.exists(p)), None)
    cc = shutil.which("cc") or shutil.which("gcc")
    if not lib or not cc:
        pytest.skip("no libonig5 or C compiler here")
    (tmp_path / "probe.c").write_text(ONIG_PROBE)
    subprocess.run([cc, "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c"), lib], check=True, timeout=120)
    cps = sorted({ord(c) for t in POSIX_TEXTS for c in t} | {0x9, 0x20, 0xaa, 0xb2, 0xba, 0x180e, 0x2070, 0x2071,
                                                            0x2160, 0x2170, 0x24b6, 0x24d0, 0x1f130, 0x0903, 0x0345})
    chars = [chr(c) for c in cps]
    for neg in ("", "^"):
        got = subprocess.run([str(tmp_path / "probe"), f"[[:{neg}{name}:]]", *chars], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        want = "".join("1" if bool(regex.fullmatch(f"[{ONIG_POSIX[name]}]", c)) != bool(neg) else "0" for c in chars)
        assert got == want, (name, neg, [f"{c:X}" for c, g, w in zip(cps, got, want) if g != w])


@pytest.mark.parametrize("pat", [r"[[:punct:]]+|\w+|\s+|.", r"[[:graph:]]+|\s+|.", r"[[:print:][:ascii:]]+|."])
def test_posix_classes_pcre2_shares_with_hugging_face_are_kept(pat, tmp_path):
    """[:punct:] (with $ + < = > ^ ` | ~), [:graph:], [:print:] and [:ascii:] are the same sets in
    PCRE2 and in the Oniguruma Hugging Face tokenizers 0.23.2 bundles (every code point compared
    by the review of wave 45); the first version of the POSIX refusal refused them. Against
    Python's `regex`, whose POSIX classes are these sets on this text."""
    texts = ["a$+<b, c!! =>^`|~ x", "tab\there (ok) [x]", "\u00e9t\u00e9 \u00bfqu\u00e9?"]
    assert_split_ids(pat, pat, texts, 40, tmp_path)


@pytest.mark.parametrize("pat,msg", [
    (r"[\p{L}&&[^\p{Lu}]]+|.", "a class intersection '&&' inside a character class"),
    (r"[\p{L}&&\p{Ll}]+|.", "a class intersection '&&' inside a character class"),
    (r"[a[bc]]+|.", "a nested class '[' inside a character class"),
    (r"(?i)[[:upper:]\s]+|.", "the POSIX class [:upper:]"),
    (r"(?i:x[[:^lower:]])|.", "the POSIX class [:^lower:]"),
    (r"[[:^word:]]+|.", "the POSIX class [:^word:]"),
    (r"[[:^blank:]x]+|.", "the POSIX class [:^blank:]"),
])
def test_an_oniguruma_class_pcre2_reads_otherwise_is_refused(pat, msg, tmp_path):
    """Oniguruma's class intersection and nested classes are literals to PCRE2, a negated POSIX
    class of several properties cannot be written inside a PCRE2 class, and under (?i) Oniguruma
    closes [:upper:] and [:lower:] over case (libonig 6.9.8's (?i)[[:upper:]] has a-z; PCRE2's
    \\p{Uppercase} does not): refused, naming the file and the pattern, rather than silently other ids."""
    merges = train_merges(CORPUS, GPT2_PAT, 10)
    vocab = build_vocab(merges, GPT2_ADDED)
    d = tmp_path / "t"
    write_tokenizer(str(d), "split", pat, vocab, merges, GPT2_ADDED, None, None)
    r = run("tokenize", "--tokenizer", str(d), input=b"x")
    err = r.stderr.decode()
    assert r.returncode == 1 and msg in err and "tokenizer.json" in err and pat in err, err


# transformers < 4.34's save of GPT-2 with a pad set (tokenizer.pad_token = tokenizer.eos_token):
# the pad only in special_tokens_map.json
LEGACY_PAD_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                     "unk_token": "<|endoftext|>", "model_max_length": 1024, "add_prefix_space": False}
LEGACY_PAD_MAP = {k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")}


def test_a_checkpoint_saved_before_the_map_was_read_pairs_with_its_base(tmp_path):
    """An fdpo that did not read special_tokens_map.json saved a checkpoint of such a base with
    its tokenizer_config.json and no map, so the base now has the map's pad and the checkpoint
    none. fdpo_tokenizer_diff compared pad ids, and dpo --ref BASE, dpo --resume, merge with the
    base and merge --lora AD --model BASE were refused as "the same text would be other ids"
    (a review's find): a pad changes no text's ids (fdpo pads with no token; a reward model
    pools at config.json's pad_token_id), so pad is not compared."""
    from dpo_common import write_jsonl
    from fdpo_ref.gpt2 import GPT2
    base = tmp_path / "base"
    _, vocab = legacy_dir(base, "gpt2", LEGACY_PAD_CONFIG, LEGACY_PAD_MAP, True)
    GPT2(max(vocab.values()) + 1, 48, 16, 1, 2, seed=5).save_hf(str(base))
    assert harness_json("tok-info", str(base))["pad"] == vocab["<|endoftext|>"]
    old = tmp_path / "old"   # the checkpoint as that fdpo saved it: the config verbatim, no map
    shutil.copytree(base, old)
    (old / "special_tokens_map.json").unlink()
    assert harness_json("tok-info", str(old))["pad"] == -1
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a:", "chosen": " good", "rejected": " bad"},
                                           {"prompt": "b:", "chosen": " nice", "rejected": " awful"}])

    def run(*args):
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    dpo = ["dpo", "--data", tmp_path / "pairs.jsonl", "--eval-fraction", 0, "--threads", 1, "--quiet"]
    run(*dpo, "--model", old, "--ref", base, "--out", tmp_path / "d", "--steps", 1)
    run("merge", "--model", old, "--model", base, "--out", tmp_path / "m", "--threads", 1)
    ad = tmp_path / "ad"   # a LoRA OUT whose tokenizer files are the old checkpoint's
    run(*dpo, "--model", base, "--lora-r", 2, "--out", ad, "--steps", 1)
    (ad / "special_tokens_map.json").unlink()
    run("merge", "--lora", ad, "--model", base, "--out", tmp_path / "lm", "--threads", 1)
    # a run that fdpo began over the base without its map resumes with it there
    run(*dpo, "--model", old, "--ref", old, "--out", tmp_path / "r", "--steps", 2, "--stop-at", 1)
    (old / "special_tokens_map.json").write_text(json.dumps(LEGACY_PAD_MAP))
    run(*dpo, "--model", old, "--ref", old, "--out", tmp_path / "r", "--steps", 2, "--resume")


# transformers < 4.34's GPT-2 fine-tune with an added pad: add_special_tokens({"pad_token": "[PAD]"}),
# resize_token_embeddings, save_pretrained. The pad is named only in special_tokens_map.json (or
# the config) and its id only in the legacy added_tokens.json, which fdpo does not read.
ADDED_PAD_MAP = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                 "pad_token": "[PAD]"}


@pytest.mark.parametrize("where", ["map", "config"])
def test_a_pad_not_in_the_vocabulary_is_left_out_not_refused(where, tmp_path):
    """transformers loads such a directory (its legacy loading gives [PAD] the id in
    added_tokens.json, or the next id), and the fdpo before the map was read trained on it;
    reading the map refused it in every command ("pad_token '[PAD]' is not in the vocabulary")
    although fdpo never uses the pad (it pads with no token). A pad not in the vocabulary is
    left out as unk/sep/cls/mask are: the text's ids are the reference BPE's, sft trains. A
    map whose eos is not in the vocabulary is still refused, and sft no longer tells a
    checkpoint with tokenizer files to pass --tokenizer DIR for one without."""
    from dpo_common import write_jsonl
    from fdpo_ref.gpt2 import GPT2
    d = tmp_path / "leg"
    cfg = dict(LEGACY_PAD_CONFIG, pad_token="[PAD]") if where == "config" else LEGACY_PAD_CONFIG
    ref, vocab = legacy_dir(d, "gpt2", cfg, ADDED_PAD_MAP if where == "map" else None, True)
    assert "[PAD]" not in vocab
    pad_id = max(vocab.values()) + 1
    (d / "added_tokens.json").write_text(json.dumps({"[PAD]": pad_id}))
    GPT2(pad_id + 1, 48, 16, 1, 2, seed=5).save_hf(str(d))   # embeddings resized for [PAD]
    info = harness_json("tok-info", str(d))
    assert (info["eos"], info["bos"], info["pad"]) == (vocab["<|endoftext|>"], vocab["<|endoftext|>"], -1)
    texts = ["hello world", "the quick brown fox [PAD] jumps"]
    assert fdpo_ids(str(d), texts, str(tmp_path)) == [ref.encode_text(t) for t in texts]
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "the quick %d" % i, "completion": " brown fox"} for i in range(4)])
    sft = [FDPO, "sft", "--model", str(d), "--data", str(tmp_path / "sft.jsonl"), "--steps", "1", "--batch-size", "2",
           "--seq-len", "32", "--eval-fraction", "0", "--threads", "1", "--quiet"]
    r = subprocess.run(sft + ["--out", str(tmp_path / "s1")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (d / "special_tokens_map.json").write_text(json.dumps(dict(ADDED_PAD_MAP, eos_token="<|nope|>")))
    r = subprocess.run(sft + ["--out", str(tmp_path / "s2")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "special_tokens_map.json: eos_token '<|nope|>' is not in the vocabulary" in r.stderr
    assert "--tokenizer DIR" not in r.stderr, r.stderr
