"""Every command of the MPI issue under `mpirun -np 2`, beyond tests/py/test_mpi.py:

- the training commands not covered there: sft with 2 ranks equals 1; Llama pretrain and dpo
  (and rm) with 2 ranks equal 1, with and without --allreduce-overlap (bit-identical with 2 ranks: every
  element is a + b either way), and the overlap really runs during the Llama backward
  (dist/overlapped_layers = n_layer each step);
- resume with another number of ranks than the run that saved: pretrain 1 -> 2, sft, dpo
  (Llama), rm, kto, rl, online --mode step and online rounds 2 -> 1, each compared with the
  uninterrupted single-process run;
- score and pairs write the same bytes for 1, 2 and 3 ranks; ranks of generate, eval or score
  given different jobs (seed, prompts, reward) are refused;
- faults: a rank of generate, eval or rm SIGKILLed mid-run ends the job within seconds, non-zero,
  with the launcher's message naming the killed rank; generate's and eval's earlier --out files
  are untouched (no half-written file replaces them); rm's last checkpoint loads and resumes.

The single-process run is the reference throughout: data parallelism must not change what is
computed, only where (docs/scaling.md says why equal means within 1e-6 relative and not
bit-identical: the micro-batch gradients are summed in another order)."""
import json
import os
import signal
import subprocess
import time

import numpy as np

from dpo_common import fdpo, save_byte_tokenizer, write_jsonl
from fdpo_ref.gpt2 import GPT2
from fdpo_ref.llama import Llama
from test_dpo import synthetic_pairs
from test_mpi import (FDPO, MPIRUN, PRETRAIN, close, close_outside_key_bias, letters_reward, mpi, online_args, params,
                      proc_stat, pytestmark, rank_pid, work)  # noqa: F401 (pytestmark: the same skips; work: the shared fixture)

LLAMA = dict(vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def metrics(d):
    return [json.loads(line) for line in open(d / "metrics.jsonl")]


def state_step(d):
    return json.load(open(d / "training_state.json"))["step"]


# ---- the training commands: 2 ranks vs 1, and resume with another rank count ----

def test_pretrain_resumes_from_one_rank_with_two(work, tmp_path):
    """1 rank saves at step 2, 2 ranks continue to 5: equal to 1 rank throughout."""
    args = ["pretrain", "--steps", 5, *PRETRAIN, work / "text.txt"]
    fdpo(*args, "--out", tmp_path / "one")
    fdpo(*args, "--out", tmp_path / "split", "--stop-at", 2)
    assert state_step(tmp_path / "split") == 2
    mpi(2, *args, "--out", tmp_path / "split", "--resume")
    assert state_step(tmp_path / "split") == 5
    assert close(params(tmp_path / "one"), params(tmp_path / "split"))
    assert [m["step"] for m in metrics(tmp_path / "split")] == [1, 2, 3, 4, 5]


def test_sft_two_ranks_equal_one_and_resume_with_one(work, tmp_path):
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in synthetic_pairs(64, 3)])
    args = ["sft", "--model", work / "pol", "--data", tmp_path / "sft.jsonl", "--seq-len", 48, "--batch-size", 2,
            "--grad-accum", 4, "--steps", 5, "--lr", "1e-3", "--threads", 1, "--seed", 3, "--quiet"]
    fdpo(*args, "--out", tmp_path / "one")
    mpi(2, *args, "--out", tmp_path / "two")
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "two", 1e-3, 5)
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(a["loss"]), (a, b)
    mpi(2, *args, "--out", tmp_path / "split", "--stop-at", 3)
    assert state_step(tmp_path / "split") == 3
    fdpo(*args, "--out", tmp_path / "split", "--resume")
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "split", 1e-3, 5)


