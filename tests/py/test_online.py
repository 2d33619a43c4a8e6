"""fdpo online: online / iterative f-DPO rounds on a tiny byte-level GPT-2 with a synthetic
reward (the number of ASCII lowercase letters in the completion, computed by a `cmd:` program
written here). The held-out reward is measured in this file from `fdpo generate` samples, not
from fdpo's metrics; the comparison is reported in standard errors."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_generate import make_model  # noqa: E402  (the reference GPT-2 writer)
from test_pairs import _live_members  # noqa: E402  (a process group's running members, from /proc)

HERE = os.path.dirname(__file__)
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
TRL_KEYS = ["objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward",
            "objective/non_score_reward", "val/contain_eos_token", "val/num_completion_tokens"]

LETTERS = """import json, sys
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(sum("a" <= ch <= "z" for ch in c))
"""
# fails on its second call (the second round's scoring)
FAILS_LATER = """import json, os, sys
count = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
if n >= 1:
    sys.stderr.write("reward model crashed\\n")
    sys.exit(3)
for line in sys.stdin.buffer:
    print(1.0 if "a" in json.loads(line.decode("utf-8", "replace"))["completion"] else 0.0)
"""


def letters(text):
    return sum("a" <= ch <= "z" for ch in text)


def fdpo(*args, check=True):
    r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("online")
    make_model(d / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (d / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(40)))
    (d / "heldout.txt").write_text("".join(f"held out {i}:\n" for i in range(20)))
    (d / "letters.py").write_text(LETTERS)
    return d


def online(setup, out, *extra, reward=None, check=True):
    reward = reward or f"cmd:/usr/bin/python3 {setup / 'letters.py'}"
    # each round's f-DPO batching (step mode refuses it: its step is one f-DPO step)
    rounds = [] if "step" in map(str, extra) else ["--batch-size", 8, "--epochs", 4]
    return fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward", reward,
                "--out", out, "--prompts-per-round", 16, "--n", 4, "--max-new-tokens", 16, "--lr", "1e-2",
                *rounds, "--beta", 0.1, *extra, check=check)


def heldout_rewards(setup, model, tmp_path):
    out = tmp_path / "g.jsonl"
    fdpo("generate", "--model", model, "--data", setup / "heldout.txt", "--n", 8, "--max-new-tokens", 16,
         "--seed", 7, "--out", out)
    return np.array([letters(json.loads(l.decode("utf-8", "replace"))["completion"]) for l in open(out, "rb")])


def metrics(out):
    return [json.loads(l) for l in open(out / "metrics.jsonl")]


def test_three_rounds_raise_heldout_reward(setup, tmp_path):
    out = tmp_path / "run"
    online(setup, out, "--rounds", 3)
    m = metrics(out)
    assert [x["round"] for x in m] == [0, 1, 2]
    for x in m:
        assert all(k in x for k in TRL_KEYS)
        assert x["pairs"] >= 1 and x["objective/scores_margin"] > 0 and "pairs/reward_gap" not in x
        assert x["objective/rlhf_reward"] == pytest.approx(x["objective/scores"] - 0.1 * x["objective/kl"])
    assert m[0]["objective/kl"] == 0  # round 0 samples the reference itself
    assert m[2]["objective/kl"] > 0
    for k in range(3):
        assert (out / f"round-{k}" / "model.safetensors").exists()
        rows = [json.loads(l) for l in open(out / f"round-{k}.pairs.jsonl")]
        assert rows and all(r["chosen_reward"] > r["rejected_reward"] for r in rows)
        # the pair labels agree with the reward program applied here
        assert all(letters(r["chosen"]) == r["chosen_reward"] for r in rows)
    before = heldout_rewards(setup, setup / "model", tmp_path)
    after = heldout_rewards(setup, out / "round-2", tmp_path)
    diff = after.mean() - before.mean()
    se = math.sqrt(before.var(ddof=1) / len(before) + after.var(ddof=1) / len(after))
    print(f"held-out reward {before.mean():.3f} -> {after.mean():.3f}: +{diff:.3f} = {diff / se:.1f} SE")
    assert diff > 3 * se


def test_iterative_reference_is_the_previous_policy(setup, tmp_path):
    # with --ref-update round every round samples the policy that is also its reference: KL 0
    out = tmp_path / "iter"
    online(setup, out, "--rounds", 2, "--ref-update", "round")
    assert [x["objective/kl"] for x in metrics(out)] == [0, 0]


def test_iterative_round_0_uses_the_given_ref(setup, tmp_path):
    """--ref R with --ref-update round: round 0 has no previous round, so R is its reference
    (as --ref-update never's round 0); it scored round 0 against the policy itself (KL 0, the
    weights of a run without --ref) while training_state.json recorded R."""
    make_model(tmp_path / "R", 257, seed=5, n_positions=64, byte_tokenizer=True)
    online(setup, tmp_path / "iter", "--rounds", 1, "--ref", tmp_path / "R", "--ref-update", "round")
    online(setup, tmp_path / "fixed", "--rounds", 1, "--ref", tmp_path / "R")
    online(setup, tmp_path / "none", "--rounds", 1, "--ref-update", "round")
    weights = lambda d: (d / "round-0" / "model.safetensors").read_bytes()
    assert weights(tmp_path / "iter") == weights(tmp_path / "fixed") != weights(tmp_path / "none")
    assert metrics(tmp_path / "iter")[0]["objective/kl"] == metrics(tmp_path / "fixed")[0]["objective/kl"] != 0


def test_all_bt_pairs(setup, tmp_path):
    # --pairing all-bt: every prompt's completions paired off disjointly (as `fdpo pairs`), labels
    # drawn from Bradley-Terry, ties skipped; rewards are the program's
    out = tmp_path / "bt"
    online(setup, out, "--rounds", 1, "--pairing", "all-bt")
    rows = [json.loads(l) for l in open(out / "round-0.pairs.jsonl")]
    per_prompt = {}
    for r in rows:
        per_prompt[r["prompt"]] = per_prompt.get(r["prompt"], 0) + 1
        assert letters(r["chosen"]) == r["chosen_reward"] and letters(r["rejected"]) == r["rejected_reward"]
        assert r["chosen_reward"] != r["rejected_reward"]
    assert len(per_prompt) > 1 and all(c <= 2 for c in per_prompt.values())  # n = 4 -> at most 2 disjoint pairs
    assert metrics(out)[0]["pairs"] == len(rows)


@pytest.mark.parametrize("mode", [["--rounds", 1], ["--mode", "step", "--steps", 2]])
def test_a_run_that_fails_at_its_start_leaves_no_files(setup, tmp_path, mode):
    """The reward program fails at once (round 0, step 0: after OUT was made): no empty
    metrics.jsonl and, in rounds mode, no online.json are left in OUT (they were), nor the
    empty OUT itself; the same command with the reward mended then runs without --overwrite
    or --resume."""
    out = tmp_path / "o"
    r = online(setup, out, *mode, reward="cmd:exit 3", check=False)
    assert r.returncode != 0 and "exited with status 3" in r.stderr, r.stderr
    assert not out.exists() and not (tmp_path / "o.lock").exists()
    online(setup, out, *mode)
    assert len(metrics(out)) >= 1 and (out / "online.json").exists() == (mode[0] == "--rounds")


def test_failing_reward_keeps_the_last_round_and_resume_continues(setup, tmp_path):
    out = tmp_path / "fail"
    (tmp_path / "fails.py").write_text(FAILS_LATER)
    r = online(setup, out, "--rounds", 3, reward=f"cmd:/usr/bin/python3 {tmp_path / 'fails.py'}", check=False)
    assert r.returncode != 0
    assert "round 1" in r.stderr and "exited with status 3" in r.stderr and "reward model crashed" in r.stderr
    assert not (out / "round-1").exists() and not (out / "round-1.partial").exists()
    assert fdpo("info", out / "round-0").returncode == 0  # the completed round is a loadable checkpoint
    assert len(metrics(out)) == 1
    # the completed round is byte-identical to the same round of a run whose reward never fails
    # (the same rewards: FAILS_LATER's first call)
    (tmp_path / "ok.py").write_text(FAILS_LATER.replace("if n >= 1:", "if False:"))
    ok = tmp_path / "ok"
    online(setup, ok, "--rounds", 1, reward=f"cmd:/usr/bin/python3 {tmp_path / 'ok.py'}")
    files = ["round-0/model.safetensors", "round-0/config.json", "round-0.pairs.jsonl"]
    round0 = {f: (out / f).read_bytes() for f in files}
    assert round0 == {f: (ok / f).read_bytes() for f in files}
    # resuming with the reward still failing fails in round 1 again and leaves round 0 as it was
    r = online(setup, out, "--rounds", 3, "--resume", reward=f"cmd:/usr/bin/python3 {tmp_path / 'fails.py'}", check=False)
    assert r.returncode != 0 and "round 1" in r.stderr
    assert {f: (out / f).read_bytes() for f in files} == round0 and len(metrics(out)) == 1
    # a fresh run into the same directory is refused; --resume continues after round 0
    r = online(setup, out, "--rounds", 2, check=False)
    assert r.returncode != 0 and "--resume" in r.stderr
    # a crash after round 1's metrics line was written but before round-1 was renamed into
    # place leaves a line for a round that is not complete: the resume drops it
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "round": 1, "stale": True}) + "\n")
    # the reward program mended in place (--reward is a fixed flag: the same spec resumes;
    # another is refused, OUT/online.json)
    r = online(setup, out, "--rounds", 2, "--resume", check=False)
    assert r.returncode != 0 and "--reward: cmd:" in r.stderr and "online.json" in r.stderr, r.stderr
    (tmp_path / "fails.py").write_text(FAILS_LATER.replace("if n >= 1:", "if False:"))
    online(setup, out, "--rounds", 2, "--resume", reward=f"cmd:/usr/bin/python3 {tmp_path / 'fails.py'}")
    assert [x["round"] for x in metrics(out)] == [0, 1] and not any("stale" in x for x in metrics(out))
    assert [x["step"] for x in metrics(out)] == [1, 2]
    assert (out / "round-1" / "model.safetensors").exists()


@pytest.mark.parametrize("when", ["reward", "training", "training-1"])
def test_sigint_in_rounds_mode_keeps_the_complete_rounds_and_says_so(setup, tmp_path, when):
    """SIGINT to fdpo alone (as a scheduler or `kill` sends it) in rounds mode. While the reward
    program of round 1 runs, its process group is killed and the round fails "interrupted"
    (exit 1; the program outlived fdpo before, in a group of its own). While round 0 trains,
    fdpo ends by the signal and its last line says what is kept and how to go on (it ended
    without a word): with round 0 complete (training-1), --resume; before it, that there is
    nothing to resume (it named --resume, which then refused the directory)."""
    import signal
    import time
    calls, pgid_file, trained = tmp_path / "calls", tmp_path / "pgid", tmp_path / "scored"
    hang = f"cut -d' ' -f5 /proc/$$/stat > {pgid_file}.tmp && mv {pgid_file}.tmp {pgid_file}; sleep 60"
    prog = tmp_path / "reward.sh"
    # training-1: round 0's rewards all tie (no pairs: it completes untrained), round 1 trains
    first = f"if [ \"$n\" = 0 ]; then sed 's/.*/0/'; exit 0; fi\n" if when == "training-1" else \
            f"if [ \"$n\" -ge 1 ]; then {hang}; fi\n"
    prog.write_text(f"#!/bin/sh\nn=$(cat {calls} 2>/dev/null || echo 0); echo $((n + 1)) > {calls}\n"
                    f"{first}/usr/bin/python3 {setup / 'letters.py'}\ntouch {trained}\n")
    prog.chmod(0o755)
    out = tmp_path / "o"
    epochs = 4 if when == "reward" else 2000   # "training": round 0 trains far longer than the test waits
    p = subprocess.Popen([str(a) for a in [FDPO, "online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward",
                          f"cmd:{prog}", "--out", out, "--prompts-per-round", 16, "--n", 4, "--max-new-tokens", 16,
                          "--lr", "1e-2", "--batch-size", 8, "--epochs", epochs, "--beta", 0.1, "--rounds", 3,
                          "--threads", 1, "--quiet"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    wait_for = pgid_file if when == "reward" else trained
    while not wait_for.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    if when != "reward":
        time.sleep(0.5)   # the program has ended; fdpo is past its output, training round 0 (or 1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    note = f"fdpo online: interrupted: the complete rounds in {out} are kept (the same command with --resume " \
           "continues after the last one)\n"
    if when == "reward":
        pgid = int(pgid_file.read_text())
        assert p.returncode == 1 and "round 1" in err and "interrupted" in err and not err.endswith(note), err
        assert (out / "round-0").is_dir() and not (out / "round-1").exists()
        deadline = time.monotonic() + 5
        while _live_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _live_members(pgid) == []
    elif when == "training-1":
        assert p.returncode == -signal.SIGINT and err.endswith(note), err
        assert (out / "round-0").is_dir() and not (out / "round-1").exists()
    else:
        # round 0 was not complete: nothing for --resume, which refuses such a directory (the
        # line named "--resume" here too)
        none = f"fdpo online: interrupted before round 0 completed: {out} holds no round to resume (the same command " \
               "without --resume starts the run again)\n"
        assert p.returncode == -signal.SIGINT and err.endswith(none), err
        assert not (out / "round-0").exists()


@pytest.mark.parametrize("args,needle", [
    (["--ref-update", "sometimes"], "--ref-update"),
    (["--n", "1"], "--n"),
    (["--rounds", "0"], "--rounds"),
    (["--divergence", "tv"], "--divergence tv"),
    (["--pairing", "all"], "--pairing: 'all' is not best-worst or all-bt"),
    (["--pairing", "all-bt", "--bt-scale", "0"], "--bt-scale"),
    (["--ref-logps", "some"], "--ref-logps: 'some' is not pairs or all"),
    (["--loss", "simpo"], "--loss simpo: online f-DPO needs a reference"),
    (["--stop-at", "1"], "--stop-at: --mode step only (rounds mode resumes after the last complete round)"),
    (["--overwrite"], "--overwrite: --mode step only (rounds mode resumes after the last complete round)"),
    (["--save-every", "1"], "--save-every: --mode step only (rounds mode saves every round, whole)"),   # it was ignored
    (["--resume"], "holds no completed round (nothing to resume; drop --resume to start the run)"),   # it started afresh
    # greedy decoding gives a prompt's --n completions one text: no pair could form, and the run
    # "succeeded" with the initial weights (step mode without a word)
    *[([*mode, *greedy], f"fdpo online: --{greedy[0][2:]} {greedy[1]}: online pairs need different completions of a "
       "prompt, and greedy decoding gives all --n 4 the same text (no pair could ever form)")
      for mode in ([], ["--mode", "step", "--steps", "2"]) for greedy in (["--temperature", "0"], ["--top-k", "1"])],
    # a top-p at or below 1/K keeps only the most probable of K tokens (it holds >= 1/K of their
    # mass): greedy again, with K the vocabulary's 257 (known once the model is read) or --top-k's
    *[([*mode, *greedy], f"fdpo online: --top-p {greedy[-1]}: online pairs need different completions of a prompt, and "
       f"a top-p at or below 1/{k} ({of}) keeps only the most probable token, so greedy decoding gives all --n 4 the "
       f"same text (no pair could ever form); sample with --top-p > 1/{k}\n")
      for mode in ([], ["--mode", "step", "--steps", "2"])
      for greedy, k, of in ((["--top-p", "0.001"], 257, "the vocabulary's 257 tokens"),
                            (["--top-p", str(1 / 257)], 257, "the vocabulary's 257 tokens"),
                            (["--top-k", "2", "--top-p", "0.5"], 2, "--top-k 2's tokens"))],
    # step mode's step is one f-DPO step: the rounds' batching flags were accepted and ignored
    *[(["--mode", "step", "--steps", "2", f], f"fdpo online: --{f.split('=')[0][2:]}: --mode rounds only (a step of "
       "--mode step is one f-DPO step on the pairs of --prompts-per-round prompts)\n")
      for f in ("--batch-size=2", "--grad-accum=2", "--epochs=3", "--shuffle=false")],
])
def test_bad_flags(setup, tmp_path, args, needle):
    r = online(setup, tmp_path / "bad", *args, check=False)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr


def test_missing_reward_is_named(setup, tmp_path):
    r = fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--out", tmp_path / "x", check=False)
    assert r.returncode != 0 and "--reward" in r.stderr


def test_resumed_run_equals_uninterrupted_run(setup, tmp_path):
    # same seed and threads: stopping after round 0 and resuming gives the same round-1 weights
    # and metrics as one uninterrupted run
    a, b = tmp_path / "a", tmp_path / "b"
    small = ["--prompts-per-round", 4, "--threads", 1]
    online(setup, a, "--rounds", 2, *small)
    online(setup, b, "--rounds", 1, *small)
    online(setup, b, "--rounds", 2, "--resume", *small)
    assert (a / "round-1" / "model.safetensors").read_bytes() == (b / "round-1" / "model.safetensors").read_bytes()
    # progress = round / --rounds; time/* are wall-clock seconds
    drop = lambda ms: [{k: v for k, v in m.items() if k != "progress" and not k.startswith("time/")} for m in ms]
    assert drop(metrics(a)) == drop(metrics(b))


def test_online_json_records_the_mode_as_the_flag_spells_it_and_an_older_round_still_resumes(setup, tmp_path):
    """online.json's settings use the flags' own names and values, so a resume's messages can
    quote them back (docs/cli.md); --mode takes rounds or step (online --help), but the file
    recorded "mode": "round", which `--mode round` refuses. A plan written before the fix
    (holding "round") must still resume, and rerun its later rounds as an uninterrupted run
    does (a hunt of wave 46)."""
    a, b = tmp_path / "a", tmp_path / "b"
    small = ["--prompts-per-round", 4, "--threads", 1]
    online(setup, a, "--rounds", 2, *small)
    online(setup, b, "--rounds", 1, *small)
    plan = json.loads((b / "online.json").read_text())
    assert plan["settings"]["mode"] == "rounds" and "mode" in plan["fixed"], plan["settings"]
    # the value recorded is one --mode takes
    r = fdpo("online", "--mode", plan["settings"]["mode"], "--help")
    assert "--mode" in r.stdout
    # an online.json of the fdpo before the fix: the same mode, spelt "round"
    plan["settings"]["mode"] = "round"
    (b / "online.json").write_text(json.dumps(plan, indent=2))
    online(setup, b, "--rounds", 2, "--resume", *small, "--mode", "rounds")
    assert (a / "round-1" / "model.safetensors").read_bytes() == (b / "round-1" / "model.safetensors").read_bytes()
    # a refused change still names the flag as the file records it (the old spelling is read as rounds)
    r = online(setup, b, "--rounds", 3, "--resume", *small, "--beta", 0.3, check=False)
    assert r.returncode == 1 and "--beta: 0.3 differs from the saved run's 0.1" in r.stderr and "mode" not in r.stderr, r.stderr


def test_resume_refuses_prompts_edited_in_place_and_removes_stale_temp_files(setup, tmp_path):
    """online.json recorded --data as a path only: a rounds-mode resume after the file was edited
    in place sampled other prompts without a word (rl and step mode refuse that edit). And a
    killed writer's NAME.tmp.PID stayed in OUT for good: rounds mode never removed them, as
    every trainer's start does (docs/training.md, Leftovers)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text((setup / "prompts.txt").read_text())
    out = tmp_path / "o"
    args = ["online", "--model", setup / "model", "--data", prompts, "--reward", f"cmd:/usr/bin/python3 {setup / 'letters.py'}",
            "--out", out, "--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8, "--threads", 1, "--quiet"]
    fdpo(*args, "--rounds", 1)
    assert len(json.loads((out / "online.json").read_text())["data_hash"]) == 16
    dead = 4194304 + 11   # above Linux's pid_max: no such process
    (out / f"round-1.pairs.jsonl.tmp.{dead}").write_text("junk")
    prompts.write_text(prompts.read_text().replace("prompt 3:", "prompt three:"))
    r = fdpo(*args, "--rounds", 2, "--resume", check=False)
    assert r.returncode == 1 and f"--resume: the prompts of --data {prompts} differ from the ones its rounds sampled (" \
        in r.stderr, r.stderr
    assert not (out / "round-1").exists()
    assert f"removed {out}/round-1.pairs.jsonl.tmp.{dead} (left by process {dead}, which is gone)" in r.stderr, r.stderr
    assert not (out / f"round-1.pairs.jsonl.tmp.{dead}").exists()
    prompts.write_text((setup / "prompts.txt").read_text())   # the same prompts again: it resumes
    fdpo(*args, "--rounds", 2, "--resume")
    assert (out / "round-1" / "model.safetensors").exists()


def test_step_mode_raises_heldout_reward(setup, tmp_path):
    # --mode step (TRL OnlineDPOTrainer): fresh samples from the in-memory policy every step
    out = tmp_path / "step"
    online(setup, out, "--mode", "step", "--steps", 12, "--n", 2, "--prompts-per-round", 8)
    m = metrics(out)
    assert [x["step"] for x in m] == list(range(1, 13))
    assert abs(m[0]["objective/kl"]) < 1e-3  # step 1 samples the reference itself
    for key in TRL_KEYS[:-1] + ["rewards/chosen", "rewards/margins", "pairs"]:
        assert key in m[0], key
    before = heldout_rewards(setup, setup / "model", tmp_path)
    after = heldout_rewards(setup, out, tmp_path)
    diff = after.mean() - before.mean()
    se = math.sqrt(before.var(ddof=1) / len(before) + after.var(ddof=1) / len(after))
    print(f"step mode: held-out reward {before.mean():.3f} -> {after.mean():.3f}: +{diff:.3f} = {diff / se:.1f} SE")
    assert diff > 3 * se


def test_step_mode_refuses_round_flags(setup, tmp_path):
    r = online(setup, tmp_path / "s", "--mode", "step", "--steps", 2, "--rounds", 2, check=False)
    assert r.returncode != 0 and "--mode step" in r.stderr
    r = online(setup, tmp_path / "s", "--mode", "sometimes", check=False)
    assert r.returncode != 0 and "--mode" in r.stderr


@pytest.mark.parametrize("flag", [["--batch-size", 7], ["--grad-accum", 3], ["--shuffle=false"]])
def test_a_resumed_step_run_refuses_the_round_flags(setup, tmp_path, flag):
    """--mode comes from the saved run on --resume: the check once ran before it was known
    and took the run for rounds mode, and the flags were accepted and ignored"""
    out = tmp_path / "s"
    online(setup, out, "--mode", "step", "--steps", 2, "--stop-at", 1, "--threads", 1)
    r = fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward",
             f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", out, "--resume", "--steps", 2,
             "--threads", 1, *flag, check=False)
    assert r.returncode == 1 and (f"--{str(flag[0]).split('=')[0][2:]}: --mode rounds only (a step of --mode step is "
                                  "one f-DPO step") in r.stderr, r.stderr


