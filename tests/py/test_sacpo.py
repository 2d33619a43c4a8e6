"""fdpo sacpo: each stage is exactly the f-DPO run DESIGN §4 prescribes (reward with beta,
then safety with beta/lambda from the reward model, or the other order), so its models are
byte-identical to those of the plain `fdpo dpo` runs it wraps; P-SACPO merges equal
`fdpo merge` (and numpy); stages done before are skipped on a rerun; bad plans are refused."""
import json
import os
import random

import numpy as np
import pytest

from dpo_common import fdpo, save_byte_tokenizer, write_jsonl
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

TINY = dict(vocab_size=257, n_positions=48, n_embd=32, n_layer=2, n_head=4)
COMMON = ["--threads", 1, "--batch-size", 8, "--steps", 3, "--lr", "1e-3", "--eval-fraction", 0, "--quiet"]


def pairs(n, seed, good, bad):
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choice("abcdefgh") for _ in range(4)) + ":",
             "chosen": "".join(rng.choice(good) for _ in range(5)),
             "rejected": "".join(rng.choice(bad) for _ in range(rng.randint(3, 7)))} for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sacpo")
    GPT2(**TINY, seed=3).save_hf(str(tmp / "base"))
    save_byte_tokenizer(str(tmp / "base"))
    write_jsonl(tmp / "reward.jsonl", pairs(64, 0, "aeiou", "xyzqw"))   # helpful: vowels
    write_jsonl(tmp / "safety.jsonl", pairs(64, 1, "mnlr ", "!#$%&"))   # safe: no symbols
    return tmp


def weights(d):
    return (d / "model.safetensors").read_bytes()


def dpo(data, init, dataset, beta, out, *extra):
    fdpo("dpo", "--model", init, "--data", data / dataset, "--beta", beta, "--out", out, *COMMON, *extra)


def sacpo(data, out, *extra, check=True):
    return fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                "--safety-data", data / "safety.jsonl", "--beta", "0.2", "--out", out, *COMMON, *extra, check=check)


@pytest.mark.parametrize("div", ["rkl", "js"])
def test_reward_first_stages_equal_plain_dpo_runs(data, tmp_path, div):
    sacpo(data, tmp_path / "s", "--lambda", "0.5,2", "--divergence", div)
    dpo(data, data / "base", "reward.jsonl", 0.2, tmp_path / "r", "--divergence", div)
    assert weights(tmp_path / "s" / "reward") == weights(tmp_path / "r")
    for lam in (0.5, 2):
        dpo(data, tmp_path / "r", "safety.jsonl", 0.2 / lam, tmp_path / f"m{lam}", "--divergence", div)
        assert weights(tmp_path / "s" / f"lambda-{lam:g}") == weights(tmp_path / f"m{lam}")
    assert weights(tmp_path / "s" / "lambda-0.5") != weights(tmp_path / "s" / "lambda-2")
    state = json.loads((tmp_path / "s" / "sacpo.json").read_text())
    assert state["plan"]["lambdas"] == [0.5, 2] and len(state["stages_done"]) == 3


def test_safety_first_stages_equal_plain_dpo_runs(data, tmp_path):
    sacpo(data, tmp_path / "s", "--lambda", "4", "--order", "safety-first")
    dpo(data, data / "base", "safety.jsonl", 0.2 / 4, tmp_path / "a")
    dpo(data, tmp_path / "a", "reward.jsonl", 0.2, tmp_path / "b")
    assert weights(tmp_path / "s" / "safety-lambda-4") == weights(tmp_path / "a")
    assert weights(tmp_path / "s" / "lambda-4") == weights(tmp_path / "b")


def test_merges_equal_fdpo_merge_and_numpy(data, tmp_path):
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1,3", "--merge", "0.25,0.5")
    a, b = st.load(str(s / "lambda-1" / "model.safetensors"))[0], st.load(str(s / "lambda-3" / "model.safetensors"))[0]
    for w in (0.25, 0.5):
        m = s / f"merge-1-3-w{w:g}"
        got = st.load(str(m / "model.safetensors"))[0]
        for k in got:
            ref = ((1 - w) * a[k].astype(np.float64) + w * b[k].astype(np.float64)).astype(np.float32)
            assert np.array_equal(got[k], ref), k
        fdpo("merge", "--model", s / "lambda-1", "--model", s / "lambda-3", "--weight", f"{1 - w},{w}", "--out", tmp_path / f"fm{w}")
        assert weights(m) == weights(tmp_path / f"fm{w}")
        assert fdpo("info", m).returncode == 0


def test_rerun_skips_done_stages_and_adds_lambdas(data, tmp_path):
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1")
    before = weights(s / "lambda-1")
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
             data / "safety.jsonl", "--beta", "0.2", "--out", s, "--lambda", "1,2", *COMMON[:-1])
    assert "reward stage: done before" in r.stderr and "safety stage (lambda 1): done before" in r.stderr
    assert weights(s / "lambda-1") == before
    dpo(data, s / "reward", "safety.jsonl", 0.1, tmp_path / "m2")
    assert weights(s / "lambda-2") == weights(tmp_path / "m2")


@pytest.mark.parametrize("extra,msg", [
    (["--lambda", "0"], "--lambda: 0 must be a positive number"),
    (["--lambda", "2,1"], "--lambda: the list must be strictly increasing"),
    (["--lambda", "1,x"], "--lambda: 'x' is not a finite number"),
    (["--lambda", "1", "--merge", "0.5"], "--merge: needs two or more --lambda"),
    (["--lambda", "1,2", "--merge", "1.5"], "--merge: weight 1.5 must be in (0, 1)"),
    (["--lambda", "1", "--loss", "simpo"], "--loss simpo"),
    (["--lambda", "1", "--order", "later"], "--order: 'later'"),
    ([], "--lambda: required"),
])
def test_bad_plans_are_refused(data, tmp_path, extra, msg):
    r = sacpo(data, tmp_path / "s", *extra, check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr


def test_another_plan_in_the_same_out_is_refused(data, tmp_path):
    sacpo(data, tmp_path / "s", "--lambda", "1")
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
             data / "safety.jsonl", "--beta", "0.3", "--out", tmp_path / "s", "--lambda", "1", *COMMON, check=False)
    assert r.returncode != 0 and "holds a sacpo run with another" in r.stderr, r.stderr


def test_missing_data_is_named(data, tmp_path):
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--lambda", "1",
             "--out", tmp_path / "s", *COMMON, check=False)
    assert r.returncode != 0 and "--safety-data: required" in r.stderr
