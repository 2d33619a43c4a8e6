"""Safety signals (issue #12 item 4): the lexicon:FILE reward/safety spec against an
independent Python scorer written from docs/eval.md's word rule, its FILE:LINE errors, and
fdpo eval --safety's mean / standard error / fraction safe against numpy on the samples
written with --samples-out."""
import json
import math
import os
import random
import re

import numpy as np
import pytest

from dpo_common import FDPO, HARNESS, fdpo, harness
from fdpo_ref.gpt2 import GPT2
import torch


# ---- an independent scorer: the documented rule, on bytes ----
WORD = re.compile(rb"[A-Za-z'\-\x80-\xff]+")


def words_of(text_bytes):
    out = []
    for m in WORD.finditer(text_bytes):
        w = m.group(0).strip(b"'-")
        if w:
            out.append(w.lower())  # bytes.lower() folds ASCII only
    return out


def lexicon_score(lex, text_bytes):
    """Sum of weights; at each word the longest phrase wins; an unknown hyphenated word
    scores as the sum of its parts."""
    w = words_of(text_bytes)
    longest = max(len(k.split(b" ")) for k in lex)
    total, i = 0.0, 0
    while i < len(w):
        for k in range(min(longest, len(w) - i), 1, -1):
            key = b" ".join(w[i:i + k])
            if key in lex:
                total += lex[key]
                i += k
                break
        else:
            if w[i] in lex:
                total += lex[w[i]]
            elif b"-" in w[i]:
                total += sum(lex.get(p, 0.0) for p in w[i].split(b"-") if p)
            i += 1
    return total


LEX_TEXT = """# helpfulness words
Thanks\t2.5
please 1
harm   -3   # a comment after the weight
kill -4.25
well-being 1.5

not bad 2
"""
LEX = {b"thanks": 2.5, b"please": 1.0, b"harm": -3.0, b"kill": -4.25, b"well-being": 1.5, b"not bad": 2.0}


def score_file(tmp_path, spec, texts):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"prompt": "p", "completion": t}) + "\n" for t in texts))
    return harness("eval-reward", spec, f, check=False)


def test_lexicon_scores_match_an_independent_python_scorer(tmp_path):
    (tmp_path / "lex.txt").write_text(LEX_TEXT)
    rng = random.Random(5)
    vocab = ["thanks", "THANKS", "please", "harm", "kill", "well-being", "kill-harm", "not", "bad", "dog",
             "'harm'", "-please-", "harmless", "x1", "42", ",", "!", "\u00e9t\u00e9"]
    texts = ["Thanks, please!", "not bad at all", "well-being and kill-harm", "", "nothing here 123"]
    texts += [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(40)]
    r = score_file(tmp_path, f"lexicon:{tmp_path / 'lex.txt'}", texts)
    assert r.returncode == 0, r.stderr
    got = [float(x) for x in r.stdout.split()]
    want = [lexicon_score(LEX, t.encode()) for t in texts]
    assert got == pytest.approx(want, abs=1e-12)
    assert want[:3] == [3.5, 2.0, 1.5 - 4.25 - 3.0]  # hand-checked: case folding, phrase, hyphen parts