def test_llama_pretrain_two_ranks_equal_one_and_overlap_runs_in_backward(work, tmp_path):
    """--arch llama: 2 ranks within 1e-6 of 1; --allreduce-overlap gives the 2-rank parameters
    bit for bit, and each step's dist/overlapped_layers is 2 (both layers' sums were started by
    the Llama backward's hook, none left for the blocking sum after backward)."""
    args = ["pretrain", "--steps", 3, *PRETRAIN, "--arch", "llama", "--n-kv-head", 1, work / "text.txt"]
    fdpo(*args, "--out", tmp_path / "one")
    mpi(2, *args, "--out", tmp_path / "two")
    mpi(2, *args, "--out", tmp_path / "overlap", "--allreduce-overlap")
    assert json.load(open(tmp_path / "two" / "config.json"))["model_type"] == "llama"
    assert close(params(tmp_path / "one"), params(tmp_path / "two"))
    a, b = params(tmp_path / "two"), params(tmp_path / "overlap")
    assert np.array_equal(a, b), np.abs(a - b).max()
    rows = metrics(tmp_path / "overlap")
    assert len(rows) == 3 and all(m["dist/overlapped_layers"] == 2 for m in rows), rows
    assert all("dist/overlapped_layers" not in m for m in metrics(tmp_path / "two"))


def test_llama_dpo_and_rm_two_ranks_equal_one_overlap_and_resume_with_one(work, tmp_path):
    Llama(**LLAMA, seed=7).save_hf(str(tmp_path / "llama"))
    save_byte_tokenizer(str(tmp_path / "llama"))

    def args(out, *extra):
        return ["dpo", "--model", tmp_path / "llama", "--data", work / "pairs.jsonl", "--out", out, "--batch-size", 4,
                "--grad-accum", 4, "--steps", 5, "--lr", "1e-3", "--threads", 1, "--quiet", "--eval-fraction", 0,
                "--ref-cache-dir", tmp_path / "cache", *extra]
    fdpo(*args(tmp_path / "one"))
    mpi(2, *args(tmp_path / "two"))
    mpi(2, *args(tmp_path / "overlap", "--allreduce-overlap"))
    one, two = params(tmp_path / "one"), params(tmp_path / "two")
    assert not np.array_equal(one, params(tmp_path / "llama"))   # it trained
    assert close(one, two)
    assert np.array_equal(two, params(tmp_path / "overlap"))
    assert all(m["dist/overlapped_layers"] == 2 for m in metrics(tmp_path / "overlap") if "loss" in m)
    mpi(2, *args(tmp_path / "split", "--stop-at", 3))
    assert state_step(tmp_path / "split") == 3
    fdpo(*args(tmp_path / "split", "--resume"))
    assert close(one, params(tmp_path / "split"))
    # a Llama reward model: the hook runs in the trunk's backward below the score head
    rm = ["rm", "--model", tmp_path / "llama", "--data", work / "pairs.jsonl", "--batch-size", 4, "--grad-accum", 4,
          "--steps", 3, "--lr", "1e-3", "--threads", 1, "--quiet", "--eval-fraction", 0]
    fdpo(*rm, "--out", tmp_path / "rm-one")
    mpi(2, *rm, "--out", tmp_path / "rm-two")
    mpi(2, *rm, "--out", tmp_path / "rm-overlap", "--allreduce-overlap")
    one, two = params(tmp_path / "rm-one"), params(tmp_path / "rm-two")
    assert close(one, two) and np.array_equal(two, params(tmp_path / "rm-overlap"))
    assert all(m["dist/overlapped_layers"] == 2 for m in metrics(tmp_path / "rm-overlap") if "loss" in m)


def kto_rows(n, seed):
    return [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
            for r in synthetic_pairs(n, seed) for k in ("chosen", "rejected")]


def test_rm_and_kto_resume_from_two_ranks_with_one(work, tmp_path):
    write_jsonl(tmp_path / "kto.jsonl", kto_rows(32, 1))
    common = ["--batch-size", 4, "--grad-accum", 4, "--steps", 5, "--lr", "1e-3", "--threads", 1, "--quiet",
              "--eval-fraction", 0]
    for cmd, data in (("rm", work / "pairs.jsonl"), ("kto", tmp_path / "kto.jsonl")):
        args = [cmd, "--model", work / "pol", "--data", data, *common]
        fdpo(*args, "--out", tmp_path / f"{cmd}-one")
        mpi(2, *args, "--out", tmp_path / f"{cmd}-split", "--stop-at", 3)
        assert state_step(tmp_path / f"{cmd}-split") == 3
        fdpo(*args, "--out", tmp_path / f"{cmd}-split", "--resume")
        assert state_step(tmp_path / f"{cmd}-split") == 5
        assert close_outside_key_bias(tmp_path / f"{cmd}-one", tmp_path / f"{cmd}-split", 1e-3, 5), cmd


