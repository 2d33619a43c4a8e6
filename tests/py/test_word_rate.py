"""The English-word rate (`words:FILE` reward, `fdpo eval --words FILE`) against an
independent Python reference: words are maximal runs of ASCII letters, apostrophes, hyphens
and non-ASCII bytes, ASCII-lowercased, with outer apostrophes/hyphens stripped (docs/eval.md);
the rate of one completion is known/total words, eval's `word_rate` is pooled over samples
(sum known / sum total) with the ratio estimator's standard error computed here with numpy."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from test_generate import make_model

HERE = os.path.dirname(__file__)
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))


def run(*args):
    return subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=120)


def ref_words(text):
    out = []
    for m in re.finditer(rb"[A-Za-z'\-\x80-\xff]+", text.encode("utf-8")):
        w = m.group(0).strip(b"'-")
        if w:
            out.append(w.lower())
    return out


def ref_vocab(lines):
    v = set()
    for line in lines:
        v.update(ref_words(line.split("#")[0]))
    return v


VOCAB_LINES = ["The", "cat", "sat", "# a comment line", "don't", "well-known  # trailing comment",
               "naïve", "", "ON", "the"]
TEXTS = ["The cat sat on the mat.", "Zorg blick the CAT!", "", "12 34 ...", "don't stop -- well-known 'cat'",
         "naïve naive NAÏVE", "'--' on-on ON"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("wr_model")
    make_model(d, 257, seed=5, n_positions=64, byte_tokenizer=True)
    return str(d)


def test_words_reward_matches_reference(model, tmp_path):
    (tmp_path / "v.txt").write_text("\n".join(VOCAB_LINES) + "\n", encoding="utf-8")
    with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as f:
        for t in TEXTS:
            f.write(json.dumps({"prompt": "p", "completion": t}) + "\n")
    r = run("score", "--model", model, "--data", tmp_path / "c.jsonl", "--reward", f"words:{tmp_path / 'v.txt'}",
            "--out", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    got = [json.loads(l)["reward"] for l in open(tmp_path / "s.jsonl")]
    vocab = ref_vocab(VOCAB_LINES)
    for t, g in zip(TEXTS, got):
        w = ref_words(t)
        want = sum(x in vocab for x in w) / len(w) if w else 0.0
        assert g == pytest.approx(want, abs=1e-12), (t, g, want)
    # the cases the reference must agree on are really exercised
    assert got[0] == pytest.approx(5 / 6) and got[2] == 0.0 and got[5] == pytest.approx(1 / 3)  # only ASCII is case-folded: NAÏVE is not naïve


def test_eval_word_rate_pooled_with_se(model, tmp_path):
    # vocabulary = the bytes the byte-level model emits most: some words known, some not
    (tmp_path / "v.txt").write_text("\n".join(chr(c) for c in range(ord("a"), ord("n"))) + "\n")
    (tmp_path / "p.txt").write_text("a\nb\nc\nd\n")
    r = run("eval", "--model", model, "--ref", model, "--data", tmp_path / "p.txt", "--n", 6, "--max-new-tokens", 24,
            "--words", tmp_path / "v.txt", "--seed", 3, "--out", tmp_path / "e.json", "--samples-out", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    p = json.load(open(tmp_path / "e.json"))["policies"][0]
    vocab = ref_vocab((tmp_path / "v.txt").read_text().split("\n"))
    known, total = [], []
    for line in open(tmp_path / "s.jsonl"):
        s = json.loads(line)
        w = ref_words(s["completion"])
        known.append(sum(x in vocab for x in w))
        total.append(len(w))
        if w:
            assert s["word_rate"] == pytest.approx(known[-1] / total[-1], abs=1e-12)
    known, total = np.array(known, float), np.array(total, float)
    assert total.sum() > 0 and 0 < known.sum() < total.sum(), (known, total)  # a non-trivial rate
    rate = known.sum() / total.sum()
    n = len(known)
    se = np.sqrt(((known - rate * total) ** 2).sum() / (n * (n - 1))) / total.mean()
    assert p["word_rate"] == pytest.approx(rate, abs=1e-12)
    assert p["word_rate_se"] == pytest.approx(se, rel=1e-9)
    assert p["word_rate_words"] == total.sum()


def test_words_file_with_byte_order_mark(model, tmp_path):
    """A UTF-8 byte order mark (Python's utf-8-sig) is not part of the first word, as in
    lexicon:FILE and every other reader: it was glued to 'good', which then never matched."""
    (tmp_path / "v.txt").write_text("good\nbad\n", encoding="utf-8-sig")
    assert (tmp_path / "v.txt").read_bytes()[:3] == b"\xef\xbb\xbf"
    (tmp_path / "c.jsonl").write_text('{"prompt": "x", "completion": "good"}\n{"prompt": "x", "completion": "good cat"}\n')
    r = run("score", "--model", model, "--data", tmp_path / "c.jsonl", "--reward", f"words:{tmp_path / 'v.txt'}",
            "--out", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    assert [json.loads(l)["reward"] for l in open(tmp_path / "s.jsonl")] == [1.0, 0.5]   # 1/1, 1/2 known


def test_word_list_errors(model, tmp_path):
    (tmp_path / "p.txt").write_text("a\n")
    r = run("eval", "--model", model, "--ref", model, "--data", tmp_path / "p.txt", "--words", tmp_path / "missing.txt")
    assert r.returncode == 1 and "--words" in r.stderr and "missing.txt" in r.stderr, r.stderr
    (tmp_path / "empty.txt").write_text("# only a comment\n123\n\n")
    r = run("eval", "--model", model, "--ref", model, "--data", tmp_path / "p.txt", "--words", tmp_path / "empty.txt")
    assert r.returncode == 1 and "empty.txt" in r.stderr and "no words" in r.stderr, r.stderr
    (tmp_path / "c.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    r = run("score", "--model", model, "--data", tmp_path / "c.jsonl", "--reward", "words:")
    assert r.returncode == 1 and "word-list file" in r.stderr, r.stderr