def test_round_without_pairs_carries_the_policy_over(setup, tmp_path):
    # one new token per completion: the length reward ties everywhere, so no pairs; the round
    # still completes (a warning) and its checkpoint is the previous policy
    out = tmp_path / "ties"
    r = fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward", "length",
             "--out", out, "--rounds", 2, "--prompts-per-round", 4, "--n", 3, "--max-new-tokens", 1)
    assert "no pairs" in r.stderr
    assert [x["pairs"] for x in metrics(out)] == [0, 0]
    assert (out / "round-0" / "model.safetensors").read_bytes() == (out / "round-1" / "model.safetensors").read_bytes()


def test_a_directory_in_use_is_refused(setup, tmp_path):
    # another process holds OUT.lock (as a running `fdpo online` does): refused, naming it
    import fcntl
    out = tmp_path / "busy"
    out.mkdir()
    with open(str(out) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = online(setup, out, "--rounds", 1, check=False)
    assert r.returncode != 0 and "--out" in r.stderr and "in use by another run" in r.stderr, r.stderr
    assert not (out / "round-0.pairs.jsonl").exists()


def ascii_model(model):
    """A tiny byte-level GPT-2 whose LM head can only emit ASCII bytes 1..127 and EOT, so that a
    pairs file's text gives back the sampled tokens (a NUL would end a completion's text, a byte
    >= 128 could become U+FFFD)."""
    import torch
    m = make_model(model, 257, seed=5, n_positions=64, byte_tokenizer=True)
    with torch.no_grad():   # h = ln_f bias everywhere (weight 0): logit -60 for byte 0 and >= 128
        m.param("ln_f.weight").zero_()
        b = m.param("ln_f.bias")
        b.copy_(torch.randn(b.shape[0], generator=torch.Generator().manual_seed(1)))
        for v in [0] + list(range(128, 256)):
            m.param("wte.weight")[v] = -60 * b / b.dot(b)
    m.save_hf(str(model))
    return model


def load_gpt2(d):
    from fdpo_ref.gpt2 import GPT2
    g = GPT2(257, 64, 16, 2, 2)
    g.load_hf(str(d))
    return g


def enc(s):
    return list(s.encode("utf-8", "surrogateescape"))


def done(c, max_new=16):
    """A completion's sampled tokens: its bytes, and EOT when the sampler drew it (shorter than --max-new-tokens)."""
    return enc(c) + ([256] if len(enc(c)) < max_new else [])


def pair_rows(path):
    return [json.loads(l.decode("utf-8", "surrogateescape")) for l in open(path, "rb")]


def logp(net, prompt, comp):
    """Summed log-probs of comp after prompt under net (a tensor: differentiable)."""
    import torch
    import torch.nn.functional as F
    lp = F.log_softmax(net(torch.tensor(prompt + comp[:-1])), -1)
    return lp[torch.arange(len(prompt) - 1, len(prompt) - 1 + len(comp)), torch.tensor(comp)].sum()


def test_round_trains_on_the_sampled_tokens_against_its_reference(setup, tmp_path):
    """What a round's f-DPO sees, checked against PyTorch (float64) on the saved checkpoints:
    round 1's first step takes, for every pair, the sampled tokens (EOT included exactly when
    the sampler drew it, i.e. when the completion is shorter than --max-new-tokens) under round
    0's policy -- kept in memory, equal to its checkpoint -- and the reference log-probs of the
    same tokens under the fixed reference (--model) or, with --ref-update round, under round 0
    itself (then every reward is 0). The model's LM head can only emit ASCII bytes 1..127 and
    EOT (the pairs file, text, is how the test sees the tokens: a NUL would end a completion's
    text, a byte >= 128 could become U+FFFD)."""
    import torch
    torch.set_default_dtype(torch.float64)
    try:
        model = ascii_model(tmp_path / "m")
        base = load_gpt2(model)
        for mode, beta in (("never", 0.1), ("round", 0.5)):
            out = tmp_path / mode
            fdpo("online", "--model", model, "--data", setup / "prompts.txt", "--reward",
                 f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", out, "--rounds", 2, "--prompts-per-round", 4,
                 "--n", 4, "--max-new-tokens", 16, "--batch-size", 1, "--epochs", 1, "--lr", "1e-2", "--beta", beta,
                 "--ref-update", mode, "--threads", 1)
            rows = pair_rows(out / "round-1.pairs.jsonl")
            assert rows
            pol, ref = load_gpt2(out / "round-0"), base if mode == "never" else load_gpt2(out / "round-0")
            with torch.no_grad():
                lw = [float(logp(pol, enc(r["prompt"]), done(r["chosen"]))) for r in rows]
                rw = [float(logp(ref, enc(r["prompt"]), done(r["chosen"]))) for r in rows]
                ll = [float(logp(pol, enc(r["prompt"]), done(r["rejected"]))) for r in rows]
                rl = [float(logp(ref, enc(r["prompt"]), done(r["rejected"]))) for r in rows]
            # --batch-size 1: step 1 is one pair (which one, the trainer's seeded order says); its
            # four logged values must be one row's, all four from the same row
            step1 = json.loads(open(out / "round-1" / "metrics.jsonl").readline())
            got = [step1[k] for k in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected")]
            want = [(a, c, beta * (a - e), beta * (c - f)) for a, e, c, f in zip(lw, rw, ll, rl)]
            tol = 2e-6 * max(abs(x) for x in lw)
            match = [w for w in want if all(abs(g - v) <= tol for g, v in zip(got, w))]
            assert len(match) == 1, (mode, got, want)
            if mode == "never":   # the reference is not round 0's policy: the rewards are not 0
                assert abs(match[0][2]) > 100 * tol, match
            else:
                assert abs(match[0][2]) <= tol and abs(match[0][3]) <= tol
    finally:
        torch.set_default_dtype(torch.float32)


def test_kl_is_over_the_samples_scored_under_the_reference(setup, tmp_path):
    """--ref-logps pairs scores only the pairs' samples under the reference, and round
    1's objective/kl is their mean log pi_round0(y) - log pi_ref(y), checked against float64
    PyTorch on the saved checkpoints and the pairs file (ASCII-only model: the text gives back
    the tokens). --ref-logps all (default) scores every sample: the same samples (same seed), so the
    pairs, their training and round 1's weights are as before up to float rounding, while the KL
    is over all 16 samples -- a different mean here."""
    import torch
    torch.set_default_dtype(torch.float64)
    try:
        model = ascii_model(tmp_path / "m")
        base = load_gpt2(model)
        runs = {}
        for mode in ("pairs", "all"):
            out = tmp_path / mode
            fdpo("online", "--model", model, "--data", setup / "prompts.txt", "--reward",
                 f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", out, "--rounds", 2, "--prompts-per-round", 4,
                 "--n", 4, "--max-new-tokens", 16, "--batch-size", 4, "--epochs", 1, "--lr", "1e-2", "--beta", 0.1,
                 "--ref-logps", mode, "--threads", 1)
            runs[mode] = out
        rows = pair_rows(runs["pairs"] / "round-1.pairs.jsonl")
        assert len(rows) >= 2 and rows == pair_rows(runs["all"] / "round-1.pairs.jsonl")
        pol = load_gpt2(runs["pairs"] / "round-0")
        with torch.no_grad():
            lr = [float(logp(pol, enc(r["prompt"]), done(r[k])) - logp(base, enc(r["prompt"]), done(r[k])))
                  for r in rows for k in ("chosen", "rejected")]
        kl = {m: metrics(runs[m])[1]["objective/kl"] for m in runs}
        assert kl["pairs"] == pytest.approx(sum(lr) / len(lr), rel=1e-5, abs=1e-5), (kl, lr)
        assert abs(kl["all"] - kl["pairs"]) > 1e-3, kl   # 16 samples, not the 2 x pairs above
        for m in runs:   # the TRL identities hold with either KL
            x = metrics(runs[m])[1]
            assert x["objective/rlhf_reward"] == pytest.approx(x["objective/scores"] - 0.1 * x["objective/kl"])
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("batch", [3, 8])
def test_each_round_is_one_fresh_adamw_run_as_pytorch(setup, tmp_path, batch):
    """Round 1's f-DPO -- one step over all its pairs (3 pairs) -- from round 0's
    weights equals one float64 PyTorch step: the DPO sigmoid loss on the sampled tokens against
    the fixed reference, clip_grad_norm_(1.0), and a FRESH torch.optim.AdamW (decay 0.01 on the
    2-D weights). The rounds keep one pair of moment buffers and reset them (not clear them):
    a reset that let round 0's moments or step count through moves the weights by O(lr).
    --batch-size 8 > 3 pairs: the step still takes each pair once (the trainer's order used to
    wrap into further epochs to fill 8 places: 3 + 3 + 2, two pairs weighted 3/8, one 2/8)."""
    import torch
    import torch.nn.functional as F
    torch.set_default_dtype(torch.float64)
    try:
        model = ascii_model(tmp_path / "m")
        out, lr, beta = tmp_path / "run", 1e-2, 0.1
        fdpo("online", "--model", model, "--data", setup / "prompts.txt", "--reward",
             f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", out, "--rounds", 2, "--prompts-per-round", 4,
             "--n", 4, "--max-new-tokens", 16, "--batch-size", batch, "--epochs", 1, "--lr", lr, "--beta", beta,
             "--threads", 1)
        assert [m["pairs"] for m in metrics(out)] == [3, 3]   # (the seed's samples: one step of all three)
        rows = pair_rows(out / "round-1.pairs.jsonl")
        pol, ref = load_gpt2(out / "round-0"), load_gpt2(model)
        with torch.no_grad():
            rw = [float(logp(ref, enc(r["prompt"]), done(r["chosen"]))) for r in rows]
            rl = [float(logp(ref, enc(r["prompt"]), done(r["rejected"]))) for r in rows]
        named = pol.named()
        opt = torch.optim.AdamW([{"params": [p for p in named.values() if p.dim() == 2], "weight_decay": 0.01},
                                 {"params": [p for p in named.values() if p.dim() != 2], "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.999), eps=1e-8)
        margins = torch.stack([(logp(pol, enc(r["prompt"]), done(r["chosen"])) - a) -
                               (logp(pol, enc(r["prompt"]), done(r["rejected"])) - b) for r, a, b in zip(rows, rw, rl)])
        loss = -F.logsigmoid(beta * margins).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        before = {k: v.detach().clone() for k, v in named.items()}
        opt.step()
        got = load_gpt2(out / "round-1").named()
        diff = torch.cat([(got[k] - v.detach()).abs().flatten() for k, v in named.items()]) / lr
        moved = torch.cat([(v.detach() - before[k]).abs().flatten() for k, v in named.items()]) / lr
        print(f"round 1 vs one fresh PyTorch AdamW step, in units of lr: |diff| max {float(diff.max()):.3g}, "
              f"99.9% {float(diff.quantile(0.999)):.3g}, median {float(diff.median()):.3g}; median update {float(moved.median()):.3g}")
        # float32 vs float64: where |g| is near eps (1e-8) the update g / (|g| + eps) is sensitive
        # to the gradient's last bits, hence the max; a leaked moment or step count is O(1) here
        assert moved.median() > 0.5
        assert diff.median() < 1e-5 and diff.quantile(0.99) < 1e-3 and diff.max() < 2e-2
        steps = [json.loads(l) for l in open(out / "round-1" / "metrics.jsonl")]
        assert [(m["step"], m["epoch"]) for m in steps] == [(1, 1)], steps   # one step, one pass over the pairs
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["rounds", "ref-update-round", "step"])
def test_first_step_against_its_own_policy_is_exact(setup, tmp_path, mode, precision):
    """Where the policy is its reference -- round 0 of online DPO, every round's start with
    --ref-update round, step 1 of --mode step -- every implicit reward beta (log pi - log pi_ref)
    is 0 by the identity pi = pi_ref, the sigmoid loss -log sigma(0) = log 2 and a tie counts
    0.5. log pi_ref came from the sampler's scoring pass and log pi from the training forward,
    the same function in another float order: rewards of ~1e-8, accuracies 0.6 or 0.67."""
    rounds = 2 if mode == "ref-update-round" else 1
    common = ["--n", 4, "--max-new-tokens", 8, "--threads", 1, "--precision", precision, "--lr", "1e-2"]
    if mode == "step":
        online(setup, tmp_path / "o", "--mode", "step", "--steps", 1, "--prompts-per-round", 8, *common)
        firsts = [metrics(tmp_path / "o")[0]]
    else:
        extra = ["--ref-update", "round"] if mode == "ref-update-round" else []
        online(setup, tmp_path / "o", "--rounds", rounds, "--prompts-per-round", 8, "--pairing", "all-bt", *common, *extra)
        firsts = [metrics(tmp_path / "o" / f"round-{k}")[0] for k in range(rounds)]
    for m in firsts:
        assert m["step"] == 1 and m.get("pairs", 2) >= 2, m
        assert (m["rewards/chosen"], m["rewards/rejected"], m["rewards/margins"]) == (0, 0, 0), m
        assert m["rewards/accuracies"] == 0.5 and abs(m["loss"] - math.log(2)) < 1e-12, m
    if mode == "rounds":   # the steps after the first train against the same reference: no longer 0
        assert any(m["rewards/margins"] != 0 for m in metrics(tmp_path / "o" / "round-0")[1:])


@pytest.mark.parametrize("mode", [["--rounds", 1], ["--rounds", 1, "--lora-r", 2], ["--mode", "step", "--steps", 1]])
def test_a_ref_naming_the_model_another_way_is_the_model(setup, tmp_path, mode):
    """--ref naming --model's directory (model, ./model, model/, the absolute path: one
    directory by realpath) is the run without --ref: round 0's / step 1's reference is the
    policy itself, so KL(pi || pi_ref) = 0 and every implicit reward beta (log pi - log pi_ref) = 0
    by the identity pi = pi_ref, the sigmoid loss -log sigma(0) = log 2 (mean of the pairs'), and
    the first f-DPO step sees the same numbers: weights byte-equal to the run without --ref. The
    path strings were compared: --ref ./model loaded and scored a second copy, KL ~1e-7."""
    small = ["--n", 4, "--max-new-tokens", 8, "--prompts-per-round", 8, "--threads", 1, "--lr", "1e-2", "--quiet"]

    def run(out, *ref):
        r = subprocess.run([str(a) for a in [FDPO, "online", "--model", "model", "--data", "prompts.txt", "--reward",
                                             f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", out, *small,
                                             *mode, *ref]], cwd=setup, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        first = metrics(out / "round-0")[0] if "--rounds" in mode else metrics(out)[0]
        weights = out / "round-0" if "--rounds" in mode else out
        name = "adapter_model.safetensors" if "--lora-r" in mode else "model.safetensors"
        return metrics(out)[0]["objective/kl"], first, (weights / name).read_bytes()

    kl0, first0, w0 = run(tmp_path / "none")
    assert kl0 == 0 and first0["rewards/margins"] == 0 and abs(first0["loss"] - math.log(2)) <= 1e-15, first0
    for ref in ["model", "./model", "model/", str(setup / "model"), f"{setup}/./model/"]:
        kl, first, w = run(tmp_path / "r", "--ref", ref)
        assert kl == 0, (ref, kl)
        assert (first["rewards/chosen"], first["rewards/rejected"], first["rewards/margins"]) == (0, 0, 0), (ref, first)
        assert first["loss"] == first0["loss"] and first["rewards/accuracies"] == 0.5, (ref, first)
        assert w == w0, ref
        subprocess.run(["rm", "-rf", str(tmp_path / "r")], check=True)


@pytest.mark.parametrize("cmd", ["step", "rl", "dpo", "sft"])
def test_a_model_without_tokenizer_files_gets_advice_the_command_takes(setup, tmp_path, cmd):
    """A checkpoint without tokenizer files: the advice was "pass --tokenizer DIR" in every
    command, a flag only sft and pretrain have (online, rl, dpo then said "unknown flag
    --tokenizer"); the others read the tokenizer from --model alone."""
    m = tmp_path / "m"
    m.mkdir()
    for f in ("config.json", "model.safetensors"):
        (m / f).write_bytes((setup / "model" / f).read_bytes())
    args = {"step": ["online", "--mode", "step", "--steps", 1, "--reward", "length", "--n", 2, "--max-new-tokens", 4],
            "rl": ["rl", "--steps", 1, "--reward", "length"],
            "dpo": ["dpo", "--steps", 1], "sft": ["sft", "--steps", 1]}[cmd]
    r = fdpo(*args, "--model", m, "--data", setup / "prompts.txt", "--out", tmp_path / "o", "--threads", 1, check=False)
    assert r.returncode == 1 and f": {m}: no tokenizer files (expected vocab.json" in r.stderr, r.stderr
    if cmd == "sft":
        assert f"--model {m} (pass --tokenizer DIR, or copy the tokenizer files into the checkpoint)" in r.stderr
    else:
        assert "--tokenizer" not in r.stderr, r.stderr
        assert f"--model {m} (copy the tokenizer files into the checkpoint: this command reads them from there)" in r.stderr


def test_killed_mid_save_leaves_the_last_round_and_resume_equals_uninterrupted(setup, tmp_path):
    """A round's checkpoint is written in the background while the next round samples. Kill
    the process (SIGKILL) while round 1's files are being written -- strace holds every fsync
    for 0.2 s so that the kill lands mid-save -- and round 0 is intact (byte-identical to an
    uninterrupted run's), round 1 is not there, and --resume gives an uninterrupted run's
    rounds 1 and 2 byte for byte with each round's metrics line once."""
    import glob
    import shutil
    import signal
    import time
    if not shutil.which("strace") or subprocess.run(["strace", "-o", os.devnull, "true"]).returncode:
        pytest.skip("strace is missing or may not trace here (ptrace refused)")
    small = ["--prompts-per-round", 4, "--threads", 1, "--rounds", 3]
    a, b = tmp_path / "a", tmp_path / "b"
    online(setup, a, *small)
    args = [FDPO, "online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward",
            f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", b, "--n", 4, "--max-new-tokens", 16, "--lr",
            "1e-2", "--batch-size", 8, "--epochs", 4, "--beta", 0.1, *small]
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync",
                          "-e", "inject=fsync:delay_enter=200000", *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not glob.glob(str(b / "round-1.partial" / "model.safetensors.tmp.*")):
            assert p.poll() is None, p.stderr.read().decode()
            assert time.time() < deadline, "round 1's save never started"
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)   # strace and fdpo
    finally:
        p.wait()
    assert not (b / "round-1").exists() and (b / "round-1.partial").exists()   # killed mid-save
    for f in ["round-0/model.safetensors", "round-0/config.json", "round-0.pairs.jsonl"]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert fdpo("info", b / "round-0").returncode == 0
    online(setup, b, *small, "--resume")
    assert not (b / "round-1.partial").exists()
    for k in (1, 2):
        assert (a / f"round-{k}/model.safetensors").read_bytes() == (b / f"round-{k}/model.safetensors").read_bytes()
        assert (a / f"round-{k}.pairs.jsonl").read_bytes() == (b / f"round-{k}.pairs.jsonl").read_bytes()
    drop = lambda ms: [{k: v for k, v in m.items() if k != "progress" and not k.startswith("time/")} for m in ms]
    assert drop(metrics(a)) == drop(metrics(b)) and [m["step"] for m in metrics(b)] == [1, 2, 3]


def test_a_failed_checkpoint_write_fails_the_run_naming_the_round(setup, tmp_path):
    # the background writer cannot put round 0's pairs record in place (a directory holds its
    # name): the run fails naming the round and the file, round 0 never becomes complete, and
    # once the obstacle is gone a fresh run into the directory starts over cleanly
    out = tmp_path / "w"
    (out / "round-0.pairs.jsonl").mkdir(parents=True)
    r = online(setup, out, "--rounds", 2, "--prompts-per-round", 4, check=False)
    assert r.returncode != 0
    assert "round 0: saving" in r.stderr and "round-0.pairs.jsonl" in r.stderr, r.stderr
    assert not (out / "round-0").exists() and not (out / "round-1").exists()
    (out / "round-0.pairs.jsonl").rmdir()
    online(setup, out, "--rounds", 1, "--prompts-per-round", 4)
    assert [m["round"] for m in metrics(out)] == [0] and (out / "round-0" / "model.safetensors").exists()


@pytest.mark.parametrize("mode", ["rounds", "step"])
def test_bf16_same_seed_and_resume_bit_exact(setup, tmp_path, mode):
    """--precision bf16 (sampling on bf16 decode weights, the f-DPO step's matmuls on bf16
    operands): a run stopped after round/step 1 and resumed ends byte-identical to the
    uninterrupted bf16 run, metrics too; an fp32 run of the same seed ends elsewhere (so bf16
    did run, both times). Step mode resumes with --resume alone (the saved settings bring
    back --precision bf16); rounds mode takes its flags again on --resume (it restores no
    saved flag), --precision among them."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    if mode == "rounds":
        small = ["--prompts-per-round", 4, "--threads", 1]
        online(setup, a, "--rounds", 2, *small, "--precision", "bf16")
        online(setup, b, "--rounds", 1, *small, "--precision", "bf16")
        online(setup, b, "--rounds", 2, "--resume", *small, "--precision", "bf16")
        online(setup, c, "--rounds", 2, *small)
        final = lambda d: (d / "round-1" / "model.safetensors").read_bytes()
        state = b / "round-1" / "training_state.json"
    else:
        small = ["--mode", "step", "--prompts-per-round", 2, "--n", 3, "--threads", 1, "--steps", 3]
        online(setup, a, *small, "--precision", "bf16")
        online(setup, b, *small, "--precision", "bf16", "--stop-at", 1)
        fdpo("online", "--out", b, "--resume")
        online(setup, c, *small)
        final = lambda d: (d / "model.safetensors").read_bytes() + (d / "training_state.safetensors").read_bytes()
        state = b / "training_state.json"
    assert final(a) == final(b)
    assert final(a) != final(c)
    drop = lambda ms: [{k: v for k, v in m.items() if k not in ("progress", "tokens_per_sec") and not k.startswith("time/")}
                       for m in ms]
    assert drop(metrics(a)) == drop(metrics(b))
    assert json.loads(state.read_text())["settings"]["precision"] == "bf16"


# the letters reward, except on call $TIE_CALL (0: round 0's scoring, 1: round 1's): a tie
# everywhere, so that round has no pairs and saves no training state; calls counted in
# $CALLS_DIR/calls
TIES_ON_ONE_CALL = """import json, os, sys
count = os.path.join(os.environ["CALLS_DIR"], "calls")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
for line in sys.stdin:
    c = json.loads(line)["completion"]
    print(0 if n == int(os.environ["TIE_CALL"]) else sum(ch.islower() for ch in c))
    sys.stdout.flush()
"""


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
@pytest.mark.parametrize("tie,done", [(1, 2), (0, 1)])
def test_bf16_rounds_resume_keeps_the_route_after_a_round_without_pairs(setup, tmp_path, tie, done):
    """A bf16 rounds run started where the timing probe picks fp32 FMA (FDPO_BF16_PROBE=fp32)
    and resumed after `done` rounds where it picks vdpbf16ps takes the route online.json
    records (written with round 0): the resume once pinned from the last completed round's
    training state, which a round without pairs does not save (round `tie` had none: the
    last of 2, or the only one), and the next round differed from the uninterrupted run's. The control, whose online.json and rounds name no
    route, resumes on the probe's and ends elsewhere."""
    (tmp_path / "ties.py").write_text(TIES_ON_ONE_CALL)
    reward = f"cmd:/usr/bin/python3 {tmp_path / 'ties.py'}"

    def run(name, probe, rounds, *extra):
        calls = tmp_path / f"calls-{name}"
        calls.mkdir(exist_ok=True)
        env = {**os.environ, "FDPO_BF16_PROBE": probe, "CALLS_DIR": str(calls), "TIE_CALL": str(tie)}
        r = subprocess.run([FDPO, *map(str, ["online", "--model", setup / "model", "--data", setup / "prompts.txt",
                                             "--reward", reward, "--out", tmp_path / name, "--prompts-per-round", 8,
                                             "--n", 4, "--max-new-tokens", 16, "--lr", "1e-2", "--batch-size", 8,
                                             "--epochs", 2, "--beta", 0.1, "--threads", 1, "--precision", "bf16",
                                             "--rounds", rounds, *extra])],
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        return r.stderr

    run("a", "fp32", done + 1)
    assert [m["pairs"] for m in metrics(tmp_path / "a")][tie] == 0
    run("b", "fp32", done)
    run("c", "fp32", done)
    assert not (tmp_path / f"b/round-{tie}/training_state.json").exists()
    assert "on the run's route, fp32" in run("b", "dpbf16", done + 1, "--resume")
    # the control: neither online.json nor a round names the route
    plan = json.loads((tmp_path / "c/online.json").read_text())
    assert plan["settings"].pop("bf16-route") == "fp32"
    (tmp_path / "c/online.json").write_text(json.dumps(plan))
    for k in (0, 1):
        (tmp_path / f"c/round-{k}/training_state.json").unlink(missing_ok=True)
    run("c", "dpbf16", done + 1, "--resume")
    final = lambda d: (tmp_path / d / f"round-{done}/model.safetensors").read_bytes()
    assert final("b") == final("a")
    assert final("c") != final("a")


@pytest.mark.parametrize("first,then,flag", [
    ([], ["--beta", 0.3], "--beta: 0.3 differs from the saved run's 0.1"),
    ([], ["--seed", 9], "--seed: 9 differs"),
    ([], ["--n", 3], "--n: 3 differs"),
    ([], ["--temperature", 0.5], "--temperature: 0.5 differs"),
    ([], ["--lora-r", 4], "--lora-r: 4 differs from the saved run's 0"),
    (["--lora-r", 4], [], "--lora-r: 0 differs from the saved run's 4"),   # left out: full fine-tuning
    (["--lora-r", 4], ["--lora-r", 4, "--lora-dropout", 0.3], "--lora-dropout: 0.3 differs"),
])
def test_rounds_resume_refuses_a_changed_flag(setup, tmp_path, first, then, flag):
    """The rounds' fixed flags are saved in OUT/online.json before round 0; a --resume that
    changes one, or leaves it out (back to its default), is refused by name before any round
    runs (it used to continue silently: a LoRA run went on as full fine-tuning)."""
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--threads", 1]
    online(setup, a, "--rounds", 1, *small, *first)
    r = online(setup, a, "--rounds", 2, "--resume", *small, *then, check=False)
    assert r.returncode != 0 and flag in r.stderr and "online.json" in r.stderr, r.stderr
    assert not (a / "round-1").exists()
    # the same flags continue, with another --threads (not fixed) and --model spelled another way
    online(setup, a, "--rounds", 2, "--resume", "--prompts-per-round", 4, "--threads", 2, *first,
           "--model", f"{setup}/./model")
    assert (a / "round-1").is_dir()


def test_rounds_resume_may_change_what_the_docs_say(setup, tmp_path):
    """docs/online.md lists the flags a rounds --resume may change; every other setting in
    online.json is fixed (refused above). A resume with another --log-every and
    --allreduce-overlap ran without a word while the docs listed only --rounds, --threads,
    --reward-timeout and --quiet: the list now names both (the trainers' resume takes a new
    --log-every too, and --allreduce-overlap is no setting in any trainer), and round 1's f-DPO
    run logs at the new interval (its steps 3, 6, ... and its last)."""
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--threads", 1, "--batch-size", 1, "--epochs", 2]
    online(setup, a, "--rounds", 1, *small)
    online(setup, a, "--rounds", 2, "--resume", *small, "--log-every", 3, "--allreduce-overlap", "--threads", 2)
    state = [json.load(open(a / f"round-{k}" / "training_state.json"))["settings"]["log-every"] for k in (0, 1)]
    assert state == [1, 3]
    steps = [m["step"] for m in metrics(a / "round-1")]
    last = json.load(open(a / "round-1" / "training_state.json"))["step"]
    assert steps == sorted({*range(3, last + 1, 3), last}), (steps, last)
    plan = json.load(open(a / "online.json"))
    changeable = {k for k in plan["settings"] if k not in plan["fixed"]}
    doc = open(os.path.join(HERE, "../../docs/online.md")).read()
    said = re.search(r"`--rounds`, `--threads`, `--reward-timeout` and `--quiet` may change,\s+and so may "
                     r"`--log-every`(.|\n)*?and `--allreduce-overlap`", doc)
    assert said, "docs/online.md: the flags a rounds resume may change"
    # of them, the flags fdpo online takes (--save-every: refused in rounds mode) are the listed
    # ones (--rounds and --quiet are not in the plan, --allreduce-overlap is no setting)
    offered = set(re.findall(r"--([a-z0-9-]+)", fdpo("online", "--help").stdout))
    assert (changeable & offered) - {"save-every"} == {"threads", "reward-timeout", "log-every"}, changeable & offered


@pytest.mark.parametrize("extra", [[], ["--lora-r", 2]])
def test_rounds_resume_refuses_a_model_retrained_in_place(setup, tmp_path, extra):
    """The rounds read the reference (--ref, else --model) and a LoRA policy's base from their
    paths again at every session: after --model was re-trained in place a --resume sampled
    and trained the next rounds against other weights, exit 0. online.json records their
    weight hashes; the resume is refused naming --model, and goes on with the original."""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(setup / "model", base)
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--threads", 1, "--model", base, *extra]
    online(setup, a, "--rounds", 1, *small)
    plan = json.loads((a / "online.json").read_text())
    assert len(plan["lora_base_hash" if extra else "ref_hash"]) == 16
    original = (base / "model.safetensors").read_bytes()
    make_model(tmp_path / "other", 257, seed=4, n_positions=64, byte_tokenizer=True)
    shutil.copy(tmp_path / "other" / "model.safetensors", base / "model.safetensors")   # re-trained in place
    r = online(setup, a, "--rounds", 2, "--resume", *small, check=False)
    assert r.returncode != 0 and f"--model {base}" in r.stderr and "differ" in r.stderr, r.stderr
    assert not (a / "round-1").exists()
    (base / "model.safetensors").write_bytes(original)
    online(setup, a, "--rounds", 2, "--resume", *small)
    assert (a / "round-1").is_dir()


def test_pairs_is_the_old_name_of_pairing(setup, tmp_path):
    """online's --pairs best-worst|all-bt is --pairing since wave 28 (--pairs is a preference
    file elsewhere: fdpo eval --pairs FILE): the old flag still works with a deprecation note,
    and rounds saved under the old key in online.json resume as the same run."""
    small = ["--prompts-per-round", 4, "--threads", 1]
    a = tmp_path / "a"
    r = online(setup, a, "--rounds", 1, "--pairs", "all-bt", *small)
    assert "--pairs is deprecated; use --pairing" in r.stderr, r.stderr
    plan = json.loads((a / "online.json").read_text())
    assert plan["settings"]["pairing"] == "all-bt" and "pairs" not in plan["settings"]
    # what the previous version wrote: "pairs" (and "val-fraction" beside "eval-fraction")
    plan["settings"]["pairs"] = plan["settings"].pop("pairing")
    plan["settings"]["val-fraction"] = 0.05
    plan["fixed"] = ["pairs" if k == "pairing" else k for k in plan["fixed"]] + ["val-fraction"]
    (a / "online.json").write_text(json.dumps(plan))
    r = online(setup, a, "--rounds", 2, "--resume", *small, check=False)   # back to best-worst
    assert r.returncode != 0 and "--pairing: best-worst differs from the saved run's all-bt" in r.stderr, r.stderr
    online(setup, a, "--rounds", 2, "--resume", "--pairing", "all-bt", *small)
    assert (a / "round-1").is_dir()


@pytest.mark.parametrize("cmd", ["rounds", "step", "rl"])
def test_a_prompt_too_long_for_the_model_fails_the_run_at_its_start(setup, tmp_path, cmd):
    """the 4th prompt (100 bytes, n_positions 64) is named with the file before any step: it
    failed the run when a step first sampled it, after steps whose work was then lost"""
    (tmp_path / "p.txt").write_text("a:\nb:\n\nc:\n" + "x" * 100 + "\n")
    reward = f"cmd:/usr/bin/python3 {setup / 'letters.py'}"
    common = ["--model", setup / "model", "--data", tmp_path / "p.txt", "--reward", reward, "--out", tmp_path / "o",
              "--n", 2, "--max-new-tokens", 4, "--threads", 1]
    args = {"rounds": ["online", "--rounds", 3, "--prompts-per-round", 1],
            "step": ["online", "--mode", "step", "--steps", 5, "--prompts-per-round", 1],
            "rl": ["rl", "--steps", 5, "--prompts-per-step", 1]}[cmd]
    r = fdpo(*args, *common, check=False)
    assert r.returncode != 0
    assert f": {tmp_path / 'p.txt'}:5: the prompt's 100 tokens leave no room to generate" in r.stderr, r.stderr
    m = tmp_path / "o" / "metrics.jsonl"
    assert not m.exists() or m.read_text() == ""
    assert not (tmp_path / "o" / "round-0").exists()


@pytest.mark.parametrize("cmd", ["rounds", "step", "rl"])
@pytest.mark.parametrize("bad,message", [
    (["--lr", -1, "--seed", -1], "--lr: -1 must be >= 0"),   # the first of the two, as sft names it
    (["--seed", -1], "--seed: -1 must be >= 0"),
    (["--warmup-steps", -4], "--warmup-steps: -4 must be >= 0"),
    (["--min-lr-ratio", 5], "--min-lr-ratio: 5 is not in [0, 1]"),
    # as it reads back (Python's repr): %g printed "1 is not in [0, 1]"
    (["--min-lr-ratio", "1.0000001"], "--min-lr-ratio: %r is not in [0, 1]" % 1.0000001),
    # rl's and online's schedule is constant: the floor of cosine/linear was accepted without effect
    (["--min-lr-ratio", 0.5, "--schedule", "constant"],
     "--min-lr-ratio: has no effect with --schedule constant (give --schedule cosine or linear)"),
    (["--grad-clip", -1], "--grad-clip: -1 must be >= 0"),
    (["--log-every", 0], "--log-every: 0 must be >= 1"),
    (["--save-every", -1], "--save-every: -1 must be >= 0"),
    (["--stop-at", -1], "--stop-at: -1 must be >= 0"),
    (["--lora-targets", "c_fc"], "--lora-targets: has no effect without --lora-r R"),
])
def test_the_shared_training_flags_are_checked_as_sft_checks_them(setup, tmp_path, cmd, bad, message):
    """rl and online (both modes) run the shared check of the training options (fdpo_train_opts_check)
    before anything is sampled: they trained with --lr -1 (rounds mode refused it only after
    round 0 had sampled and scored, "round 0: f-DPO on ...: --lr: ...") and took --seed -1,
    --log-every 0, --lora-targets without --lora-r. The message is sft's, and nothing is written."""
    (tmp_path / "sft.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    r = fdpo("sft", "--model", setup / "model", "--data", tmp_path / "sft.jsonl", "--out", tmp_path / "sft", *bad,
             check=False)
    assert r.returncode == 1 and r.stderr == f"fdpo sft: {message}\n", r.stderr
    common = ["--model", setup / "model", "--data", setup / "prompts.txt", "--reward", "length", "--out", tmp_path / "o",
              "--n", 2, "--max-new-tokens", 4, "--threads", 1, "--quiet"]
    args = {"rounds": ["online", "--rounds", 1, "--prompts-per-round", 2],
            "step": ["online", "--mode", "step", "--steps", 2, "--prompts-per-round", 2],
            "rl": ["rl", "--steps", 2, "--prompts-per-step", 1]}[cmd]
    r = fdpo(*args, *common, *bad, check=False)
    assert r.returncode == 1 and r.stderr == f"fdpo {args[0]}: {message}\n", r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "sft").exists()


def test_step_mode_shows_progress_unless_quiet(setup, tmp_path):
    """long work shows progress: step mode's trainer line (it printed nothing, --quiet or not)"""
    small = ["--mode", "step", "--steps", 2, "--n", 2, "--prompts-per-round", 2, "--threads", 1]
    r = online(setup, tmp_path / "a", *small)
    assert "online step 2/2" in r.stderr and "ETA" in r.stderr, r.stderr
    r = online(setup, tmp_path / "b", *small, "--quiet")
    assert "online step" not in r.stderr, r.stderr
    r = online(setup, tmp_path / "c", "--rounds", 1, "--prompts-per-round", 2, "--threads", 1, "--quiet")
    assert "online rounds step" not in r.stderr, r.stderr


def test_rounds_resume_refuses_another_precision(setup, tmp_path):
    """Rounds mode takes its flags from the command line on --resume; a run whose completed
    rounds ran in bf16 must not continue in fp32 silently (nor the reverse): a clear error
    naming --precision and the round, and the completed round left as it was."""
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--threads", 1]
    online(setup, a, "--rounds", 1, *small, "--precision", "bf16")
    before = (a / "round-0" / "model.safetensors").read_bytes()
    r = online(setup, a, "--rounds", 2, "--resume", *small, check=False)
    assert r.returncode != 0
    assert "--precision" in r.stderr and "round-0" in r.stderr and "bf16" in r.stderr, r.stderr
    assert not (a / "round-1").exists()
    assert (a / "round-0" / "model.safetensors").read_bytes() == before


# the first letter decides: 11 for a completion starting with 'a', else 10
FIRST_A = """import json, sys
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(11 if c.startswith("a") else 10)
"""


def fixed_logit_model(model, logits):
    """A tiny byte-level GPT-2 whose next-token logits are the same at every position: logits
    {byte: value} for the bytes given, -60 for every other token, EOT included (h = ln_f bias
    everywhere, ln_f weight 0, each wte row the bias scaled to its logit)."""
    import torch
    m = make_model(model, 257, seed=5, n_positions=64, byte_tokenizer=True)
    with torch.no_grad():
        m.param("ln_f.weight").zero_()
        b = m.param("ln_f.bias")
        b.copy_(torch.randn(b.shape[0], generator=torch.Generator().manual_seed(1)))
        for v in range(257):
            m.param("wte.weight")[v] = logits.get(v, -60.0) * b / b.dot(b)
    m.save_hf(str(model))
    return model


def coin_model(model):
    """Every next token is 'a' or 'X', each with probability 1/2: a completion of
    --max-new-tokens 16 is 16 fair coin flips, so log pi(y) = -16 log 2 for every sample and
    none draws EOT (e^-60 per token)."""
    return fixed_logit_model(model, {ord("a"): 0.0, ord("X"): 0.0})


@pytest.mark.parametrize("mode", ["rounds", "step"])
def test_logged_sample_metrics_of_a_coin_flip_policy(setup, tmp_path, mode):
    """objective/entropy, val/contain_eos_token, val/num_completion_tokens and
    objective/scores_margin against values known without the samples: the policy (coin_model)
    draws 16 fair flips of 'a'/'X', so the entropy estimate -mean log pi(y) is 16 log 2 = 11.09
    exactly (to float rounding), no sample drew EOT (contain_eos 0) and every completion has 16
    tokens; the reward is 11 for a completion starting with 'a' and 10 otherwise, so every
    best-worst pair has r_chosen - r_rejected = 1 and the mean margin is 1 (not the chosen
    reward, 11). Round 0 / step 1 sample the starting policy; the margin holds at every step
    whatever the policy. The names are TRL OnlineDPOTrainer's (its docs' "Logged metrics":
    objective/scores_margin, and every step logps/chosen, logps/rejected, the policy's summed
    log-probs of the pair's completions, and beta); the margin was "pairs/reward_gap", and step
    mode logged no logps/* nor beta. At step 1 every completion's log pi is 16 log(1/2)."""
    model = coin_model(tmp_path / "coin")
    (tmp_path / "first_a.py").write_text(FIRST_A)
    out = tmp_path / "out"
    extra = (["--rounds", 1, "--batch-size", 8, "--epochs", 1] if mode == "rounds"
             else ["--mode", "step", "--steps", 3])
    fdpo("online", "--model", model, "--data", setup / "prompts.txt", "--reward",
         f"cmd:/usr/bin/python3 {tmp_path / 'first_a.py'}", "--out", out, "--prompts-per-round", 16, "--n", 4,
         "--max-new-tokens", 16, "--lr", "1e-2", "--beta", 0.1, "--threads", 1, *extra)
    m = metrics(out)
    first = m[0]
    assert abs(first["objective/entropy"] - 16 * math.log(2)) <= 1e-4, first
    assert first["val/contain_eos_token"] == 0, first
    if mode == "rounds":
        assert first["val/num_completion_tokens"] == 16, first
        rows = pair_rows(out / "round-0.pairs.jsonl")
        assert len(rows) == first["pairs"] > 0
        # the pairs file's texts: chosen starts with 'a', rejected with 'X', 16 flips each
        assert all(r["chosen"][0] == "a" and r["rejected"][0] == "X" for r in rows), rows
        assert all(len(r["chosen"]) == len(r["rejected"]) == 16 for r in rows), rows
    for x in m:
        assert x["pairs"] > 0 and x["objective/scores_margin"] == 1.0 and "pairs/reward_gap" not in x, x
    if mode == "step":
        assert abs(first["logps/chosen"] + 16 * math.log(2)) <= 1e-4, first
        assert abs(first["logps/rejected"] + 16 * math.log(2)) <= 1e-4, first
        assert all(x["beta"] == 0.1 and math.isfinite(x["logps/chosen"] + x["logps/rejected"]) for x in m), m


def coin_ref_model(model):
    """coin_model's twin as a reference: 'a' and 'X' with probability 1/4 each and 'b' with 1/2
    at every position, so a completion of 16 'a'/'X' has
    log pi - log pi_ref = 16 log(1/2) - 16 log(1/4) = 16 log 2 under coin_model."""
    return fixed_logit_model(model, {ord("a"): 0.0, ord("X"): 0.0, ord("b"): math.log(2)})


@pytest.mark.parametrize("mode", ["rounds", "step"])
def test_ref_logps_pairs_scores_no_sample_when_no_pair_forms(setup, tmp_path, mode):
    """A constant reward ties every prompt's samples, so no pair forms. --ref-logps all scores
    every sample under --ref: objective/kl = 16 log 2 exactly (coin_model against
    coin_ref_model, whatever the samples); --ref-logps pairs scores only the pairs' samples,
    none here, so objective/kl is NaN (docs/online.md), not the mean over all samples."""
    policy, ref = coin_model(tmp_path / "coin"), coin_ref_model(tmp_path / "coin_ref")
    (tmp_path / "one.py").write_text("import sys\nfor line in sys.stdin.buffer:\n    print(1)\n")
    extra = ["--rounds", 1, "--batch-size", 8, "--epochs", 1] if mode == "rounds" else ["--mode", "step", "--steps", 2]
    kl = {}
    for which in ("all", "pairs"):
        out = tmp_path / which
        fdpo("online", "--model", policy, "--ref", ref, "--data", setup / "prompts.txt", "--reward",
             f"cmd:/usr/bin/python3 {tmp_path / 'one.py'}", "--out", out, "--prompts-per-round", 8, "--n", 2,
             "--max-new-tokens", 16, "--lr", "1e-2", "--beta", 0.1, "--threads", 1, "--ref-logps", which, *extra)
        m = metrics(out)
        assert all(x["pairs"] == 0 for x in m), m
        kl[which] = [x["objective/kl"] for x in m]
    assert all(abs(v - 16 * math.log(2)) <= 1e-4 for v in kl["all"]), kl
    assert all(v is None or math.isnan(v) for v in kl["pairs"]), kl


@pytest.mark.parametrize("cmd", ["rounds", "step", "rl"])
def test_a_ref_shorter_than_a_sample_is_refused_at_the_start(setup, tmp_path, cmd):
    """--ref of n_positions 16 under a policy of 64: a prompt of 9 bytes + 16 new tokens does
    not fit it. It failed after round 0 (step 1) had sampled, as "batch: token 16: position 16
    outside [0, n_positions 16)", naming nothing; fdpo eval's check names --ref and the room"""
    make_model(tmp_path / "short", 257, seed=5, n_positions=16, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("prompt 0:\n")   # 9 tokens
    common = ["--model", setup / "model", "--ref", tmp_path / "short", "--data", tmp_path / "p.txt", "--reward",
              "length", "--out", tmp_path / "o", "--n", 2, "--max-new-tokens", 16, "--threads", 1, "--quiet"]
    args = {"rounds": ["online", "--rounds", 1, "--prompts-per-round", 1],
            "step": ["online", "--mode", "step", "--steps", 1, "--prompts-per-round", 1],
            "rl": ["rl", "--steps", 1, "--prompts-per-step", 1]}[cmd]
    r = fdpo(*args, *common, check=False)
    name = "rl" if cmd == "rl" else "online"
    assert r.returncode == 1 and r.stderr == (
        f"fdpo {name}: --ref: its n_positions 16 is shorter than a sample can be: prompt 1 has 9 tokens and "
        "--max-new-tokens is 16 (the reference has room for 7 new tokens after it)\n"), r.stderr
    assert not (tmp_path / "o" / "round-0").exists()
    # 7 new tokens fit it
    fdpo(*args, *[x if x != 16 else 7 for x in common])


def test_resume_after_a_kill_before_the_rename_writes_the_uninterrupted_state(setup, tmp_path):
    """SIGKILL after the writer put round-1.pairs.jsonl in place but before round-1.partial
    became round-1 (simulated by renaming it back): the resumed round 1 recorded
    "data.resolved" in its training_state.json (the stale pairs file resolved), which the
    uninterrupted run's lacks (its pairs are written after the round trained). A relative
    --out: an absolute path is its own resolved form, recorded once either way"""
    import shutil
    args = [FDPO, "online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward",
            f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--out", "a", "--n", 4, "--max-new-tokens", 16, "--lr",
            "1e-2", "--batch-size", 8, "--epochs", 4, "--beta", 0.1, "--prompts-per-round", 4, "--threads", 1,
            "--rounds", 2, "--quiet"]
    run = lambda *extra: subprocess.run([*map(str, args), *extra], cwd=tmp_path, capture_output=True, check=True)
    a = tmp_path / "a"
    run()
    shutil.copytree(a, tmp_path / "full")
    (a / "round-1").rename(a / "round-1.partial")
    run("--resume")
    for f in ("round-1/training_state.json", "round-1/model.safetensors", "round-1.pairs.jsonl"):
        assert (a / f).read_bytes() == (tmp_path / "full" / f).read_bytes(), f
    assert "data.resolved" not in json.loads((a / "round-1" / "training_state.json").read_text())["settings"]


def test_label_smoothing_is_robust_s_parameter_as_in_dpo(setup, tmp_path):
    """--loss robust without --label-smoothing (online had no such flag, sacpo's online stages
    had) is --loss sigmoid, as in fdpo dpo and TRL at label_smoothing 0: the flag is dpo's, with
    its range, and an online stage of sacpo given it is this run (docs/sacpo.md)"""
    small = ["--prompts-per-round", 4, "--threads", 1, "--rounds", 1, "--quiet", "--loss", "robust", "--n", 4]
    online(setup, tmp_path / "r0", *small)
    online(setup, tmp_path / "r2", *small, "--label-smoothing", 0.2)
    w = lambda d: (d / "round-0" / "model.safetensors").read_bytes()
    assert w(tmp_path / "r0") != w(tmp_path / "r2")
    assert json.loads((tmp_path / "r2" / "online.json").read_text())["settings"]["label-smoothing"] == 0.2
    s = tmp_path / "s"
    fdpo("sacpo", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward",
         f"cmd:/usr/bin/python3 {setup / 'letters.py'}", "--safety", "length", "--lambda", 1, "--out", s,
         "--max-new-tokens", 16, "--lr", "1e-2", "--batch-size", 8, "--epochs", 4, "--beta", 0.1,
         "--label-smoothing", 0.2, *small)
    assert (s / "reward" / "model.safetensors").read_bytes() == w(tmp_path / "r2")
    for extra, msg in [(["--label-smoothing", 0.5], "--label-smoothing: must be in [0, 0.5) (got 0.5)"),
                       (["--loss", "hinge", "--label-smoothing", 0.1],
                        "--label-smoothing: only the sigmoid (cDPO) and robust losses use it, not hinge (got 0.1)")]:
        r = online(setup, tmp_path / "bad", *small, *extra, check=False)
        assert r.returncode == 1 and msg in r.stderr, r.stderr


@pytest.mark.parametrize("mode", ["rounds", "step"])
def test_prompts_per_round_beyond_memory_is_refused_by_name(setup, tmp_path, mode):
    """--prompts-per-round 10^14: "out of memory allocating 799999999999992 bytes", naming no
    flag (a hunt's find). Refused naming the flags, and from --config with the file's line."""
    from test_generate import machine_gb
    p = 10 ** 14
    extra = ["--mode", "step", "--steps", 1] if mode == "step" else []
    cfg = tmp_path / "o.ini"
    cfg.write_text(f"threads = 1\nprompts-per-round = {p}\n")
    for where, origin in ((["--prompts-per-round", p], ""), (["--config", cfg], f" (--prompts-per-round from {cfg}:2)")):
        r = fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward", "length", "--out",
                 tmp_path / "o", "--n", 2, *where, *extra, check=False)
        assert r.returncode == 1 and r.stderr.startswith(
            f"fdpo online: --prompts-per-round/--n: {p} prompts x 2 samples: their records alone take ") and \
            r.stderr.endswith(f" GB, more than this machine's {machine_gb()} GB{origin}\n"), r.stderr
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["rounds", "step"])
def test_an_n_whose_samples_cannot_be_counted_is_refused_by_name(setup, tmp_path, mode):
    """1 prompt x (2^61 + 1) samples: their 8-byte sizes wrapped, "out of memory allocating
    8 bytes", naming no flag"""
    n = 2 ** 61 + 1
    extra = ["--mode", "step", "--steps", 1] if mode == "step" else []
    r = fdpo("online", "--model", setup / "model", "--data", setup / "prompts.txt", "--reward", "length", "--out",
             tmp_path / "o", "--prompts-per-round", 1, "--n", n, *extra, check=False)
    assert r.returncode == 1 and r.stderr == (f"fdpo online: --prompts-per-round/--n: 1 prompts x {n} samples cannot be "
                                              "held (their count alone overflows memory)\n"), r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["lexicon", "rm"])
def test_rounds_resume_refuses_a_reward_changed_in_place(setup, tmp_path, kind):
    """The rounds read the reward's files (an rm:DIR reward model, a lexicon: word list) from
    their paths again at every session: after one was re-trained or edited in place, a --resume
    scored the next rounds with the other reward, exit 0 (sacpo's plan refused the same change).
    online.json records their content hash; the resume is refused naming the spec and the file,
    goes on with the original files, and a plan without the hash (an older fdpo) resumes
    unchecked."""
    from dpo_common import reward_with_files
    reward, spec, change = reward_with_files(tmp_path, kind, setup / "model")
    original = reward.read_text() if kind == "lexicon" else None
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8, "--threads", 1, "--quiet"]
    online(setup, a, "--rounds", 1, *small, reward=spec)
    assert len(json.loads((a / "online.json").read_text())["reward_hash"]) == 16
    change()   # edited, or re-trained, in place
    r = online(setup, a, "--rounds", 2, "--resume", *small, reward=spec, check=False)
    assert r.returncode == 1 and f"--resume: --reward {spec}: the content of {reward} differs from what its rounds " \
        f"scored with, as {a}/online.json records it (hash " in r.stderr, r.stderr
    assert not (a / "round-1").exists()
    # a plan of an fdpo before reward_hash was recorded resumes unchecked
    plan = json.loads((a / "online.json").read_text())
    del plan["reward_hash"]
    (a / "online.json").write_text(json.dumps(plan))
    online(setup, a, "--rounds", 2, "--resume", *small, reward=spec)
    assert (a / "round-1").is_dir()
    # the files it scored with: a run that recorded them goes on (rm: test_rl.py's step mode)
    if kind == "rm":
        return
    reward.write_text(original)
    b = tmp_path / "b"
    online(setup, b, "--rounds", 1, *small, reward=spec)
    online(setup, b, "--rounds", 2, "--resume", *small, reward=spec)
    assert (b / "round-1").is_dir()


def test_rounds_resume_of_an_rm_reward_given_a_special_tokens_map_it_does_not_read(setup, tmp_path):
    """special_tokens_map.json (every Hugging Face model directory holds one) is in no content
    hash (docs/tokenizer.md): when fdpo began reading it, it counted, so rounds recorded by the
    fdpo before, over the same files, were refused on --resume as "the content of RM differs"
    (a review's find). The hash recorded without it stays the same."""
    from dpo_common import reward_with_files
    reward, spec, _ = reward_with_files(tmp_path, "rm", setup / "model")
    a = tmp_path / "a"
    small = ["--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8, "--threads", 1, "--quiet"]
    online(setup, a, "--rounds", 1, *small, reward=spec)
    (reward / "special_tokens_map.json").write_text('{"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}')
    online(setup, a, "--rounds", 2, "--resume", *small, reward=spec)
    assert (a / "round-1").is_dir()


def test_rounds_resume_takes_the_reward_file_spelt_another_way(setup, tmp_path):
    """online.json held --reward as typed, compared byte for byte: the same word list spelt
    lexicon:./w.txt, or lexicon:/abs/w.txt from another directory (a sacpo rerun continuing an
    interrupted online stage), was refused as another spec, while --model and --data spelt
    another way were the same paths. It is recorded resolved and compared as the file it names;
    another file is still refused."""
    (tmp_path / "w.txt").write_text("a\t1\ne\t1\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.txt").write_text("a\t1\ne\t1\n")
    args = ["online", "--model", setup / "model", "--data", setup / "prompts.txt", "--out", tmp_path / "a",
            "--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8, "--threads", 1, "--quiet"]

    def run(cwd, spec, rounds, *extra):
        return subprocess.run([FDPO, *map(str, [*args, "--reward", spec, "--rounds", rounds, *extra])], cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    assert run(tmp_path, "lexicon:w.txt", 1).returncode == 0
    assert json.loads((tmp_path / "a" / "online.json").read_text())["settings"]["reward"] == f"lexicon:{tmp_path}/w.txt"
    r = run(tmp_path / "elsewhere", "lexicon:w.txt", 2, "--resume")   # another file of that name
    assert r.returncode == 1 and f"--reward: lexicon:{tmp_path}/elsewhere/w.txt differs from the saved run's " \
        f"lexicon:{tmp_path}/w.txt" in r.stderr, r.stderr
    r = run(tmp_path, "lexicon:./w.txt", 2, "--resume")
    assert r.returncode == 0 and (tmp_path / "a" / "round-1").is_dir(), r.stderr
    r = run(tmp_path / "elsewhere", f"lexicon:{tmp_path}/w.txt", 3, "--resume")
    assert r.returncode == 0 and (tmp_path / "a" / "round-2").is_dir(), r.stderr
    # a plan of an earlier fdpo holds the spec as typed: the same file, resolved from here
    plan = json.loads((tmp_path / "a" / "online.json").read_text())
    plan["settings"]["reward"] = "lexicon:w.txt"
    (tmp_path / "a" / "online.json").write_text(json.dumps(plan))
    r = run(tmp_path, "lexicon:./w.txt", 4, "--resume")
    assert r.returncode == 0 and (tmp_path / "a" / "round-3").is_dir(), r.stderr


@pytest.mark.parametrize("pairing", ["best-worst", "all-bt"])
def test_a_completion_a_stop_ended_before_any_text_makes_no_pair(tmp_path, pairing):
    """A sample that --stop ends at its first token has no text (the stop is cut off), as one
    that draws EOT first: its pair was kept, and round-K.pairs.jsonl held "rejected": "", a
    line a preference file may not have (docs/online.md: a pair with an empty side is
    skipped). A Llama that reads only its last token: after "q" it draws x or y (equal logits,
    every other token ~48 nats down), then x -> EOT, y -> z -> EOT; --stop x ends the x path
    with the empty text, and the length reward (tokens: 1 against 2) ranks the two apart."""
    from test_generate import last_token_llama
    d = tmp_path / "m"
    x, y, z, q = ord("x"), ord("y"), ord("z"), ord("q")
    last_token_llama(d, {q: [x, y], y: [z]})
    (tmp_path / "p.txt").write_text("q\n" * 8)
    out = tmp_path / f"o{pairing}"
    r = fdpo("online", "--model", d, "--data", tmp_path / "p.txt", "--reward", "length", "--stop", "x", "--out", out,
             "--rounds", 1, "--prompts-per-round", 8, "--n", 4, "--max-new-tokens", 4, "--batch-size", 4,
             "--threads", 1, "--seed", 5, "--pairing", pairing)
    samples = [json.loads(l) for l in open(out / "round-0.samples.jsonl")] \
        if (out / "round-0.samples.jsonl").exists() else None
    if samples is not None:   # both paths drawn: the empty text and "yz"
        assert {s["completion"] for s in samples} == {"", "yz"}
    rows = [json.loads(l) for l in open(out / "round-0.pairs.jsonl")] if (out / "round-0.pairs.jsonl").exists() else []
    assert all(row["chosen"] and row["rejected"] for row in rows), rows
    assert [x_["pairs"] for x_ in metrics(out)] == [0], r.stderr
    # said as what it is: the rewards differed (it said they were all the same)
    assert "round 0: no pairs: " in r.stderr and " had an empty completion (EOT drawn first, or --stop before any " \
        "text), skipped" in r.stderr and "got the same reward: no pairs" not in r.stderr, r.stderr