def test_rl_and_online_step_resume_from_two_ranks_with_one(work, tmp_path):
    """2 ranks save after step 2 of 3, 1 rank finishes: the final parameters and every step's
    reward statistics equal the uninterrupted single-process run (within 1e-6: how the step's
    gradient is split over the ranks may change its summation order)."""
    runs = {"online": online_args(work, None, "--mode", "step", "--steps", 3),
            "rl": ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
                   "--prompts-per-step", 7, "--n", 3, "--max-new-tokens", 10, "--seed", 5, "--threads", 1,
                   "--quiet", "--steps", 3, "--lr", "1e-3", "--out", None]}
    for name, args in runs.items():
        i = args.index(None)
        one, split = tmp_path / f"{name}-one", tmp_path / f"{name}-split"
        fdpo(*args[:i], one, *args[i + 1:])
        mpi(2, *args[:i], split, *args[i + 1:], "--stop-at", 2)
        assert state_step(split) == 2, name
        fdpo(*args[:i], split, *args[i + 1:], "--resume")
        assert state_step(split) == 3, name
        # both split the step's gradient over the ranks: the key biases' rounding noise, which Adam
        # scales to lr per step, is bounded apart (close_outside_key_bias)
        assert close_outside_key_bias(one, split, 1e-3, 3), name
        m1, m2 = metrics(one), metrics(split)
        assert [m["step"] for m in m1] == [m["step"] for m in m2] == [1, 2, 3], name
        for a, b in zip(m1, m2):
            assert a["objective/scores"] == b["objective/scores"], name


def test_online_rounds_resume_from_two_ranks_with_one(work, tmp_path):
    """Round 0 by 2 ranks, round 1 by 1 rank resuming: the same round-1 pairs (bytes) as one
    process doing both rounds, and the final model within 1e-6."""
    extra = ["--batch-size", 1, "--grad-accum", 4, "--epochs", 1]
    fdpo(*online_args(work, tmp_path / "one", "--rounds", 2, *extra))
    mpi(2, *online_args(work, tmp_path / "split", "--rounds", 1, *extra))
    assert not (tmp_path / "split" / "round-1").exists()
    fdpo(*online_args(work, tmp_path / "split", "--rounds", 2, "--resume", *extra))
    for k in (0, 1):
        a = (tmp_path / "one" / f"round-{k}.pairs.jsonl").read_bytes()
        assert a and a == (tmp_path / "split" / f"round-{k}.pairs.jsonl").read_bytes(), k
    assert close_outside_key_bias(tmp_path / "one" / "round-1", tmp_path / "split" / "round-1", 1e-3, 4)


# ---- score and pairs: the same bytes whatever the number of ranks ----

def test_score_and_pairs_are_identical_on_one_two_and_three_ranks(work, tmp_path):
    """score splits its lines over the ranks and joins the blocks bit for bit; rank 0
    writes, so stdout is not duplicated either. pairs is computed whole on every rank and
    written by rank 0."""
    fdpo("generate", "--model", work / "pol", "--data", work / "prompts.txt", "--n", 3, "--max-new-tokens", 10,
         "--seed", 5, "--threads", 1, "--out", tmp_path / "samples.jsonl")
    score = ["score", "--model", work / "pol2", "--ref", work / "pol", "--data", tmp_path / "samples.jsonl",
             "--reward", "length", "--threads", 1]
    one = fdpo(*score).stdout
    rows = [json.loads(line) for line in one.splitlines()]
    assert len(rows) == 21 and len({r["logp"] for r in rows}) > 7 and all(r["kl_tok"] > 0 for r in rows)
    assert mpi(2, *score).stdout == one   # stdout: once, in order
    for n in (2, 3):
        mpi(n, *score, "--out", tmp_path / f"s{n}.jsonl")
        assert (tmp_path / f"s{n}.jsonl").read_text() == one, n
    write_jsonl(tmp_path / "scored.jsonl", rows)
    fdpo("pairs", "--data", tmp_path / "scored.jsonl", "--out", tmp_path / "p1.jsonl")
    mpi(2, "pairs", "--data", tmp_path / "scored.jsonl", "--out", tmp_path / "p2.jsonl")
    p1 = (tmp_path / "p1.jsonl").read_bytes()
    assert p1.count(b"\n") == 7 and p1 == (tmp_path / "p2.jsonl").read_bytes()


