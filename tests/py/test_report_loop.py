"""fdpo report draws the loop's runs (issue #11 item 5): tiny runs of fdpo rm, fdpo online
(fixed and iterative reference, rounds and --mode step) and fdpo rl are made here with the CLI,
and every point of their panels in the page's embedded chart JSON is compared with the
run's metrics.jsonl read here. The run kinds come from training_state.json (rm), the round
directories (online) or the metrics keys (rl, online --mode step)."""
import json
import os
import random
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_generate import make_model  # noqa: E402
from test_report import CONSOLE_ERROR, body_attr, chromium, parse, requires_chromium  # noqa: E402

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
SAMPLING = ["--max-new-tokens", 8, "--threads", 1, "--quiet"]


def fdpo(*args):
    r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop")
    make_model(d / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    rng = random.Random(0)
    with open(d / "pairs.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"p{i}:", "chosen": "a" * rng.randint(5, 9),
                                "rejected": "b" * rng.randint(1, 3)}) + "\n")
    (d / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    fdpo("rm", "--model", d / "model", "--data", d / "pairs.jsonl", "--out", d / "rm", "--steps", 6, "--batch-size", 8,
         "--eval-every", 2, "--lr", "1e-3", "--threads", 1, "--quiet")
    online = ["online", "--model", d / "model", "--data", d / "prompts.txt", "--reward", "length",
              "--prompts-per-round", 4, "--n", 4, "--lr", "1e-2", *SAMPLING]
    fdpo(*online, "--out", d / "online", "--rounds", 3, "--steps", 2)
    fdpo(*online, "--out", d / "iterative", "--rounds", 3, "--steps", 2, "--ref-update", "round")
    fdpo(*online, "--out", d / "online_step", "--mode", "step", "--steps", 3)
    fdpo("rl", "--model", d / "model", "--data", d / "prompts.txt", "--reward", "length", "--out", d / "rl",
         "--steps", 4, "--prompts-per-step", 2, "--n", 3, "--lr", "1e-3", *SAMPLING)
    fdpo("dpo", "--model", d / "model", "--data", d / "pairs.jsonl", "--out", d / "dpo", "--steps", 2, "--threads", 1,
         "--quiet")
    # the same online metrics without the round directories: recognised from the keys alone;
    # written as an fdpo before wave 44 wrote them, the margin under its old name
    # pairs/reward_gap (TRL OnlineDPOTrainer's objective/scores_margin now), which is still read
    (d / "bare").mkdir()
    (d / "bare" / "metrics.jsonl").write_text((d / "online" / "metrics.jsonl").read_text()
                                              .replace('"objective/scores_margin"', '"pairs/reward_gap"'))
    names = ["rm", "online", "iterative", "online_step", "rl", "dpo", "bare"]
    fdpo("report", *[d / n for n in names], "--out", d / "report.html")
    text, page, charts = parse(d / "report.html")
    return d, text, charts


def rows(d, name):
    return [json.loads(l) for l in open(d / name / "metrics.jsonl")]


def chart(charts, title):
    hits = [c for c in charts if c["title"] == title]
    assert len(hits) == 1, [c["title"] for c in charts]
    return hits[0]


def series(c, label):
    hits = [s for s in c["series"] if s["label"] == label]
    assert len(hits) == 1, (label, [s["label"] for s in c["series"]])
    return hits[0]


# rl runs keep a training_state.json, so their label carries the divergence and beta
RL = "rl (rkl, \u03b2=0.05)"


def expect(d, name, x, key):
    return [[r[x], r[key]] for r in rows(d, name) if key in r and x in r]


def same(points, want):
    """The page prints 15 significant digits (cJSON): equal to that, point for point."""
    assert len(points) == len(want) > 0
    for p, w in zip(points, want):
        assert p[0] == w[0] and p[1] == pytest.approx(w[1], rel=1e-14, abs=1e-300), (p, w)
    return True


def test_runs_table_names_each_kind(runs):
    _, text, _ = runs
    table = re.search(r'<table id="runs-table">(.*?)</table>', text, re.S).group(1)
    kinds = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]:
        cells = [re.sub("<[^>]*>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        kinds[cells[0]] = cells[1]
    assert kinds == {"rm": "rm", "online": "online (fixed ref)", "iterative": "online (iterative)",
                     "online_step": "online (per step)", "rl": "rl", "dpo": "dpo", "bare": "online"}
    assert '<h2 id="loop">' in text and 'href="#loop"' in text


def test_reward_model_panels_carry_the_metrics(runs):
    d, _, charts = runs
    for title, key in (("Reward model: pair accuracy", "accuracy"), ("Reward model: loss", "loss"),
                       ("Reward model: margin", "margin")):
        c = chart(charts, title)
        assert [s["label"] for s in c["series"]] == ["rm", "rm (held out)"]  # only the rm run
        solid, dashed = series(c, "rm"), series(c, "rm (held out)")
        assert same(solid["points"], expect(d, "rm", "step", key)) and not solid["dash"]
        assert same(dashed["points"], expect(d, "rm", "step", "eval_" + key)) and dashed["dash"]
        assert len(solid["points"]) == 6 and len(dashed["points"]) >= 3


def test_online_round_panels_carry_the_metrics_and_the_reference_mode(runs):
    d, _, charts = runs
    fixed, it = "online (rkl, \u03b2=0.1) (fixed ref)", "iterative (rkl, \u03b2=0.1) (iterative)"
    for title, key in (("Online rounds: reward", "objective/scores"), ("Online rounds: KL to the reference", "objective/kl"),
                       ("Online rounds: entropy", "objective/entropy"), ("Online rounds: pairs", "pairs"),
                       ("Online rounds: scores margin of the pairs", "objective/scores_margin")):
        c = chart(charts, title)
        assert c["x"]["title"] == "round"
        assert same(series(c, fixed)["points"], expect(d, "online", "round", key))
        assert same(series(c, it)["points"], expect(d, "iterative", "round", key))
        old = "pairs/reward_gap" if key == "objective/scores_margin" else key
        assert same(series(c, "bare")["points"], expect(d, "bare", "round", old))
        assert len(series(c, fixed)["points"]) == 3
    kl = chart(charts, "Online rounds: KL to the reference")
    # iterative: every round samples the policy that is its own reference
    assert [p[1] for p in series(kl, it)["points"]] == [0, 0, 0]
    assert series(kl, fixed)["points"][2][1] > 0


def test_rl_step_panels_carry_the_metrics(runs):
    d, _, charts = runs
    c = chart(charts, "RL steps: objective")
    assert same(series(c, RL)["points"], expect(d, "rl", "step", "objective/rlhf_reward"))
    assert same(series(c, RL + " objective/scores")["points"], expect(d, "rl", "step", "objective/scores"))
    assert series(c, RL + " objective/scores")["dash"]
    for title, key in (("RL steps: KL to the reference", "objective/kl"), ("RL steps: entropy", "objective/entropy"),
                       ("RL steps: loss", "loss")):
        c = chart(charts, title)
        assert same(series(c, RL)["points"], expect(d, "rl", "step", key))
        assert len(series(c, RL)["points"]) == 4
        # online --mode step logs the same names per step
        step = [s for s in c["series"] if s["label"].startswith("online_step")]
        assert len(step) == 1 and step[0]["label"].endswith("(per step)")
        assert same(step[0]["points"], expect(d, "online_step", "step", key))
    # a DPO run is not a loop run
    assert not any(s["label"].startswith("dpo") for c in charts if c["title"].startswith(("RL", "Online", "Reward model"))
                   for s in c["series"])


@requires_chromium
def test_browser_draws_every_loop_chart(runs):
    d, _, charts = runs
    r = chromium(["--virtual-time-budget=10000", "--dump-dom", "file://" + str(d / "report.html")])
    assert body_attr(r.stdout, "data-charts-error") is None, body_attr(r.stdout, "data-charts-error")
    assert body_attr(r.stdout, "data-charts-ready") == str(len(charts)), r.stderr[-3000:]
    assert not [line for line in r.stderr.splitlines() if CONSOLE_ERROR.search(line)]