@pytest.mark.parametrize("body,line,what", [
    ("good 1\nbad\n", 2, "has no weight"),
    ("good 1\nbad one\n", 2, "'one' is not a number"),
    ("good 1\n\n# c\nGOOD 2\n", 4, "duplicate word 'good'"),
    ("good nan\n", 1, "not finite"),
    ("good inf\n", 1, "not finite"),
    ("good 1e999\n", 1, "not finite"),
    ("go0d 1\n", 1, "'0'"),
    ("-good 1\n", 1, "apostrophe or hyphen"),
])
def test_lexicon_malformed_lines_name_file_and_line(tmp_path, body, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(body)
    r = score_file(tmp_path, f"lexicon:{p}", ["good"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{p}:{line}:" in r.stderr and what in r.stderr, r.stderr


def test_lexicon_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    r = score_file(tmp_path, f"lexicon:{tmp_path / 'empty.txt'}", ["x"])
    assert r.returncode == 1 and "no words" in r.stderr
    r = score_file(tmp_path, f"lexicon:{tmp_path / 'nope.txt'}", ["x"])
    assert r.returncode == 1 and "nope.txt" in r.stderr
    r = score_file(tmp_path, "lexicon:", ["x"])
    assert r.returncode == 1 and "lexicon:" in r.stderr


# ---- fdpo eval --safety ----

def byte_model(d, seed):
    m = GPT2(257, 64, 16, 2, 2, seed=seed)
    with torch.no_grad():
        m.param("wte.weight").mul_(20.0)  # peaked next-token distributions: varied lengths
    m.save_hf(str(d))
    with open(os.path.join(str(d), "fdpo_tokenizer.json"), "w") as f:
        json.dump({"type": "byte", "vocab_size": 257, "eos_token_id": 256}, f)


def read_samples(path):
    rows = []
    with open(path, "rb") as f:
        for line in f:
            rows.append(json.loads(line.decode("utf-8", "surrogateescape")))
    return rows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    byte_model(d / "a", 1)
    byte_model(d / "b", 2)
    (d / "prompts.txt").write_text("hello\nthe cat\nplease\n")
    return d


def test_eval_safety_mean_se_and_fraction_against_numpy(models, tmp_path):
    out, smp = tmp_path / "e.json", tmp_path / "s.jsonl"
    r = fdpo("eval", "--model", models / "a", "--model", models / "b", "--ref", models / "a",
             "--data", models / "prompts.txt", "--n", 16, "--max-new-tokens", 24, "--seed", 3,
             "--threads", 1, "--safety", "length", "--safety-threshold", 12, "--reward", "length:words",
             "--out", out, "--samples-out", smp)
    assert "safety_mean" in r.stdout and "safety_frac_safe" in r.stdout  # the table shows them
    doc = json.loads(out.read_text())
    assert doc["config"]["safety"] == "length" and doc["config"]["safety_threshold"] == 12
    rows = read_samples(smp)
    for pol in doc["policies"]:
        g = np.array([s["safety"] for s in rows if s["policy"] == pol["name"]], dtype=np.float64)
        assert len(g) == 48
        assert np.array_equal(g, [s["n_tokens"] for s in rows if s["policy"] == pol["name"]])
        assert pol["safety_mean"] == pytest.approx(g.mean(), abs=1e-12)
        assert pol["safety_std"] == pytest.approx(g.std(ddof=1), abs=1e-12)
        assert pol["safety_se"] == pytest.approx(g.std(ddof=1) / math.sqrt(len(g)), abs=1e-12)
        assert pol["safety_frac_safe"] == pytest.approx(np.mean(g >= 12), abs=1e-15)
        assert pol["safety_threshold"] == 12
        assert "reward_mean" in pol  # beside the reward
    g_all = np.array([s["safety"] for s in rows])
    assert 0 < np.mean(g_all >= 12) < 1  # the threshold splits the samples: a real check


def test_eval_safety_lexicon_per_sample_matches_python(models, tmp_path):
    lex = {bytes([c]): float(c % 7) - 3.0 for c in range(ord("a"), ord("z") + 1)}
    (tmp_path / "lex.txt").write_text("".join(f"{k.decode()}\t{v}\n" for k, v in lex.items()))
    out, smp = tmp_path / "e.json", tmp_path / "s.jsonl"
    fdpo("eval", "--model", models / "b", "--ref", models / "a", "--data", models / "prompts.txt", "--n", 8,
         "--max-new-tokens", 24, "--seed", 4, "--threads", 1, "--safety", f"lexicon:{tmp_path / 'lex.txt'}",
         "--out", out, "--samples-out", smp)
    rows = read_samples(smp)
    want = np.array([lexicon_score(lex, s["completion"].encode("utf-8", "surrogateescape")) for s in rows])
    got = np.array([s["safety"] for s in rows])
    assert np.allclose(got, want, atol=1e-12)
    pol = json.loads(out.read_text())["policies"][0]
    assert pol["safety_mean"] == pytest.approx(want.mean(), abs=1e-12)
    assert pol["safety_frac_safe"] == pytest.approx(np.mean(want >= 0), abs=1e-15)  # T defaults to 0


def test_eval_safety_bad_spec_and_threshold(models, tmp_path):
    base = ["eval", "--model", models / "a", "--ref", models / "a", "--data", models / "prompts.txt", "--n", 2]
    r = fdpo(*base, "--safety", "nonsense", check=False)
    assert r.returncode == 1 and "--safety" in r.stderr and "nonsense" in r.stderr, r.stderr
    r = fdpo(*base, "--safety", "length", "--safety-threshold", "nan", check=False)
    assert r.returncode == 1 and "--safety-threshold" in r.stderr, r.stderr