def test_score_failing_on_one_rank_ends_every_rank_with_its_message(work, tmp_path):
    """The reward program fails on prompt 6, which only the last rank scores."""
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"prompt {i}:", "completion": " x"} for i in range(7)])
    r = mpi(2, "score", "--model", work / "pol", "--data", tmp_path / "c.jsonl", "--threads", 1,
            "--reward", f"cmd:/usr/bin/python3 {work / 'fails_on_6.py'}", "--out", tmp_path / "s.jsonl",
            check=False, timeout=120)
    assert r.returncode != 0
    assert "[rank 1/2]" in r.stderr or "rank 1 of 2 failed" in r.stderr, r.stderr
    assert "crashed on prompt 6" in r.stderr, r.stderr
    assert not (tmp_path / "s.jsonl").exists()


def mpmd(args0, args1):
    """one rank with each command line (mpirun's MPMD form)"""
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", FDPO, *map(str, args0), ":",
           "-np", "1", FDPO, *map(str, args1)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_sampling_and_scoring_ranks_that_disagree_are_refused(work, tmp_path):
    """generate and eval (through fdpo_generate_ranks) and score split one job over the ranks:
    ranks given another --seed, other prompts or another --reward would each compute a block
    of a different job. They are refused on every rank, naming what differs."""
    gen = ["generate", "--model", work / "pol", "--data", work / "prompts.txt", "--n", 2, "--max-new-tokens", 4,
           "--threads", 1, "--out", tmp_path / "g.jsonl"]
    (tmp_path / "other.txt").write_text("".join(f"prompt {i}?\n" for i in range(7)))
    ev = ["eval", "--model", work / "pol", "--ref", work / "pol", "--n", 2, "--max-new-tokens", 4, "--threads", 1]
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"prompt {i}:", "completion": " x"} for i in range(5)])
    score = ["score", "--model", work / "pol", "--data", tmp_path / "c.jsonl", "--threads", 1]
    what_sampled = "the sampling flags (--precision included), prompts or model"
    what_scored = "the --data lines, --model, --ref, --reward or --precision"
    cases = {"generate": (gen + ["--seed", 1], gen + ["--seed", 2], what_sampled),
             # bf16 samples other tokens: a rank in another precision wrote a mix of both
             "generate-precision": (gen, gen + ["--precision", "bf16"], what_sampled),
             "eval": (ev + ["--data", work / "prompts.txt"], ev + ["--data", tmp_path / "other.txt"], what_sampled),
             "score": (score + ["--reward", "length"], score + ["--reward", "length:words"], what_scored),
             "score-precision": (score, score + ["--precision", "bf16"], what_scored)}
    for name, (a0, a1, what) in cases.items():
        r = mpmd(a0, a1)
        assert r.returncode != 0, name
        assert f"{what} differs between ranks" in r.stderr, (name, r.stderr)
    assert not (tmp_path / "g.jsonl").exists()
    # --threads and --batch-size do not change the samples: ranks may differ there
    r = mpmd(gen + ["--batch-size", 2], gen[:-4] + ["--threads", 2, "--out", tmp_path / "g.jsonl", "--batch-size", 3])
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 14


# ---- a rank killed mid-run: generate, eval, rm ----

