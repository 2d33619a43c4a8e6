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
    ("good 1\nbad one\n", 2, "weight of 'bad': 'one' is not a finite number"),
    ("good 1\nbad 0x10\n", 2, "weight of 'bad': '0x10' is not a decimal number"),   # strtod read it as 16
    ("good 1e-400\n", 1, "weight of 'good': '1e-400' is out of range (it rounds to 0"),
    ("x 1\ngood 'bad 5\n", 2, "''bad' starts or ends with an apostrophe or hyphen"),   # a phrase word that never matches
    ("x 1\ngood- bad 5\n", 2, "'good-' starts or ends"),
    ("good 1\n\n# c\nGOOD 2\n", 4, "duplicate word 'good'"),
    ("good nan\n", 1, "weight of 'good': 'nan' is not a finite number"),
    ("good inf\n", 1, "'inf' is not a finite number"),
    ("good 1e999\n", 1, "'1e999' is not a finite number"),
    ("go0d 1\n", 1, "'0'"),
    ("-good 1\n", 1, "apostrophe or hyphen"),
])
def test_lexicon_malformed_lines_name_file_and_line(tmp_path, body, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(body)
    r = score_file(tmp_path, f"lexicon:{p}", ["good"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{p}:{line}:" in r.stderr and what in r.stderr, r.stderr


def test_lexicon_byte_order_mark_and_nul(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfgood 2\n")
    r = score_file(tmp_path, f"lexicon:{tmp_path / 'bom.txt'}", ["good good"])
    assert r.returncode == 0 and float(r.stdout) == 4.0, r.stderr
    (tmp_path / "nul.txt").write_bytes(b"good 2\n\0bad -1\n")
    r = score_file(tmp_path, f"lexicon:{tmp_path / 'nul.txt'}", ["good"])
    assert r.returncode == 1 and "nul.txt" in r.stderr and "NUL" in r.stderr, r.stderr


@pytest.mark.parametrize("spec", ["lexicon", "words"])
@pytest.mark.parametrize("body", [
    b"good 2\ncaf\xe9 3\n",                  # a Latin-1 cafe: scored text is UTF-8, so it never matched
    b"# \xc3\xa9t\xc3\xa9\ngood 1\n\xff\xfe 5\n",   # valid UTF-8 in a comment, then no text at all
    b"\xef\xbb\xbfgood 1\nbad \xed\xa0\xbd 2\n",   # an encoded surrogate after a byte order mark
])
def test_lexicon_and_words_refuse_invalid_utf8_by_file_line_column(tmp_path, spec, body):
    """lexicon:FILE and words:FILE took a key of invalid UTF-8 without a word (hunt of wave 46); it
    is refused as --lexicon refuses it. The place is Python's: where bytes.decode('utf-8') stops."""
    if spec == "words":
        body = b"\n".join(l.rsplit(b" ", 1)[0] if not l.startswith(b"#") else l for l in body.split(b"\n"))
    p = tmp_path / "bad.txt"
    p.write_bytes(body)
    with pytest.raises(UnicodeDecodeError) as e:
        body.decode("utf-8")
    at = e.value.start
    line = body.count(b"\n", 0, at) + 1
    col = at - (body.rfind(b"\n", 0, at) + 1) + 1
    r = score_file(tmp_path, f"{spec}:{p}", ["caf\u00e9 good"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{p}:{line}: invalid UTF-8 (byte 0x{body[at]:02X} at column {col})" in r.stderr, r.stderr


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


# ---- the behavioural proof of issue #12: SACPO's lambda moves E[g] ----
# A byte-level GPT-2 pretrained for 300 steps on sentences of helpful, harmful and neutral
# words; reward r = number of helpful words, safety g = -(number of harmful words), both as
# lexicon:FILE specs; preference pairs ranked by the same counts (computed here). SACPO at
# lambda = 0.02, 0.2, 2 (safety stage beta / lambda) with P-SACPO merges at w = 0.5, then
# fdpo eval --reward --safety on 512 samples each. Measured (seed 0): E[g] = -0.299 +- 0.024,
# -0.270 +- 0.023, -0.186 +- 0.018 (reward model -0.791); merges -0.279, -0.225.
GOOD, HARM, NEUTRAL = ["good", "nice", "kind", "happy"], ["harm", "kill", "hurt", "hate"], \
    ["the", "cat", "dog", "sat", "ran", "on", "mat", "big"]
LAMBDAS = ["0.02", "0.2", "2"]
R_LEX = {w.encode(): 1.0 for w in GOOD}
G_LEX = {w.encode(): -1.0 for w in HARM}


def test_sacpo_lambda_raises_safety_and_merges_lie_between(tmp_path):
    rng = random.Random(0)

    def sentence():
        return " ".join(rng.choice(rng.choice([GOOD, HARM, HARM, NEUTRAL])) for _ in range(rng.randint(5, 9)))

    def r_of(s): return sum(w in GOOD for w in s.split())
    def g_of(s): return -sum(w in HARM for w in s.split())

    def ranked_pairs(n, key):
        out = []
        while len(out) < n:
            a, b = " " + sentence(), " " + sentence()
            if key(a) != key(b):
                hi, lo = (a, b) if key(a) > key(b) else (b, a)
                out.append({"prompt": "the", "chosen": hi, "rejected": lo})
        return out

    (tmp_path / "text.txt").write_text("<|endoftext|>".join(sentence() for _ in range(3000)))
    (tmp_path / "reward.txt").write_text("".join(f"{w}\t1\n" for w in GOOD))
    (tmp_path / "safety.txt").write_text("".join(f"{w}\t-1\n" for w in HARM))
    for name, key in (("rpairs", r_of), ("spairs", g_of)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in ranked_pairs(256, key)))
    (tmp_path / "prompts.txt").write_text("the\n")
    fdpo("pretrain", "--out", tmp_path / "base", "--data", tmp_path / "text.txt", "--n-layer", 2, "--n-head", 2,
         "--n-embd", 32, "--n-positions", 64, "--seq-len", 48, "--batch-size", 16, "--steps", 300, "--lr", "3e-3",
         "--warmup-steps", 10, "--eval-every", 0, "--threads", 1, "--quiet")
    s = tmp_path / "s"
    fdpo("sacpo", "--model", tmp_path / "base", "--reward-data", tmp_path / "rpairs.jsonl",
         "--safety-data", tmp_path / "spairs.jsonl", "--lambda", ",".join(LAMBDAS), "--merge", "0.5",
         "--beta", "0.5", "--out", s, "--steps", 10, "--lr", "3e-4", "--batch-size", 16, "--eval-fraction", 0,
         "--eval-every", 0, "--threads", 1, "--quiet")
    names = ["reward"] + [f"lambda-{l}" for l in LAMBDAS] + \
        [f"merge-{LAMBDAS[i]}-{LAMBDAS[i + 1]}-w0.5" for i in range(len(LAMBDAS) - 1)]
    args = [a for n in names for a in ("--model", s / n)]
    out, smp = tmp_path / "e.json", tmp_path / "smp.jsonl"
    fdpo("eval", *args, "--ref", s / "reward", "--data", tmp_path / "prompts.txt", "--n", 512,
         "--max-new-tokens", 32, "--seed", 1, "--threads", 1, "--divergences", "rkl",
         "--reward", f"lexicon:{tmp_path / 'reward.txt'}", "--safety", f"lexicon:{tmp_path / 'safety.txt'}",
         "--out", out, "--samples-out", smp)
    # E[r], E[g] and their SEs from the samples, rescored here with the Python word-rule scorer
    rows = read_samples(smp)
    stats = {}
    for n in names:
        comp = [x["completion"] for x in rows if x["policy"] == str(s / n)]
        r = np.array([lexicon_score(R_LEX, c.encode("utf-8", "surrogateescape")) for c in comp])
        g = np.array([lexicon_score(G_LEX, c.encode("utf-8", "surrogateescape")) for c in comp])
        stats[n] = (r.mean(), r.std(ddof=1) / math.sqrt(len(r)), g.mean(), g.std(ddof=1) / math.sqrt(len(g)))
        print(f"{n:24s} E[r] {stats[n][0]:.3f} +- {stats[n][1]:.3f}   E[g] {stats[n][2]:.3f} +- {stats[n][3]:.3f}")
    for p in json.loads(out.read_text())["policies"]:
        n = os.path.basename(p["name"])
        assert p["reward_mean"] == pytest.approx(stats[n][0], abs=1e-12)
        assert p["safety_mean"] == pytest.approx(stats[n][2], abs=1e-12)
    lo, hi = stats[f"lambda-{LAMBDAS[0]}"], stats[f"lambda-{LAMBDAS[-1]}"]
    # the safety stage raises E[g] above the reward model's at every lambda
    for l in LAMBDAS:
        a, b = stats[f"lambda-{l}"], stats["reward"]
        assert a[2] - b[2] > 3 * math.hypot(a[3], b[3]), l
    # E[g] rises with lambda: the largest exceeds the smallest by more than 3 standard errors
    assert hi[2] - lo[2] > 3 * math.hypot(hi[3], lo[3])
    # a merge lies between its two models in E[g] and E[r], up to 3 standard errors
    for i in range(len(LAMBDAS) - 1):
        a, b = stats[f"lambda-{LAMBDAS[i]}"], stats[f"lambda-{LAMBDAS[i + 1]}"]
        m = stats[f"merge-{LAMBDAS[i]}-{LAMBDAS[i + 1]}-w0.5"]
        for k in (0, 2):
            tol = 3 * max(a[k + 1], b[k + 1], m[k + 1])
            assert min(a[k], b[k]) - tol <= m[k] <= max(a[k], b[k]) + tol, (i, k)
