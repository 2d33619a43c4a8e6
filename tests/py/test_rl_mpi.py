"""fdpo rl data-parallel (mpirun --oversubscribe --allow-run-as-root -np 2/3): each rank
samples its block of a step's prompts, scores them, and computes the policy-gradient loss and
gradient of that block (a prompt's k samples stay on one rank, so the leave-one-out and group
baselines are the single process's); the trainer sums the ranks' gradients. The result does
not depend on the number of ranks: parameters within 1e-6 relative of one process after a few
steps (the gradient is summed in another order, so not bit for bit), the step metrics equal,
and a run saved by two ranks resumes with one and continues equal."""
import json

import numpy as np

from test_mpi import (close_outside_key_bias, fdpo, letters_reward, mpi, params,  # noqa: F401
                      pytestmark, work)

LR, STEPS = 1e-3, 3


def rl_args(work, out, *extra, prompts_per_step=7):
    return ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
            "--prompts-per-step", prompts_per_step, "--n", 3, "--max-new-tokens", 10, "--seed", 5, "--threads", 1, "--quiet",
            "--lr", LR, "--out", out, *extra]


def metrics(d):
    return [json.loads(l) for l in open(d / "metrics.jsonl")]


def test_rl_gradient_split_over_ranks_equals_one_process(work, tmp_path):
    """7 prompts x 3 samples: two ranks take 3 and 4 prompts, three ranks 2, 2 and 3."""
    fdpo(*rl_args(work, tmp_path / "one", "--steps", STEPS))
    for n in (2, 3):
        mpi(n, *rl_args(work, tmp_path / f"np{n}", "--steps", STEPS))
    p1 = params(tmp_path / "one")
    assert not np.array_equal(p1, params(work / "pol"))   # it trained
    m1 = metrics(tmp_path / "one")
    assert len(m1) == STEPS
    for n in (2, 3):
        assert close_outside_key_bias(tmp_path / "one", tmp_path / f"np{n}", LR, STEPS), n
        mn = metrics(tmp_path / f"np{n}")
        assert len(mn) == STEPS
        for a, b in zip(m1, mn):
            # the same samples, the same rewards
            for key in ("objective/scores", "val/num_completion_tokens", "val/contain_eos_token"):
                assert a[key] == b[key], (n, key, a[key], b[key])
            # log-probs of models 1e-7 apart (step 1: the same model, summed in blocks)
            scale = a["objective/entropy"]
            for key in ("objective/kl", "objective/f_divergence", "objective/entropy", "loss", "objective/shaped_reward"):
                assert abs(a[key] - b[key]) <= 1e-6 * scale, (n, key, a[key], b[key])
            assert abs(a["policy/advantage_std"] - b["policy/advantage_std"]) <= 1e-6 * a["policy/advantage_std"]
            assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"], (n, a["grad_norm"], b["grad_norm"])


def test_rl_saved_by_two_ranks_resumes_with_one(work, tmp_path):
    """Stop after step 2 of 4 on two ranks, resume on one: the end equals four steps on one."""
    fdpo(*rl_args(work, tmp_path / "one", "--steps", 4))
    mpi(2, *rl_args(work, tmp_path / "mixed", "--steps", 4, "--stop-at", 2))
    assert len(metrics(tmp_path / "mixed")) == 2
    fdpo(*rl_args(work, tmp_path / "mixed", "--steps", 4, "--resume"))
    assert len(metrics(tmp_path / "mixed")) == 4
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "mixed", LR, 4)
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "mixed")):
        assert a["objective/scores"] == b["objective/scores"], (a["step"], a["objective/scores"], b["objective/scores"])


def test_rl_with_a_rank_that_has_no_prompt(work, tmp_path):
    """2 prompts a step on 3 ranks: one rank samples nothing and adds a zero gradient."""
    fdpo(*rl_args(work, tmp_path / "one", "--steps", 2, prompts_per_step=2))
    mpi(3, *rl_args(work, tmp_path / "three", "--steps", 2, prompts_per_step=2))
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "three", LR, 2)
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "three")):
        assert a["objective/scores"] == b["objective/scores"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"], (a["grad_norm"], b["grad_norm"])


def test_rl_allreduce_overlap_sums_the_layers_during_backward(work, tmp_path):
    """--allreduce-overlap was accepted and listed in `fdpo rl --help` but rl never marked a
    backward, so every layer was summed after it (dist/overlapped_layers 0). It now marks the
    backward of the rank's last micro-batch (here two a rank: 2 prompts x 16 samples of up to
    40 tokens are more than the 1024 packed rows of one), during which every layer's sum
    starts; with two ranks each element is a + b either way, so the run is the plain run's bit
    for bit (as for the other trainers, tests/py/test_mpi.py), where a sum started after the
    first micro-batch would have missed the second's gradient."""
    args = ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
            "--prompts-per-step", 4, "--n", 16, "--max-new-tokens", 40, "--seed", 5, "--threads", 1, "--quiet",
            "--lr", LR, "--steps", 2]
    mpi(2, *args, "--out", tmp_path / "plain", timeout=120)
    mpi(2, *args, "--out", tmp_path / "overlap", "--allreduce-overlap", timeout=120)
    rows = metrics(tmp_path / "overlap")
    assert len(rows) == 2 and all(m["dist/overlapped_layers"] == 2 for m in rows), rows   # TINY's 2 layers
    assert np.array_equal(params(tmp_path / "plain"), params(tmp_path / "overlap"))
    for a, b in zip(metrics(tmp_path / "plain"), rows):
        for key in ("loss", "objective/scores", "objective/kl", "grad_norm"):
            assert a[key] == b[key], (key, a[key], b[key])