def cpu_seconds(pid):
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_rank_when(args, rank, ready):
    """Start `mpirun -np 2 fdpo ARGS`, SIGKILL rank's process once ready(pid) holds, and
    return (returncode, stderr, seconds from the kill to the job's end)."""
    p = subprocess.Popen([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", FDPO, *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, pid = time.time() + 120, None
    try:
        while time.time() < deadline and p.poll() is None:
            pid = pid or rank_pid(p.pid, rank)
            if pid is not None and ready(pid):
                break
            time.sleep(0.1)
        assert p.poll() is None, "the job ended before the kill: " + p.communicate()[1]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        _, err = p.communicate(timeout=60)
        return p.returncode, err, time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()


def test_killed_rank_ends_generate_and_eval_and_keeps_their_outputs(work, tmp_path):
    """A long sampling job (200 prompts x 4 x up to 480 tokens: minutes of work) whose rank 1
    is killed once it has computed for 0.5 s of CPU time: the job ends within seconds, the
    launcher names rank 1, and the --out (and eval's --samples-out) written by an earlier
    run are still there, byte for byte."""
    GPT2(vocab_size=257, n_positions=512, n_embd=64, n_layer=2, n_head=4, seed=5).save_hf(str(tmp_path / "m"))
    save_byte_tokenizer(str(tmp_path / "m"))
    (tmp_path / "many.txt").write_text("".join(f"prompt {i}:\n" for i in range(200)))
    sampling = ["--data", tmp_path / "many.txt", "--n", 4, "--max-new-tokens", 480, "--threads", 1]
    jobs = {"generate": (["generate", "--model", tmp_path / "m", *sampling, "--out", tmp_path / "g.jsonl"],
                         [tmp_path / "g.jsonl"]),
            "eval": (["eval", "--model", tmp_path / "m", "--ref", tmp_path / "m", *sampling, "--reward", "length",
                      "--out", tmp_path / "e.json", "--samples-out", tmp_path / "s.jsonl"],
                     [tmp_path / "e.json", tmp_path / "s.jsonl"])}
    for name, (args, outputs) in jobs.items():
        for i, path in enumerate(outputs):
            path.write_text(f"an earlier run's output {i}\n")
        rc, err, seconds = kill_rank_when(args, 1, lambda pid: cpu_seconds(pid) >= 0.5)
        assert rc != 0, name
        assert seconds < 30, (name, "the job did not stop within seconds")
        assert "rank 1" in err and "signal 9" in err, (name, err)
        for i, path in enumerate(outputs):
            assert path.read_text() == f"an earlier run's output {i}\n", (name, path)


def test_killed_writer_rank_of_rm_keeps_a_checkpoint_that_resumes(work, tmp_path):
    """rm with a checkpoint every 2 steps; rank 0 (the one that writes) is killed after the
    first checkpoint, possibly mid-save: the job ends within seconds naming rank 0, the
    directory holds a whole checkpoint of an even step, and one process resumes it."""
    out = tmp_path / "rm"
    args = ["rm", "--model", work / "pol", "--data", work / "pairs.jsonl", "--batch-size", 2, "--grad-accum", 2,
            "--steps", 4000, "--save-every", 2, "--lr", "1e-4", "--threads", 1, "--quiet", "--eval-fraction", 0,
            "--out", out]
    rc, err, seconds = kill_rank_when(args, 0, lambda pid: (out / "training_state.json").exists())
    assert rc != 0
    assert seconds < 30, "the job did not stop within seconds"
    assert "rank 0" in err and "signal 9" in err, err
    # killed mid-swap, OUT may be OUT.old for now: the next run puts it back (fdpo_checkpoint_recover)
    saved = out if (out / "training_state.json").exists() else tmp_path / "rm.old"
    step = state_step(saved)
    assert step % 2 == 0 and 2 <= step < 4000
    fdpo(*args[:-2], "--out", out, "--resume", "--stop-at", step + 2)
    assert "training_state: yes" in fdpo("info", out).stdout
    assert state_step(out) == step + 2
    assert [m["step"] for m in metrics(out)][-2:] == [step + 1, step + 2]
