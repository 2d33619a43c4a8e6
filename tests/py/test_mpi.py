"""Data parallelism over Open MPI (mpirun -np 2 on this machine): pretrain and dpo with two
ranks equal the single-process run with the same global batch (parameters within 1e-6
relative: the micro-batch gradients are summed in another order, see docs/scaling.md), a
checkpoint saved by two ranks resumes with one and continues equal, the cached reference
log-probs are byte-identical whatever the number of ranks, ranks given different flags are
refused, and a rank killed mid-run ends the job with the last checkpoint intact. The sampling
commands (generate, eval, online, rl) split their prompts over the ranks: their completions,
rewards and reports are identical whatever the number of ranks, and a rank whose reward
program fails ends every rank with its message; rm and kto train data-parallel like dpo."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from dpo_common import fdpo, save_byte_tokenizer, write_jsonl
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2
from test_dpo import synthetic_pairs

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build/fdpo"))
MPIRUN = shutil.which("mpirun")
pytestmark = [
    pytest.mark.skipif(MPIRUN is None, reason="Open MPI is not installed (scripts/deps.sh installs it)"),
    pytest.mark.skipif(os.environ.get("FDPO_SANITIZED") == "1",
                       reason="Open MPI's own allocations are reported by LeakSanitizer; the MPI path runs in the plain build"),
]
TINY = dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


# a reward that varies between random byte-level completions: the number of ASCII letters
LETTERS = """import json, sys
for line in sys.stdin.buffer:
    print(sum(ch.isascii() and ch.isalpha() for ch in json.loads(line.decode("utf-8", "replace"))["completion"]))
"""
FAILS_ON_6 = """import json, sys
for line in sys.stdin.buffer:
    row = json.loads(line.decode("utf-8", "replace"))
    if row["prompt"].startswith("prompt 6:"):
        sys.stderr.write("reward program crashed on prompt 6\\n")
        sys.exit(3)
    print(len(row["completion"]))
"""


def mpi(n, *args, check=True, timeout=300, env=None):
    r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(n), FDPO, *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def params(d):
    t = st.load(str(d / "model.safetensors"))[0]
    return np.concatenate([t[k].ravel().astype(np.float64) for k in sorted(t)])


def close(a, b, tol=1e-6):
    """1e-6 relative to the whole parameter vector (measured: 6e-8 pretrain, 2e-7 dpo at lr
    1e-3). Per element the worst is 1.2e-6 of the largest weight: Adam turns the rounding
    noise of elements whose true gradient is zero (c_attn's key bias: softmax ignores a
    shift) into lr-sized steps, whatever their sign, so those elements are bounded by lr."""
    return np.linalg.norm(a - b) / np.linalg.norm(a) <= tol and np.abs(a - b).max() <= 10 * tol * np.abs(a).max()


def close_outside_key_bias(d1, d2, lr, steps):
    """close() over every parameter but the key third of each c_attn.bias. A key bias shifts
    every score of a query by the same amount, which softmax ignores: its true gradient is 0,
    so its gradient is pure rounding noise whose sign depends on the summation order, and Adam
    turns that into steps of up to lr each (measured for rm: 8.8e-6 there, 4e-9 elsewhere). Those
    elements are only bounded by lr x steps; they change no output."""
    t1, t2 = st.load(str(d1 / "model.safetensors"))[0], st.load(str(d2 / "model.safetensors"))[0]
    for name in t1:
        if name.endswith("attn.c_attn.bias"):
            C = t1[name].shape[0] // 3
            assert np.abs(t1[name][C:2 * C] - t2[name][C:2 * C]).max() <= lr * steps, name
            t1[name], t2[name] = t1[name].copy(), t2[name].copy()
            t1[name][C:2 * C] = t2[name][C:2 * C] = 0
    a = np.concatenate([t1[k].ravel().astype(np.float64) for k in sorted(t1)])
    b = np.concatenate([t2[k].ravel().astype(np.float64) for k in sorted(t1)])
    return close(a, b)


def test_mpi_is_built_in():
    r = subprocess.run([FDPO, "--version"], capture_output=True, text=True)
    assert "MPI: built in" in r.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpi")
    (tmp / "text.txt").write_text(open(os.path.join(os.path.dirname(__file__), "../../README.md")).read() * 2)
    GPT2(**TINY, seed=3).save_hf(str(tmp / "pol"))
    save_byte_tokenizer(str(tmp / "pol"))
    write_jsonl(tmp / "pairs.jsonl", synthetic_pairs(96, 0))
    GPT2(**TINY, seed=4).save_hf(str(tmp / "pol2"))
    save_byte_tokenizer(str(tmp / "pol2"))
    # 7 prompts: two ranks get 3 and 4, three ranks 2, 2 and 3 (uneven blocks on purpose)
    (tmp / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(7)))
    # fails on the last prompt only, which the last rank holds
    (tmp / "fails_on_6.py").write_text(FAILS_ON_6)
    (tmp / "letters.py").write_text(LETTERS)
    return tmp


PRETRAIN = ["--n-layer", 2, "--n-embd", 32, "--n-head", 2, "--n-positions", 64, "--seq-len", 32, "--batch-size", 2,
            "--grad-accum", 4, "--lr", "1e-3", "--threads", 1, "--seed", 3, "--quiet"]


def test_pretrain_two_ranks_equal_one(work, tmp_path):
    fdpo("pretrain", "--out", tmp_path / "one", "--steps", 5, *PRETRAIN, work / "text.txt")
    mpi(2, "pretrain", "--out", tmp_path / "two", "--steps", 5, *PRETRAIN, work / "text.txt")
    assert close(params(tmp_path / "one"), params(tmp_path / "two"))
    m1 = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(a["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"]


def dpo_args(work, out, *extra):
    return ["dpo", "--model", work / "pol", "--data", work / "pairs.jsonl", "--out", out, "--batch-size", 4,
            "--grad-accum", 4, "--lr", "1e-3", "--threads", 1, "--quiet", "--eval-fraction", 0.25, "--eval-every", 2,
            "--ref-cache-dir", out.parent / f"cache-{out.name}", *extra]


def test_dpo_two_ranks_equal_one_and_resume_with_one(work, tmp_path):
    fdpo(*dpo_args(work, tmp_path / "one", "--steps", 5))
    mpi(2, *dpo_args(work, tmp_path / "two", "--steps", 5))
    assert close(params(tmp_path / "one"), params(tmp_path / "two"))
    # the reference cache is computed by micro-batches spread over the ranks: same bytes
    c1, c2 = os.listdir(tmp_path / "cache-one"), os.listdir(tmp_path / "cache-two")
    assert c1 == c2 and len(c1) == 1
    assert (tmp_path / "cache-one" / c1[0]).read_bytes() == (tmp_path / "cache-two" / c2[0]).read_bytes()
    e1 = json.load(open(tmp_path / "one" / "eval_summary.json"))
    e2 = json.load(open(tmp_path / "two" / "eval_summary.json"))
    assert abs(e1["rewards/accuracies"] - e2["rewards/accuracies"]) <= 1e-9
    # two ranks stop after 3 steps; one rank resumes and finishes: equal to the run above
    mpi(2, *dpo_args(work, tmp_path / "split", "--steps", 5, "--stop-at", 3))
    assert json.load(open(tmp_path / "split" / "training_state.json"))["step"] == 3
    fdpo(*dpo_args(work, tmp_path / "split", "--steps", 5, "--resume"))
    assert close(params(tmp_path / "one"), params(tmp_path / "split"))


def test_collective_time_is_logged_with_two_ranks_only(work, tmp_path):
    """dist/allreduce_seconds and dist/comm_fraction appear in every metrics line under
    mpirun -np 2 (pretrain and dpo) and never for one process. The seconds are bounded by the
    job's wall time measured here, the fraction lies in [0, 1], and seconds / fraction (the
    step's wall time) is itself within the job's wall time."""
    keys = {"dist/allreduce_seconds", "dist/comm_fraction"}
    for cmd in (["pretrain", "--out", tmp_path / "p2", "--steps", 3, *PRETRAIN, work / "text.txt"],
                dpo_args(work, tmp_path / "d2", "--steps", 3)):
        t0 = time.time()
        mpi(2, *cmd)
        wall = time.time() - t0
        rows = [json.loads(l) for l in open(cmd[cmd.index("--out") + 1] / "metrics.jsonl")]
        steps = [m for m in rows if "loss" in m and "tokens_per_sec" in m]
        assert len(steps) == 3
        for m in steps:
            assert keys <= m.keys(), m
            assert 0 <= m["dist/allreduce_seconds"] < wall
            assert 0 <= m["dist/comm_fraction"] <= 1
            if m["dist/comm_fraction"] > 0:
                assert m["dist/allreduce_seconds"] / m["dist/comm_fraction"] < wall
    fdpo("pretrain", "--out", tmp_path / "p1", "--steps", 3, *PRETRAIN, work / "text.txt")
    fdpo(*dpo_args(work, tmp_path / "d1", "--steps", 3))
    for d in ("p1", "d1"):
        rows = [json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")]
        assert rows and all(not (keys & m.keys()) for m in rows)


def test_bucketed_allreduce_sums_every_element():
    """fdpo_dist_sum_f32 over more than one FDPO_DIST_BUCKET (4M floats) plus a remainder: rank r
    contributes r + 1, so every element must be 1 + 2 = 3 (the harness checks each one)."""
    harness = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(FDPO), "fdpo-harness"))
    n = (4 << 20) + 12345
    r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", harness, "dist-allreduce",
                        str(n), "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ranks"] == 2 and out["bytes"] == 4 * n and len(out["seconds"]) == 2


def test_ranks_with_different_flags_are_refused(work, tmp_path):
    base = [FDPO, "pretrain", "--out", tmp_path / "x", "--steps", 2, *PRETRAIN, work / "text.txt"]
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *map(str, base), "--warmup-steps", "1", ":",
           "-np", "1", *map(str, base), "--warmup-steps", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "differs between ranks" in r.stderr and "[rank" in r.stderr, r.stderr


def _private_mounts_work():
    try:
        return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def stale_copies(tmp_path_factory):
    """ref/ and rm/ as rank 0 sees them, and a wrapper that runs a command in a private mount
    namespace where ref/ is refB/, rm/ is rmB/ and evp.jsonl is evpB.jsonl: the same paths, other weights (a node's
    stale copy). pol and ref are the same weights, so one process's KL is 0."""
    d = tmp_path_factory.mktemp("stale")
    for name, seed in (("pol", 3), ("ref", 3), ("refB", 4)):
        GPT2(**TINY, seed=seed).save_hf(str(d / name))
        save_byte_tokenizer(str(d / name))
    rows = synthetic_pairs(8, 0)
    write_jsonl(d / "pairs.jsonl", rows)
    write_jsonl(d / "kto.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"],
                                   "label": bool(i % 2)} for i, r in enumerate(rows)])
    write_jsonl(d / "evp.jsonl", rows[:4])
    write_jsonl(d / "evpB.jsonl", rows[4:])
    write_jsonl(d / "lines.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows[:4]])
    (d / "prompts.txt").write_text("prompt 0:\nprompt 1:\nprompt 2:\nprompt 3:\n")
    q = ["--data", d / "pairs.jsonl", "--threads", 1, "--quiet", "--eval-fraction", 0]
    fdpo("rm", "--model", d / "pol", "--out", d / "rm", "--steps", 1, *q)
    fdpo("rm", "--model", d / "pol", "--out", d / "rmB", "--steps", 2, "--lr", "1e-2", *q)
    wrap = d / "stale.sh"
    wrap.write_text('#!/bin/sh\nexec unshare -m sh -c \'mount --bind "$0/refB" "$0/ref" && mount --bind "$0/rmB" "$0/rm" '
                    '&& mount --bind "$0/evpB.jsonl" "$0/evp.jsonl" && exec "$@"\' "%s" "$@"\n' % d)
    wrap.chmod(0o755)
    return d


@pytest.mark.skipif(not _private_mounts_work(), reason="needs root and unshare -m (a rank's private view of a path)")
@pytest.mark.parametrize("case", ["eval", "kto", "dpo-ref-live", "rl", "online", "rl-rm", "eval-rm", "score-rm",
                                  "eval-pairs"])
def test_ranks_that_read_other_reference_or_reward_model_weights_are_refused(stale_copies, tmp_path, case):
    """Rank 1 reads other weights at the same --ref / rm:DIR path (or other eval --pairs) (a stale node-local copy):
    each rank scored its share with its own model and the sums, which belong to neither,
    were written with exit 0 (eval's KL 0.111 where one process gives 0). Refused on every
    rank, naming what differs."""
    d = stale_copies
    one = ["--threads", 1, "--quiet"]
    gen = ["--data", d / "prompts.txt", "--n", 2, "--max-new-tokens", 4]
    train = ["--steps", 1, "--lr", "1e-3", "--out", tmp_path / "o", *one]
    args, what = {
        "eval": (["eval", "--model", d / "pol", "--ref", d / "ref", *gen, "--out", tmp_path / "e.json", "--threads", 1],
                 "the reference's weights (--ref)"),
        "kto": (["kto", "--model", d / "pol", "--ref", d / "ref", "--data", d / "kto.jsonl", "--batch-size", 2,
                 "--grad-accum", 2, *train], f"the reference's weights (--ref {d / 'ref'})"),
        "dpo-ref-live": (["dpo", "--model", d / "pol", "--ref", d / "ref", "--ref-live", "--data", d / "pairs.jsonl",
                          "--batch-size", 1, "--grad-accum", 2, *train], f"the reference's weights (--ref {d / 'ref'})"),
        "rl": (["rl", "--model", d / "pol", "--ref", d / "ref", *gen, "--reward", "length", "--prompts-per-step", 2,
                *train], f"the reference's weights (--ref {d / 'ref'})"),
        "online": (["online", "--model", d / "pol", "--ref", d / "ref", *gen, "--reward", "length", "--rounds", 1,
                    "--prompts-per-round", 2, "--lr", "1e-3", "--out", tmp_path / "o", *one],
                   f"the reference's weights (--ref {d / 'ref'})"),
        "rl-rm": (["rl", "--model", d / "pol", *gen, "--reward", f"rm:{d / 'rm'}", "--prompts-per-step", 2, *train],
                  f"--reward rm:{d / 'rm'} (the spec and the reward model's weights)"),
        "eval-rm": (["eval", "--model", d / "pol", "--ref", d / "pol", *gen, "--reward", f"rm:{d / 'rm'}",
                     "--out", tmp_path / "e.json", "--threads", 1], "--reward"),
        "eval-pairs": (["eval", "--model", d / "pol", "--ref", d / "pol", *gen, "--pairs", d / "evp.jsonl",
                        "--out", tmp_path / "e.json", "--threads", 1], "--pairs (the pairs' tokens)"),
        "score-rm": (["score", "--model", d / "pol", "--data", d / "lines.jsonl", "--reward", f"rm:{d / 'rm'}",
                      "--out", tmp_path / "s.jsonl", "--threads", 1], "the --data lines, --model, --ref, --reward or --precision"),
    }[case]
    args = [str(a) for a in args]
    r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", FDPO, *args, ":",
                        "-np", "1", str(d / "stale.sh"), FDPO, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"{what} differs between ranks" in r.stderr, r.stderr
    # the same job with the same weights on both ranks runs
    if case in ("eval", "kto"):
        mpi(2, *args)


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
@pytest.mark.parametrize("cmd", ["pretrain", "dpo"])
def test_ranks_whose_cpus_measure_different_bf16_routes_take_rank_0s(work, tmp_path, cmd):
    """The bf16 route is each process's timing measurement: ranks whose probes answer
    differently (FDPO_BF16_PROBE) were refused as "flags differ" once the route was recorded
    in the settings, and dpo's ranks then looked up different reference caches ("the
    reference log-probs' key ... differs between ranks"). Every rank takes rank 0's route:
    the job ends byte-identical to one whose ranks all measured rank 0's, and records it.
    Where a rank cannot take it (FDPO_FORCE_BF16_FALLBACK=1: no AVX512-BF16), every rank takes
    the fallback: byte-identical to a job of two such ranks."""
    args = {"pretrain": ["pretrain", "--steps", 2, *PRETRAIN, work / "text.txt"],
            "dpo": ["dpo", "--model", work / "pol", "--data", work / "pairs.jsonl", "--steps", 2, "--batch-size", 8,
                    "--threads", 1, "--eval-fraction", 0, "--quiet"]}[cmd]

    def job(out, env0, env1):
        line = [*map(str, [FDPO, *args, "--out", tmp_path / out, "--precision", "bf16"])]
        r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", "env", env0, *line, ":",
                            "-np", "1", "env", env1, *line], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return (tmp_path / out / "model.safetensors").read_bytes()

    fp32, dp, fb = "FDPO_BF16_PROBE=fp32", "FDPO_BF16_PROBE=dpbf16", "FDPO_FORCE_BF16_FALLBACK=1"
    mixed, same, other = job("mixed", fp32, dp), job("same", fp32, fp32), job("other", dp, dp)
    assert mixed == same and mixed != other
    assert json.loads((tmp_path / "mixed/training_state.json").read_text())["settings"]["bf16-route"] == "fp32"
    assert job("one_fallback", dp, fb) == job("fallback", fb, fb) != other
    assert json.loads((tmp_path / "one_fallback/training_state.json").read_text())["settings"]["bf16-route"] == "fallback"


def test_ranks_with_different_precisions_are_refused_not_hung(work, tmp_path):
    """The bf16 route's agreement is a collective every rank joins whatever its --precision:
    a bf16 rank waited in it while an fp32 rank had gone on (the job hung instead of ending
    with the ranks' differing flags)."""
    base = [FDPO, "pretrain", "--out", tmp_path / "x", "--steps", 2, *PRETRAIN, work / "text.txt"]
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *map(str, base), "--precision", "bf16", ":",
           "-np", "1", *map(str, base), "--precision", "fp32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "differs between ranks" in r.stderr, r.stderr


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
def test_online_rounds_ranks_sample_on_rank_0s_bf16_route(work, tmp_path):
    """Online rounds sample and score round 0 before their first trainer: the ranks agreed on
    the route only then, so round 0's samples and reference scores of a rank whose probe
    answered otherwise were summed on its own route (the decoder keeps the route it starts
    with). A model wide enough (n_embd 192) for the routes' bits to differ."""
    big = tmp_path / "big"
    GPT2(**{**TINY, "n_embd": 192}, seed=5).save_hf(str(big))
    save_byte_tokenizer(str(big))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}:\n" for i in range(8)))

    def job(out, env0, env1):
        line = [*map(str, [FDPO, "online", "--model", big, "--data", prompts, "--reward",
                           f"cmd:/usr/bin/python3 {work / 'letters.py'}", "--out", tmp_path / out,
                           "--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8, "--lr", "1e-2", "--batch-size", 4,
                           "--epochs", 1, "--beta", 0.1, "--threads", 1, "--precision", "bf16", "--rounds", 2,
                           "--quiet"])]
        r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", "env", env0, *line, ":",
                            "-np", "1", "env", env1, *line], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return [(tmp_path / out / f"round-{k}" / "model.safetensors").read_bytes() for k in (0, 1)]

    fp32, dp, fb = "FDPO_BF16_PROBE=fp32", "FDPO_BF16_PROBE=dpbf16", "FDPO_FORCE_BF16_FALLBACK=1"
    same = job("same", dp, dp)
    assert job("mixed", dp, fp32) == same
    assert job("one_fallback", dp, fb) == job("fallback", fb, fb) != same


def test_eval_ranks_with_different_numbers_of_models_are_refused_not_hung(work, tmp_path):
    """eval samples each --model in turn: a rank given fewer finished while rank 0 waited in
    the next policy's agreement for ever. The ranks now agree on the count first."""
    shutil.copytree(work / "pol", tmp_path / "pol2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    base = [FDPO, "eval", "--ref", work / "pol", "--data", prompts, "--n", 1, "--max-new-tokens", 2, "--threads", 1]
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *map(str, base), "--model", str(work / "pol"),
           "--model", str(tmp_path / "pol2"), ":", "-np", "1", *map(str, base), "--model", str(work / "pol")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "the number of --model differs between ranks" in r.stderr, r.stderr


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
@pytest.mark.parametrize("cmd", ["generate", "eval", "score"])
def test_split_jobs_take_rank_0s_bf16_route(work, tmp_path, cmd):
    """generate, eval and score split one job over the ranks without a trainer: each rank
    summed its block's products on the route its own timing probe picked, so a job whose
    ranks' probes answered differently (FDPO_BF16_PROBE) wrote other bytes (log-probs, KL)
    than either agreeing job. Every rank now takes rank 0's route, or every rank the fallback
    where one cannot (FDPO_FORCE_BF16_FALLBACK=1), said once (eval agrees for each --model).
    A model wide enough (n_embd 192) for the routes' bits to differ: the control asserts it."""
    big = tmp_path / "big"
    GPT2(**{**TINY, "n_embd": 192}, seed=5).save_hf(str(big))
    save_byte_tokenizer(str(big))
    shutil.copytree(big, tmp_path / "big2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}:\n" for i in range(6)))
    lines = tmp_path / "lines.jsonl"
    write_jsonl(str(lines), [{"prompt": f"prompt {i}:", "completion": f" hello world {i}, and more text"} for i in range(6)])
    sample = ["--data", prompts, "--n", 2, "--max-new-tokens", 16]
    args = {"generate": ["generate", "--model", big, *sample],
            "eval": ["eval", "--model", big, "--model", tmp_path / "big2", "--ref", big, *sample],
            "score": ["score", "--model", big, "--ref", big, "--data", lines]}[cmd]

    def job(out, env0, env1):
        line = [*map(str, [FDPO, *args, "--threads", 1, "--precision", "bf16", "--out", tmp_path / out])]
        r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", "env", env0, *line, ":",
                            "-np", "1", "env", env1, *line], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return (tmp_path / out).read_bytes(), r.stderr

    fp32, dp, fb = "FDPO_BF16_PROBE=fp32", "FDPO_BF16_PROBE=dpbf16", "FDPO_FORCE_BF16_FALLBACK=1"
    same, _ = job("same", dp, dp)
    assert job("mixed", dp, fp32)[0] == same
    assert job("mixed_fp32", fp32, dp)[0] == job("same_fp32", fp32, fp32)[0] != same
    one_fallback, err = job("one_fallback", dp, fb)
    assert one_fallback == job("fallback", fb, fb)[0] != same
    assert err.count("every rank multiplies on the fallback route") == 1, err


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
def test_resumed_step_run_with_a_fallback_rank_samples_on_the_fallback(work, tmp_path):
    """online --mode step saved on vdpbf16ps, resumed by two ranks of which one has no
    AVX512-BF16 (FDPO_FORCE_BF16_FALLBACK=1): every rank takes the fallback. The trainer
    agreed on the route before pinning the saved one, so rank 0's pin of dpbf16 undid the
    agreed fallback for its decoder (its samples' log-probs were summed on vdpbf16ps while
    the state said fallback); the run now ends byte-identical, metrics too, to a resume by
    two fallback ranks."""
    big = tmp_path / "big"
    GPT2(**{**TINY, "n_embd": 192}, seed=5).save_hf(str(big))
    save_byte_tokenizer(str(big))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}:\n" for i in range(8)))
    args = ["online", "--mode", "step", "--model", big, "--data", prompts, "--reward",
            f"cmd:/usr/bin/python3 {work / 'letters.py'}", "--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 8,
            "--lr", "1e-2", "--beta", 0.1, "--threads", 1, "--steps", 3, "--quiet", "--precision", "bf16"]
    for out in ("a", "b"):
        r = subprocess.run([FDPO, *map(str, [*args, "--out", tmp_path / out, "--stop-at", 1])], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "FDPO_BF16_PROBE": "dpbf16"})
        assert r.returncode == 0, r.stderr

    def resume(out, env0, env1):
        line = [FDPO, "online", "--out", str(tmp_path / out), "--resume"]
        r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", "env", env0, *line, ":",
                            "-np", "1", "env", env1, *line], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        ms = [json.loads(l) for l in open(tmp_path / out / "metrics.jsonl")]
        return (tmp_path / out / "model.safetensors").read_bytes(), [
            {k: v for k, v in m.items() if k != "tokens_per_sec" and not k.startswith(("time/", "dist/"))} for m in ms]

    fb = "FDPO_FORCE_BF16_FALLBACK=1"
    assert resume("a", "FDPO_BF16_PROBE=dpbf16", fb) == resume("b", fb, fb)


def test_online_rounds_ranks_with_different_rounds_are_refused(work, tmp_path):
    """A rank with fewer --rounds finished while the other waited in the next round's gather
    (the job hung): rounds mode now agrees on --rounds and the flags online.json fixes."""
    line = [FDPO, "online", "--model", work / "pol", "--data", work / "prompts.txt", "--reward",
            f"cmd:/usr/bin/python3 {work / 'letters.py'}", "--out", tmp_path / "o", "--prompts-per-round", 4, "--n", 2,
            "--max-new-tokens", 8, "--batch-size", 4, "--epochs", 1, "--threads", 1, "--quiet"]
    r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *map(str, line), "--rounds", "1",
                        ":", "-np", "1", *map(str, line), "--rounds", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "the flags (--rounds, --precision, ...) differs between ranks" in r.stderr, r.stderr


def test_commands_with_nothing_to_split_print_once(work, tmp_path):
    """tokenize and info ran whole on every rank and printed their output once per rank (every
    command's --help too). Rank 0 alone runs them now (lab, report, pairs, tokenize, tokenizer,
    info) and only its stdout is kept: a job prints what one process prints. The byte
    tokenizer's ids are the text's bytes; info's lines are the config's."""
    (tmp_path / "h.txt").write_bytes(b"hello world")
    info = [f"checkpoint: {work / 'pol'}", "n_embd: 32", "n_layer: 2", "n_head: 4", "vocab_size: 257"]
    for args, expect in ((["tokenize", "--tokenizer", work / "pol", tmp_path / "h.txt"], " ".join(map(str, b"hello world")) + "\n"),
                         (["info", work / "pol"], info), (["lab", "solve", "--n", 10], None),
                         (["dpo", "--help"], None)):
        one = fdpo(*args).stdout
        if isinstance(expect, str):
            assert one == expect
        elif expect:
            assert all(line in one.splitlines() for line in expect), one
        for n in (2, 3):
            assert mpi(n, *args).stdout == one, (n, args)


# preloaded into the ranks: rank 1's first look-up (stat, lstat, access, opendir, open) of a
# path containing $DELAY_PATH sleeps 2 s first, as a slow node or a network file system may
SLOW_RANK_1_SHIM = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
static int done;
static void maybe_sleep(const char *p) {
    const char *r = getenv("OMPI_COMM_WORLD_RANK"), *m = getenv("DELAY_PATH");
    if (done || !p || !r || strcmp(r, "1") || !m || !strstr(p, m)) return;
    done = 1;
    sleep(2);
}
int stat(const char *p, struct stat *s) { maybe_sleep(p); int (*f)(const char *, struct stat *) = dlsym(RTLD_NEXT, "stat"); return f(p, s); }
int lstat(const char *p, struct stat *s) { maybe_sleep(p); int (*f)(const char *, struct stat *) = dlsym(RTLD_NEXT, "lstat"); return f(p, s); }
int access(const char *p, int m) { maybe_sleep(p); int (*f)(const char *, int) = dlsym(RTLD_NEXT, "access"); return f(p, m); }
DIR *opendir(const char *p) { maybe_sleep(p); DIR *(*f)(const char *) = dlsym(RTLD_NEXT, "opendir"); return f(p); }
int open(const char *p, int fl, ...) {
    maybe_sleep(p);
    va_list a; va_start(a, fl); int mode = va_arg(a, int); va_end(a);
    int (*f)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
    return f(p, fl, mode);
}
"""


def test_merge_with_a_slow_rank_succeeds(work, tmp_path):
    """merge runs whole on every rank and rank 0 writes (docs/scaling.md). Every rank looked
    at --out on its own after the claim's barrier, so a rank slower than rank 0's merge and
    save (here rank 1, its first look at OUT delayed 2 s) found the job's own checkpoint and
    ended the job with "already holds a checkpoint". Rank 0's verdict is now every rank's: the
    job succeeds, and OUT holds the weighted average (computed here with numpy)."""
    src, so = tmp_path / "slow.c", tmp_path / "libslow.so"
    src.write_text(SLOW_RANK_1_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), str(src), "-ldl"], check=True, capture_output=True)
    out = tmp_path / "merged"
    r = subprocess.run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", f"LD_PRELOAD={so}",
                        "-x", "DELAY_PATH=merged", FDPO, "merge", "--model", work / "pol", "--model", work / "pol2",
                        "--weight", "0.3,0.7", "--out", out, "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "already holds" not in r.stderr and "weighted average of 2 checkpoints written" in r.stderr, r.stderr
    a, b, m = (st.load(str(d / "model.safetensors"))[0] for d in (work / "pol", work / "pol2", out))
    for k in a:
        np.testing.assert_allclose(m[k].astype(np.float64), 0.3 * a[k].astype(np.float64) + 0.7 * b[k], rtol=1e-6, atol=1e-7)
    # the refusal of an OUT that already holds a checkpoint is said once for the job still
    r = mpi(2, "merge", "--model", work / "pol", "--model", work / "pol2", "--out", out, "--threads", 1, check=False)
    assert r.returncode != 0 and "already holds a checkpoint (model.safetensors)" in r.stderr, r.stderr


def test_tokenizer_train_under_mpirun_is_one_run(work, tmp_path):
    """Every rank trained and took --out's lock: each job failed on some rank ("in use by
    another run (pid 0 holds OUT.lock)"), the files written or not. Rank 0 trains alone, the
    others wait and end with its status: the merges are the naive trainer's, as for one
    process (test_tokenizer_train.py), and a failure is said once."""
    from test_tokenizer_train import naive_train, read_merges
    text = (work / "text.txt").read_text(encoding="utf-8")
    ref = naive_train(text, 300, 2)
    assert len(ref) == 300 - 257
    for n in (2, 3):
        for k in range(3):   # the race went either way
            out = tmp_path / f"t{n}_{k}"
            r = mpi(n, "tokenizer", "train", "--vocab-size", 300, "--out", out, work / "text.txt")
            assert "in use by another run" not in r.stderr, r.stderr
            assert read_merges(out) == ref
            assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    r = mpi(3, "tokenizer", "train", "--vocab-size", 300, "--out", tmp_path / "bad", tmp_path / "missing.txt", check=False)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("missing.txt: cannot open") == 1, r.stderr   # rank 0's message, not one per rank
    # said as one process says it, and no MPI_ABORT banner after it (a review's find)
    assert f"fdpo tokenizer: {tmp_path / 'missing.txt'}: cannot open" in r.stderr and "MPI_ABORT" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.lock").exists()


def test_tokenizer_train_ranks_must_name_one_out(work, tmp_path):
    """Rank 0 trains alone and writes its --out; the other ranks were never read: rank 1's
    --out xb was accepted silently (rc 0, xa written, xb nothing). Every rank now reads its flags
    and the ranks agree as the trainers do, on the place --out names ("xa" and "./xa/" agree)
    and on the other flags and files, before rank 0 trains; a refusal or a rank's bad flag is
    said once, and nothing is made."""
    from test_tokenizer_train import naive_train, read_merges
    base = ["tokenizer", "train", "--vocab-size", 300]
    r = mpmd([*base, "--out", "xa", work / "text.txt"], [*base, "--out", "xb", work / "text.txt"], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    real = os.path.realpath(tmp_path)
    said = f"fdpo tokenizer: --out differs between ranks (rank 0: xa = {real}/xa, rank 1: xb = {real}/xb)"
    assert r.stderr.count("--out differs between ranks") == 1 and said in r.stderr, r.stderr
    assert "MPI_ABORT" not in r.stderr, r.stderr
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    r = mpmd([*base, "--out", "xa", work / "text.txt"], [*base, "--vocab-size", 301, "--out", "xa", work / "text.txt"],
             cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("the flags or files (--vocab-size, --min-frequency, --overwrite, FILE...) "
                                                "differs between ranks") == 1, r.stderr
    r = mpmd([*base, "--out", "xa", work / "text.txt"], [*base, "--vocab-size", "3x00", "--out", "xa", work / "text.txt"],
             cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("fdpo tokenizer: rank 1 of 2 failed: --vocab-size: '3x00' is not an integer") == 1, r.stderr
    assert "MPI_ABORT" not in r.stderr, r.stderr
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    # --help on one rank only: it prints the help, the other stops at the gate (it waited there
    # for ever: a review's find)
    r = mpmd([*base, "--help"], [*base, "--out", "xa", work / "text.txt"], cwd=tmp_path)
    assert r.returncode != 0 and "usage: fdpo tokenizer train" in r.stdout, (r.stdout, r.stderr)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    r = mpmd([*base, "--out", "xa", work / "text.txt"], [*base, "--out", "./xa/", work / "text.txt"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_merges(tmp_path / "xa") == naive_train((work / "text.txt").read_text(encoding="utf-8"), 300, 2)
    assert sorted(os.listdir(tmp_path)) == ["xa", "xa.lock"], os.listdir(tmp_path)


def proc_stat(pid):
    """the fields of /proc/PID/stat after the command's parentheses (the state is [0], the
    parent [1], user and system CPU ticks [11] and [12])"""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def rank_pid(mpirun_pid, rank):
    """pid of the fdpo process of a rank of the job mpirun_pid launched: a descendant of it
    (other jobs may run at the same time: the suite runs on several workers) whose environment
    holds the rank (Open MPI sets OMPI_COMM_WORLD_RANK)"""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            if not (cmd.startswith(FDPO.encode()) and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env):
                continue
            up = int(pid)
            while up > 1 and up != mpirun_pid:
                up = int(proc_stat(up)[1])
        except (OSError, ValueError, IndexError):
            continue
        if up == mpirun_pid:
            return int(pid)
    return None


def test_killed_rank_ends_the_job_and_keeps_the_checkpoint(work, tmp_path):
    out = tmp_path / "k"
    args = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", FDPO,
            *map(str, dpo_args(work, out, "--steps", 400, "--save-every", 2, "--eval-every", 0))]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "training_state.json").exists():
        time.sleep(0.2)
    assert (out / "training_state.json").exists(), "no checkpoint was written"
    pid = rank_pid(p.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert time.time() - t0 < 30, "the job did not stop within seconds"
    assert "rank 1" in err and "signal 9" in err, err   # the launcher names the killed rank
    step = json.load(open(out / "training_state.json"))["step"]
    assert step % 2 == 0 and step < 400
    r = fdpo("info", out)   # the checkpoint loads
    assert "training_state: yes" in r.stdout


def test_sacpo_two_ranks_equal_one(work, tmp_path):
    write_jsonl(tmp_path / "safe.jsonl", synthetic_pairs(64, 5))
    args = ["sacpo", "--model", work / "pol", "--reward-data", work / "pairs.jsonl", "--safety-data", tmp_path / "safe.jsonl",
            "--lambda", "1,2", "--merge", "0.5", "--batch-size", 4, "--grad-accum", 2, "--steps", 3, "--lr", "1e-3",
            "--threads", 1, "--quiet", "--eval-fraction", 0]
    fdpo(*args, "--out", tmp_path / "one")
    mpi(2, *args, "--out", tmp_path / "two")
    assert close(params(tmp_path / "one" / "reward"), params(tmp_path / "two" / "reward"))
    # the second stage starts from the first's (already 2e-7 apart) and doubles the gap (measured 1.1e-6)
    for d in ("lambda-1", "lambda-2", "merge-0-1-w0.5", "merge-1-2-w0.5"):
        assert close(params(tmp_path / "one" / d), params(tmp_path / "two" / d), tol=3e-6), d
    # resume with another number of ranks: 2 ranks run the reward stage and lambda 1, then one
    # process reruns with lambda 1,2 and the merges (only the new stages and merges run)
    i = args.index("--lambda")
    split = args[:i] + ["--lambda", "1"] + args[i + 4:]   # without --merge
    mpi(2, *split, "--out", tmp_path / "split")
    assert not (tmp_path / "split" / "lambda-2").exists()
    written = {d: (tmp_path / "split" / d / "model.safetensors").stat().st_mtime_ns for d in ("reward", "lambda-1")}
    fdpo(*args, "--out", tmp_path / "split")
    for d, t in written.items():   # the completed stages are not run again
        assert (tmp_path / "split" / d / "model.safetensors").stat().st_mtime_ns == t, d
    for d in ("reward", "lambda-1", "lambda-2", "merge-0-1-w0.5", "merge-1-2-w0.5"):
        assert close(params(tmp_path / "one" / d), params(tmp_path / "split" / d), tol=3e-6), d


# ---- sampling split by prompt: generate, eval, online, rl ----

SAMPLE = ["--n", 3, "--max-new-tokens", 10, "--seed", 5, "--threads", 1]


def gen_rows(path):
    return [json.loads(l) for l in open(path)]


def test_generate_is_identical_on_one_two_and_three_ranks(work, tmp_path):
    """Each rank generates its block of prompts, seeded by the prompts' indices among all
    prompts: every completion (tokens, text, finish) is the single process's for 1, 2 and 3
    ranks. The recorded log-prob sums agree to 1e-8 relative, not bit for bit: a decoder row's
    logits round differently with the number of rows batched with it, which changes at the
    block edges; one process shows the same 4e-9 between --batch-size 4 and 3 (checked here)."""
    args = ["generate", "--model", work / "pol", "--data", work / "prompts.txt", *SAMPLE]
    fdpo(*args, "--batch-size", 4, "--out", tmp_path / "g1.jsonl")
    fdpo(*args, "--batch-size", 3, "--out", tmp_path / "b3.jsonl")
    mpi(2, *args, "--batch-size", 4, "--out", tmp_path / "g2.jsonl")
    mpi(3, *args, "--batch-size", 4, "--out", tmp_path / "g3.jsonl")
    one = gen_rows(tmp_path / "g1.jsonl")
    assert [(r["prompt_index"], r["sample_index"]) for r in one] == [(p, k) for p in range(7) for k in range(3)]
    assert len({r["completion"] for r in one}) > 7   # really sampled, not one string
    for other in ("b3", "g2", "g3"):
        rows = gen_rows(tmp_path / f"{other}.jsonl")
        assert len(rows) == len(one)
        for a, b in zip(one, rows):
            a, b = dict(a), dict(b)
            la, lb = a.pop("logp"), b.pop("logp")
            assert a == b, other
            assert abs(la - lb) <= 1e-8 * abs(la), (other, la, lb)


def test_generate_throughput_line_counts_every_ranks_steps_and_tokens(work, tmp_path):
    """The throughput line's parts are the whole job's: decoding steps and tokens summed over the
    ranks (each rank decodes its block of prompts). They were rank 0's alone: 3 ranks and 2
    prompts, where rank 0 has none, printed "0 decoding steps of 0 tokens". The reference, from
    the samples written: a sample of L tokens was fed L - 1 of them by decoding steps (its first
    comes from the prefill), and a rank whose block fits one batch takes max L - 1 steps."""
    (tmp_path / "p2.txt").write_text("a\nhello\n")
    for prompts, n_prompts in ((tmp_path / "p2.txt", 2), (work / "prompts.txt", 7)):
        out = tmp_path / "g.jsonl"
        r = mpi(3, "generate", "--model", work / "pol", "--data", prompts, *SAMPLE, "--batch-size", 16, "--out", out,
                env={**os.environ, "FDPO_DIST_TRACE": str(tmp_path / "trace")})
        # the sum is a collective every rank posts, a rank without prompts too, in one order
        traces = [open(tmp_path / f"trace.{k}").read() for k in range(3)]
        assert traces[1] == traces[0] and traces[2] == traces[0], traces
        rows = gen_rows(out)
        lines = [l for l in r.stderr.splitlines() if "decoding steps" in l]
        assert len(lines) == 1, r.stderr   # rank 0's line only
        steps, tokens = map(int, re.search(r"(\d+) decoding steps of (\d+) tokens", lines[0]).groups())
        assert tokens == sum(len(x["tokens"]) - 1 for x in rows), lines[0]
        blocks = [range(n_prompts * k // 3, n_prompts * (k + 1) // 3) for k in range(3)]   # contiguous, near-equal
        want = sum(max(len(x["tokens"]) for x in rows if x["prompt_index"] in b) - 1 for b in blocks if len(b))
        assert steps == want, (lines[0], want)


def test_eval_report_and_samples_are_identical_on_two_ranks(work, tmp_path):
    """eval splits generation by prompt and the scoring of samples and --pairs by block; the
    blocks are joined bit for bit, so the report and the samples file are the same bytes."""
    args = ["eval", "--model", work / "pol2", "--ref", work / "pol", "--data", work / "prompts.txt", *SAMPLE,
            "--reward", "length", "--divergences", "rkl,js", "--pairs", work / "pairs.jsonl"]
    fdpo(*args, "--out", tmp_path / "e1.json", "--samples-out", tmp_path / "s1.jsonl")
    mpi(2, *args, "--out", tmp_path / "e2.json", "--samples-out", tmp_path / "s2.jsonl")
    assert (tmp_path / "s2.jsonl").read_bytes() == (tmp_path / "s1.jsonl").read_bytes()
    e1, e2 = json.load(open(tmp_path / "e1.json")), json.load(open(tmp_path / "e2.json"))
    assert e1 == e2
    pol = e1["policies"][0]
    assert pol["n_samples"] == 21 and pol["pref_n"] == 96 and pol["kl_seq_mean"] != 0


# -0.0 for a completion with an even number of letters (Python prints it "-0.0", as -cost
# with cost 0), minus that number for the rest: of the text only, as a rank sees only its block
NEGATIVE_ZERO = """import json, sys
for line in sys.stdin.buffer:
    n = sum(ch.isascii() and ch.isalpha() for ch in json.loads(line.decode("utf-8", "replace"))["completion"])
    print(-0.0 if n % 2 == 0 else -float(n))
"""


def test_a_negative_zero_reward_is_kept_on_two_ranks(work, tmp_path):
    """each rank filled its block and left the others +0.0 before the blocks were summed, and
    (-0.0) + (+0.0) is +0.0: a reward program's -0.0 was written 0 under mpirun, -0 by one
    process (eval --samples-out and score), other bytes for other rank counts. Python's json
    reads the one-process file's -0 back as -0.0, as printed (parse_int=float: an int has no -0)."""
    (tmp_path / "negzero.py").write_text(NEGATIVE_ZERO)
    reward = ["--reward", f"cmd:/usr/bin/python3 {tmp_path / 'negzero.py'}"]
    args = ["eval", "--model", work / "pol2", "--ref", work / "pol", "--data", work / "prompts.txt", *SAMPLE, *reward,
            "--divergences", "rkl"]
    fdpo(*args, "--samples-out", tmp_path / "s1.jsonl")
    rewards = [json.loads(line, parse_int=float)["reward"] for line in open(tmp_path / "s1.jsonl")]
    assert len(rewards) == 21 and all(math.copysign(1, r) == -1 for r in rewards), rewards
    assert 0 < rewards.count(0) < 21, rewards
    mpi(2, *args, "--samples-out", tmp_path / "s2.jsonl")
    assert (tmp_path / "s2.jsonl").read_bytes() == (tmp_path / "s1.jsonl").read_bytes()
    score = ["score", "--model", work / "pol2", "--data", tmp_path / "s1.jsonl", *reward, "--threads", 1]
    fdpo(*score, "--out", tmp_path / "c1.jsonl")
    scored = [json.loads(line, parse_int=float)["reward"] for line in open(tmp_path / "c1.jsonl")]
    assert [(r, math.copysign(1, r)) for r in scored] == [(r, math.copysign(1, r)) for r in rewards]
    mpi(2, *score, "--out", tmp_path / "c2.jsonl")
    assert (tmp_path / "c2.jsonl").read_bytes() == (tmp_path / "c1.jsonl").read_bytes()


def letters_reward(work):
    return f"cmd:/usr/bin/python3 {work / 'letters.py'}"


def online_args(work, out, *extra):
    return ["online", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work), "--out", out,
            "--prompts-per-round", 7, "--n", 3, "--max-new-tokens", 10, "--seed", 5, "--threads", 1, "--quiet",
            "--lr", "1e-3", "--beta", 0.1, *extra]


def test_online_rounds_two_ranks_equal_one(work, tmp_path):
    """Two rounds: the sampled pairs are the same bytes (round 1 samples from round 0's model,
    itself equal up to the DPO gradient's summation order), the round statistics are equal and
    the final parameters within 1e-6 relative."""
    extra = ["--rounds", 2, "--batch-size", 1, "--grad-accum", 4, "--epochs", 2]
    fdpo(*online_args(work, tmp_path / "one", *extra))
    mpi(2, *online_args(work, tmp_path / "two", *extra))
    for k in (0, 1):
        a = (tmp_path / "one" / f"round-{k}.pairs.jsonl").read_bytes()
        assert a and a == (tmp_path / "two" / f"round-{k}.pairs.jsonl").read_bytes(), k
    m1 = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        for key in ("objective/scores", "pairs", "val/num_completion_tokens"):
            assert a[key] == b[key], (key, a[key], b[key])
    # round 0 scores the samples under the same model: the same KL; round 1 under round 0's
    # models, 1e-7 apart: KL (a difference of log-probs of size ~entropy) agrees to 1e-6 of them
    assert abs(m1[0]["objective/kl"] - m2[0]["objective/kl"]) <= 1e-12 * m1[0]["objective/entropy"]
    assert abs(m1[1]["objective/kl"] - m2[1]["objective/kl"]) <= 1e-6 * m1[1]["objective/entropy"]
    assert close_outside_key_bias(tmp_path / "one" / "round-1", tmp_path / "two" / "round-1", 1e-3, 8)


def test_online_rounds_split_each_step_over_the_ranks(work, tmp_path):
    """--grad-accum 1 (one micro-batch per step): under MPI the round's f-DPO gives each rank
    its part of every step's pairs; the parameters equal one process's within 1e-6 and so does
    the logged gradient norm (a rank that also computed the other's part would double it, which
    AdamW and clipping would hide in the parameters)."""
    extra = ["--rounds", 1, "--batch-size", 4, "--epochs", 2]
    fdpo(*online_args(work, tmp_path / "one", *extra))
    mpi(2, *online_args(work, tmp_path / "two", *extra))
    assert (tmp_path / "one" / "round-0.pairs.jsonl").read_bytes() == (tmp_path / "two" / "round-0.pairs.jsonl").read_bytes()
    assert close_outside_key_bias(tmp_path / "one" / "round-0", tmp_path / "two" / "round-0", 1e-3, 4)
    # not bit-equal: two blocks summed by the allreduce (bit-equal was rank 0 doing all of it)
    assert not np.array_equal(params(tmp_path / "one" / "round-0"), params(tmp_path / "two" / "round-0"))
    s1 = [json.loads(l) for l in open(tmp_path / "one" / "round-0" / "metrics.jsonl")]
    s2 = [json.loads(l) for l in open(tmp_path / "two" / "round-0" / "metrics.jsonl")]
    assert len(s1) == len(s2) >= 2   # up to 7 pairs, 4 per step, 2 epochs
    for a, b in zip(s1, s2):
        for key in ("grad_norm", "loss"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(abs(a[key]), 1e-3), (key, a[key], b[key])


def test_online_steps_two_ranks_equal_one(work, tmp_path):
    """--mode step: sampling is split by prompt; each rank computes the loss and gradient of
    its block of the step's pairs, summed by the trainer: parameters within 1e-6 relative (the
    float sums run in another order), gradient norms and losses within 1e-6 (a rank computing
    the other's block too would double the norm; clipping and AdamW would hide it in the
    parameters). (rl's rank blocks: tests/py/test_rl_mpi.py.)"""
    runs = {"online": online_args(work, None, "--mode", "step", "--steps", 3)}
    for name, args in runs.items():
        i = args.index(None)
        fdpo(*args[:i], tmp_path / f"{name}1", *args[i + 1:])
        mpi(2, *args[:i], tmp_path / f"{name}2", *args[i + 1:])
        p1, p2 = params(tmp_path / f"{name}1"), params(tmp_path / f"{name}2")
        assert not np.array_equal(p1, params(work / "pol")), name   # it trained
        m1 = [json.loads(l) for l in open(tmp_path / f"{name}1" / "metrics.jsonl")]
        m2 = [json.loads(l) for l in open(tmp_path / f"{name}2" / "metrics.jsonl")]
        assert len(m1) == len(m2) == 3
        assert close_outside_key_bias(tmp_path / f"{name}1", tmp_path / f"{name}2", 1e-3, 3)
        assert not np.array_equal(p1, p2)   # bit-equal was rank 0 computing every pair
        for a, b in zip(m1, m2):
            assert a["objective/scores"] == b["objective/scores"] and a["pairs"] == b["pairs"] > 0
            assert abs(a["objective/kl"] - b["objective/kl"]) <= 1e-6 * a["objective/entropy"]
            for key in ("grad_norm", "loss"):
                assert abs(a[key] - b[key]) <= 1e-6 * max(abs(a[key]), 1e-3), (key, a[key], b[key])


@pytest.mark.parametrize("cmd", ["online", "rl", "eval", "generate"])
def test_a_failing_rank_ends_every_rank_with_its_message(work, tmp_path, cmd):
    """The reward program fails on prompt 6, which only the last rank samples: the job ends
    quickly, non-zero, and the other rank reports the failing rank's message (no rank waits
    in a collective). generate has no reward: a prompt too long for the model fails it, on
    every rank before any sampling (named by its line), and the job ends all the same."""
    reward = f"cmd:/usr/bin/python3 {work / 'fails_on_6.py'}"
    if cmd == "online":
        args = online_args(work, tmp_path / "o", "--rounds", 1)
        args[args.index("--reward") + 1] = reward
    elif cmd == "rl":
        args = ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", reward, "--out", tmp_path / "o",
                "--prompts-per-step", 7, "--n", 2, "--max-new-tokens", 4, "--steps", 1, "--threads", 1]
    elif cmd == "eval":
        args = ["eval", "--model", work / "pol", "--ref", work / "pol", "--data", work / "prompts.txt", "--n", 2,
                "--max-new-tokens", 4, "--reward", reward, "--threads", 1]
    else:
        (tmp_path / "p.txt").write_text("".join(f"p{i}\n" for i in range(6)) + "x" * 80 + "\n")
        args = ["generate", "--model", work / "pol", "--data", tmp_path / "p.txt", "--n", 1, "--max-new-tokens", 4,
                "--threads", 1, "--out", tmp_path / "g.jsonl"]
    t0 = time.time()
    r = mpi(2, *args, check=False, timeout=120)
    assert r.returncode != 0
    assert time.time() - t0 < 60, "the job did not stop within seconds"
    # the failing rank's message, naming the prompt by its line in --data. Rank 1 prints it
    # itself; rank 0 also has it ("rank 1 of 2 failed: ...") but whichever rank calls
    # MPI_Abort first ends the other, so which of the two lines appears is a race.
    if cmd == "generate":
        assert f"{tmp_path / 'p.txt'}:7: the prompt's 80 tokens leave no room to generate" in r.stderr, r.stderr
        assert not (tmp_path / "g.jsonl").exists()
    else:
        assert "[rank 1/2]" in r.stderr or "rank 1 of 2 failed" in r.stderr, r.stderr
        assert "crashed on prompt 6" in r.stderr, r.stderr
        # the failing rank gives its own message (rl's said "rank 1 of 2 failed" of itself)
        assert "[rank 1/2]: rank 1 of 2 failed" not in r.stderr, r.stderr


# ---- rm and kto: data-parallel through the trainer ----

def test_rm_two_ranks_equal_one(work, tmp_path):
    args = ["rm", "--model", work / "pol", "--data", work / "pairs.jsonl", "--batch-size", 4, "--grad-accum", 4,
            "--steps", 5, "--lr", "1e-3", "--threads", 1, "--quiet", "--eval-fraction", 0.25, "--eval-every", 2]
    fdpo(*args, "--out", tmp_path / "one")
    mpi(2, *args, "--out", tmp_path / "two")
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "two", 1e-3, 5)
    e1 = json.load(open(tmp_path / "one" / "eval_summary.json"))
    e2 = json.load(open(tmp_path / "two" / "eval_summary.json"))
    assert e1["pairs"] == e2["pairs"] == 24
    assert abs(e1["eval_loss"] - e2["eval_loss"]) <= 1e-6 * abs(e1["eval_loss"])
    assert e1["eval_accuracy"] == e2["eval_accuracy"]


def test_kto_two_ranks_equal_one(work, tmp_path):
    """KTO's KL reference point z0 is the mean over one micro-batch's mismatched pairs
    (docs/kto.md); a micro-batch is computed whole by one rank, so every z0 is the single
    process's and the logged kl (their mean) agrees."""
    rows = []
    for r in synthetic_pairs(48, 1):
        rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                 {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    write_jsonl(tmp_path / "kto.jsonl", rows)
    args = ["kto", "--model", work / "pol", "--data", tmp_path / "kto.jsonl", "--batch-size", 4, "--grad-accum", 4,
            "--steps", 5, "--lr", "1e-3", "--threads", 1, "--quiet", "--eval-fraction", 0.25, "--eval-every", 2]
    fdpo(*args, "--out", tmp_path / "one")
    mpi(2, *args, "--out", tmp_path / "two")
    assert close_outside_key_bias(tmp_path / "one", tmp_path / "two", 1e-3, 5)
    m1 = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    for a, b in zip(m1, m2):
        for key in ("kl", "eval_kl", "loss", "eval_loss"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5 * max(abs(a[key]), 1e-3), (key, a[key], b[key])



def step_tokens(out):
    """The tokens each logged step counted, from its metrics line: tokens_per_sec x the step's
    seconds (dist/allreduce_seconds / dist/comm_fraction, both over the same step clock)."""
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [m for m in rows if "tokens_per_sec" in m]
    assert steps and all(m["dist/comm_fraction"] > 0 for m in steps)
    return [m["tokens_per_sec"] * m["dist/allreduce_seconds"] / m["dist/comm_fraction"] for m in steps]


@pytest.mark.parametrize("cmd", ["dpo-shared", "dpo-plain", "kto", "rm"])
def test_tokens_per_sec_counts_the_steps_tokens_once_whatever_the_ranks(work, tmp_path, cmd):
    """One step over the whole data file (12 micro-batches of 4), so its token count is known
    exactly from the file, counted here with the documented packings of the byte tokenizer
    (every completion ends with <|endoftext|>): dpo per pair (docs/dpo.md "Pair layouts")
    shared (P - 1) + Cw + Cl, plain (P + Cw - 1) + (P + Cl - 1); rm (docs/rm.md) P + C per
    sequence, the completion's <|endoftext|> dropped; kto (docs/kto.md) P + C - 1 per example
    plus its KL pair, prompt (i + 1) mod n with completion i, so twice that over a micro-batch.
    Two and three ranks log the job's count (dpo, kto and rm summed an already summed count
    over the ranks: N times the tokens)."""
    rows = synthetic_pairs(48, 5)
    kind = cmd.split("-")[0]
    if kind == "kto":
        data = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows[:24] for side in ("chosen", "rejected")]
        want = sum(2 * (len(r["prompt"]) + len(r["completion"]) + 1 - 1) for r in data)
    else:
        data = rows
        P = lambda r: len(r["prompt"])
        Cw = lambda r: len(r["chosen"]) + 1   # + <|endoftext|>
        Cl = lambda r: len(r["rejected"]) + 1
        want = sum({"dpo-shared": (P(r) - 1) + Cw(r) + Cl(r), "dpo-plain": (P(r) + Cw(r) - 1) + (P(r) + Cl(r) - 1),
                    "rm": (P(r) + Cw(r) - 1) + (P(r) + Cl(r) - 1)}[cmd] for r in rows)
    write_jsonl(tmp_path / "data.jsonl", data)
    extra = ["--layout", cmd.split("-")[1]] if kind == "dpo" else []
    for n in (2, 3):
        out = tmp_path / f"{cmd}{n}"
        mpi(n, kind, "--model", work / "pol", "--data", tmp_path / "data.jsonl", "--out", out, "--steps", 1,
            "--batch-size", 4, "--grad-accum", 12, "--threads", 1, "--eval-fraction", 0, "--quiet", *extra)
        [got] = step_tokens(out)
        assert abs(got - want) <= 1e-6 * want, (n, got, want)


def test_online_step_tokens_per_sec_counts_the_pairs_positions(work, tmp_path):
    """--mode step counts what its f-DPO step runs through the policy, as `fdpo dpo` and the
    rounds do: the shared layout's (P - 1) + Cw + Cl per pair (docs/dpo.md "Pair layouts"),
    not 2P + Cw + Cl. No sample ends with <|endoftext|> here (val/contain_eos_token 0), so
    every completion is --max-new-tokens 10 long; the prompts are "prompt i:" (9 bytes)."""
    out = tmp_path / "o"
    mpi(2, *online_args(work, out, "--mode", "step", "--steps", 2))
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert all(m["val/contain_eos_token"] == 0 and m["pairs"] > 0 for m in rows)
    for m, got in zip(rows, step_tokens(out)):
        want = m["pairs"] * ((9 - 1) + 10 + 10)
        assert abs(got - want) <= 1e-6 * want, (got, want)

# ---- LoRA dropout under MPI ----

LORA = ["--lora-r", 4, "--lora-targets", "c_attn,c_proj,c_fc", "--lr", "1e-3", "--threads", 1, "--quiet"]


def lora_dropout_args(work, tmp_path, cmd):
    """A LoRA run whose micro-batches the ranks share (3 micro-batches a step: 2 ranks take 2
    and 1, 3 ranks 1 each), or (online --mode step, rl) whose step each rank computes a block
    of, the blocks' sizes following the rank count."""
    if cmd in ("dpo", "rm"):
        cache = ["--ref-cache-dir", tmp_path / "cache"] if cmd == "dpo" else []
        return [cmd, "--model", work / "pol", "--data", work / "pairs.jsonl", "--batch-size", 3, "--grad-accum", 3,
                *cache, *LORA]
    if cmd == "sft":
        write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in synthetic_pairs(32, 3)])
        return ["sft", "--model", work / "pol", "--data", tmp_path / "sft.jsonl", "--seq-len", 48, "--batch-size", 2,
                "--grad-accum", 3, "--seed", 3, *LORA]
    if cmd == "kto":
        rows = []
        for r in synthetic_pairs(24, 1):
            rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                     {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
        write_jsonl(tmp_path / "kto.jsonl", rows)
        return ["kto", "--model", work / "pol", "--data", tmp_path / "kto.jsonl", "--batch-size", 4, "--grad-accum", 3, *LORA]
    sampling = ["--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work), "--n", 3,
                "--max-new-tokens", 10, "--seed", 5, *LORA]
    if cmd == "online-step":
        return ["online", "--mode", "step", "--prompts-per-round", 7, "--beta", 0.1, *sampling]
    if cmd == "rl-repeated":   # one prompt on every line: one process packed the groups' equal prompts as
        (tmp_path / "same.txt").write_text("prompt:\n" * 7)   # one, a rank its own copy (rows shifted)
        sampling[sampling.index(work / "prompts.txt")] = tmp_path / "same.txt"
    return ["rl", "--prompts-per-step", 7, *sampling]


def adapter(d):
    t = st.load(str(d / "adapter_model.safetensors"))[0]
    return np.concatenate([t[k].ravel().astype(np.float64) for k in sorted(t)])


def adapters_close(a, b, tol):
    """Relative over the adapter vector within tol, each element within lr x steps (3e-3): an
    element whose true gradient is ~0 (lora_A on a near-dead GELU unit's column) gets rounding
    noise that Adam scales up, as the key bias does in close_outside_key_bias."""
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    return rel <= tol and np.abs(a - b).max() <= 3e-3, rel


@pytest.mark.parametrize("cmd", ["dpo", "sft", "kto", "rm", "online-step", "rl", "rl-repeated"])
def test_lora_dropout_runs_equal_one_process_on_two_and_three_ranks_and_resume_with_one(work, tmp_path, cmd):
    """A token's LoRA dropout mask is keyed by its place in the step (docs/lora.md), not by the
    forward count of the rank that computes it: with --lora-dropout 0.1 the adapters of 2 and 3
    ranks are within 1e-6 of one process's (measured 9e-9 for dpo, as with dropout 0; masks
    keyed per rank gave 1.2e-2), and a run saved by 3 ranks and finished by one equals the
    uninterrupted run. rl: 9.4e-7 with 3 ranks, nearly all of it one lora_A element of a
    near-dead GELU unit (dropout 0: 1.3e-7), so 3e-6 there."""
    tol = 3e-6 if cmd.startswith("rl") else 1e-6
    args = lora_dropout_args(work, tmp_path, cmd) + ["--steps", 3]
    fdpo(*args, "--lora-dropout", 0, "--out", tmp_path / "nodrop")
    fdpo(*args, "--lora-dropout", 0.1, "--out", tmp_path / "one")
    one = adapter(tmp_path / "one")
    # the masks are in play: far beyond the tolerance below from the run without dropout
    nodrop = adapter(tmp_path / "nodrop")
    assert np.linalg.norm(one - nodrop) / np.linalg.norm(one) > 1e-4
    for n in (2, 3):
        mpi(n, *args, "--lora-dropout", 0.1, "--out", tmp_path / f"np{n}")
        ok, rel = adapters_close(one, adapter(tmp_path / f"np{n}"), tol)
        assert ok, (n, rel)
    mpi(3, *args, "--lora-dropout", 0.1, "--stop-at", 1, "--out", tmp_path / "split")
    assert json.load(open(tmp_path / "split" / "training_state.json"))["step"] == 1
    fdpo(*args, "--lora-dropout", 0.1, "--resume", "--out", tmp_path / "split")
    ok, rel = adapters_close(one, adapter(tmp_path / "split"), tol)
    assert ok, rel


# ---- --allreduce-overlap ----

def test_allreduce_overlap_gives_the_same_parameters(work, tmp_path):
    """--allreduce-overlap sums each layer's gradient (MPI_Iallreduce per contiguous piece)
    while backward computes the layers below. With two ranks every element is a + b either
    way (float addition is commutative), so pretrain, dpo, rm (score head: the hook runs in
    the trunk's backward) and kto give bit-identical parameters. With three ranks Open MPI
    may associate (a + b) + c differently for other message sizes and for its non-blocking
    algorithms (MPI promises nothing across them): measured 3.5e-8 relative, tested within
    1e-6 like the rank-count comparisons above."""
    rows = []
    for r in synthetic_pairs(32, 1):
        rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                 {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    write_jsonl(tmp_path / "kto.jsonl", rows)
    common = ["--batch-size", 4, "--grad-accum", 4, "--steps", 3, "--lr", "1e-3", "--threads", 1, "--quiet",
              "--eval-fraction", 0]
    runs = {"pretrain": ["pretrain", "--steps", 3, *PRETRAIN, work / "text.txt"],
            "dpo": ["dpo", "--model", work / "pol", "--data", work / "pairs.jsonl", *common],
            "rm": ["rm", "--model", work / "pol", "--data", work / "pairs.jsonl", *common],
            "kto": ["kto", "--model", work / "pol", "--data", tmp_path / "kto.jsonl", *common]}
    for name, args in runs.items():
        mpi(2, *args, "--out", tmp_path / f"{name}-plain")
        mpi(2, *args, "--out", tmp_path / f"{name}-overlap", "--allreduce-overlap")
        a, b = params(tmp_path / f"{name}-plain"), params(tmp_path / f"{name}-overlap")
        assert np.array_equal(a, b), (name, np.abs(a - b).max())
        # and the sums really ran during backward: both layers' (rm: on the reward model that
        # replaced the language model after the trainer opened; it used to sum blocking)
        rows = [json.loads(l) for l in open(tmp_path / f"{name}-overlap" / "metrics.jsonl")]
        assert rows and all(m["dist/overlapped_layers"] == 2 for m in rows if "loss" in m), (name, rows)
    three = ["pretrain", "--steps", 3, *PRETRAIN, work / "text.txt"]
    three[three.index("--grad-accum") + 1] = 6
    mpi(3, *three, "--out", tmp_path / "p3-plain")
    mpi(3, *three, "--out", tmp_path / "p3-overlap", "--allreduce-overlap")
    assert close(params(tmp_path / "p3-plain"), params(tmp_path / "p3-overlap"))
    # one process: the option changes nothing (there is nothing to sum)
    fdpo(*runs["pretrain"], "--out", tmp_path / "p1", "--allreduce-overlap")
    fdpo(*runs["pretrain"], "--out", tmp_path / "p1-plain")
    assert np.array_equal(params(tmp_path / "p1"), params(tmp_path / "p1-plain"))


@pytest.mark.parametrize("np_,accum", [(2, 1), (3, 2)])
def test_allreduce_overlap_with_a_rank_without_micro_batches(work, tmp_path, np_, accum):
    """--grad-accum smaller than the ranks leaves a rank without a micro-batch: it summed the
    layers with blocking calls while the others had non-blocking ones in flight, and the job
    hung (rc 124 under a timeout). It now starts the same sums in the same order; the result
    is the plain run's (two ranks: bit-identical, as above; three: within close())."""
    args = ["pretrain", "--steps", 3, *PRETRAIN, work / "text.txt"]
    args[args.index("--grad-accum") + 1] = accum
    mpi(np_, *args, "--out", tmp_path / "plain", timeout=120)
    mpi(np_, *args, "--out", tmp_path / "overlap", "--allreduce-overlap", timeout=120)
    a, b = params(tmp_path / "plain"), params(tmp_path / "overlap")
    assert np.array_equal(a, b) if np_ == 2 else close(a, b), np.abs(a - b).max()


def test_allreduce_overlap_with_lora_is_refused_before_any_work(work, tmp_path):
    """--allreduce-overlap with LoRA is refused under mpirun; online and sacpo met the refusal
    when the trainer opened, after sampling a round or building the reference cache. Now every
    command refuses it with its options, before it writes anything."""
    lora = ["--lora-r", 2, "--allreduce-overlap", "--threads", 1, "--quiet"]
    cmds = {"dpo": ["dpo", "--model", work / "pol", "--data", work / "pairs.jsonl", "--steps", 1],
            "online": ["online", "--model", work / "pol", "--data", work / "prompts.txt", "--reward",
                       letters_reward(work), "--rounds", 1, "--prompts-per-round", 4, "--n", 2, "--max-new-tokens", 4],
            "sacpo": ["sacpo", "--model", work / "pol", "--reward-data", work / "pairs.jsonl", "--safety-data",
                      work / "pairs.jsonl", "--lambda", 1, "--steps", 1],
            "rl": ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
                   "--prompts-per-step", 4, "--n", 2, "--max-new-tokens", 4, "--steps", 1]}
    for name, args in cmds.items():
        out = tmp_path / name
        r = mpi(2, *args, *lora, "--out", out, check=False, timeout=120)
        assert r.returncode != 0 and ("--allreduce-overlap: not available with --lora-r (the adapters' gradients "
                                      "are summed after backward)") in r.stderr, (name, r.stderr)
        assert "round 0" not in r.stderr and "reference" not in r.stderr.replace("--ref", ""), (name, r.stderr)
        assert not out.exists() or not any(out.iterdir()), (name, sorted(p.name for p in out.iterdir()))


@pytest.mark.parametrize("name", ["pretrain", "dpo", "kto", "rm", "online", "rl"])
def test_every_rank_posts_the_same_collectives_in_one_order(work, tmp_path, name):
    """MPI asks every rank to post the same collectives in the same order, blocking and
    non-blocking alike. With --allreduce-overlap and a rank without a micro-batch (3 ranks,
    2 micro-batches a step), that rank posted the step's blocking metric sums before the
    layers' non-blocking sums, the others after (Open MPI matches the two kinds apart, so it
    ran; another MPI might hang). FDPO_DIST_TRACE=PREFIX writes each rank's collectives, in
    the order posted, to PREFIX.RANK: the three traces must be the same lines."""
    rows = []
    for r in synthetic_pairs(8, 1):
        rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                 {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    write_jsonl(tmp_path / "kto.jsonl", rows)
    common = ["--batch-size", 4, "--grad-accum", 2, "--steps", 2, "--threads", 1, "--quiet", "--eval-fraction", 0]
    args = {"pretrain": ["pretrain", "--steps", 2, *PRETRAIN, work / "text.txt"],
            "dpo": ["dpo", "--model", work / "pol", "--data", work / "pairs.jsonl", *common],
            "rm": ["rm", "--model", work / "pol", "--data", work / "pairs.jsonl", *common],
            "kto": ["kto", "--model", work / "pol", "--data", tmp_path / "kto.jsonl", *common],
            "online": ["online", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
                       "--mode", "step", "--steps", 2, "--prompts-per-round", 7, "--n", 3, "--max-new-tokens", 10,
                       "--threads", 1, "--quiet"],
            "rl": ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
                   "--prompts-per-step", 7, "--n", 2, "--max-new-tokens", 4, "--steps", 2, "--threads", 1]}[name]
    if name == "pretrain":
        args[args.index("--grad-accum") + 1] = 2
    mpi(3, *args, "--out", tmp_path / "o", "--allreduce-overlap", timeout=120,
        env={**os.environ, "FDPO_DIST_TRACE": str(tmp_path / "trace")})
    traces = [open(tmp_path / f"trace.{r}").read().splitlines() for r in range(3)]
    assert sum(l.startswith("iallreduce ") for l in traces[0]) >= 2 * 2, traces[0]   # two layers' pieces, each step
    for r in (1, 2):
        diff = next((i for i, (a, b) in enumerate(zip(traces[0], traces[r])) if a != b), None)
        assert traces[r] == traces[0], (r, diff, traces[0][diff or 0:][:6], traces[r][diff or 0:][:6])


def test_a_stop_signal_to_one_rank_stops_every_rank_after_rank_0_saved(work, tmp_path):
    """SIGTERM to rank 1 alone: it ended saying "checkpoint saved" (rank 0 saves), and its
    abort killed rank 0 before or during the save, so the checkpoint was an older one or none.
    The ranks now agree on the stop each step, rank 0 saves, then all end; the checkpoint is
    the step the message names and it resumes."""
    out = tmp_path / "s"
    args = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", FDPO,
            *map(str, ["pretrain", "--steps", 100000, *PRETRAIN, "--eval-every", 0, "--out", out, work / "text.txt"])]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, pid = time.time() + 60, None
    while time.time() < deadline and pid is None:
        time.sleep(0.2)
        pid = rank_pid(p.pid, 1)
    assert pid is not None
    time.sleep(2)   # some steps run (none is saved: no --save-every)
    os.kill(pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    steps = {int(w.split()[0]) for w in err.split("interrupted after step ")[1:]}
    assert len(steps) == 1, err   # every rank that says so names the same step
    assert json.load(open(out / "training_state.json"))["step"] == steps.pop(), err
    assert "training_state: yes" in fdpo("info", out).stdout


def test_online_rounds_make_out_on_rank_0_only(work, tmp_path):
    """every rank made OUT before rank 0's lock refused it: inside a running run's OUT rank 1
    created the new directory, which that run's saves then carried along"""
    hold = tmp_path / "hold"
    p = subprocess.Popen([FDPO, "pretrain", "--steps", "100000", *map(str, PRETRAIN), "--eval-every", "0", "--out", str(hold),
                          str(work / "text.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "hold.lock").exists():
            time.sleep(0.1)
        r = mpi(2, "online", "--model", work / "pol", "--data", work / "prompts.txt", "--reward",
                f"cmd:/usr/bin/python3 {work / 'letters.py'}", "--rounds", 1, "--threads", 1, "--quiet",
                "--out", hold / "new" / "sub", check=False, timeout=120)
        assert r.returncode != 0 and "the directory of a running run" in r.stderr, r.stderr
        assert not (hold / "new").exists()
    finally:
        p.kill()
        p.wait()


def test_ranks_disagreeing_on_allreduce_overlap_are_refused(work, tmp_path):
    base = [FDPO, "pretrain", "--out", tmp_path / "x", "--steps", 2, *PRETRAIN, work / "text.txt"]
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *map(str, base), "--allreduce-overlap", ":",
           "-np", "1", *map(str, base)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--allreduce-overlap differs between ranks" in r.stderr, r.stderr


def mpmd(rank0, rank1, timeout=60, cwd=None, wdirs=None):
    """mpirun with one command line per rank (-np 1 RANK0 : -np 1 RANK1), started in cwd, and
    with wdirs=(D0, D1) each rank in its own working directory (-wdir). A job whose ranks
    wait for each other for ever fails the test as hung after `timeout` seconds, every process
    of it killed (the ranks are in mpirun's session, each in its own process group)."""
    w0, w1 = (["-wdir", str(wdirs[0])], ["-wdir", str(wdirs[1])]) if wdirs else ([], [])
    p = subprocess.Popen([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *w0, FDPO, *map(str, rank0), ":",
                          "-np", "1", *w1, FDPO, *map(str, rank1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and int(proc_stat(pid)[3]) == p.pid:   # [3]: the session
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
        p.communicate()
        pytest.fail(f"the job hung: killed after {timeout} s")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_ranks_with_different_out_are_refused(work, tmp_path):
    """docs/scaling.md: every rank gets the same flags, and rank 0 alone writes the run. --out
    was outside the ranks' flag hash: rank 1's --out y was accepted (rc 0) and became an empty
    directory while the run went to rank 0's x. Now the job is refused by name, nothing made."""
    base = ["pretrain", "--steps", 2, *PRETRAIN, work / "text.txt"]
    r = mpmd([*base, "--out", tmp_path / "x"], [*base, "--out", tmp_path / "y"])
    assert r.returncode != 0
    assert "--out differs between ranks" in r.stderr and "[rank" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_online_rounds_ranks_with_different_out_are_refused(work, tmp_path):
    """online's rounds mode locks and makes OUT itself, not through the trainers' start: rank
    1's --out y was ignored (rc 0 where no round trained; a generic "flags differ" after round
    0's samples where one did, its round-0.partial left). Refused by name, nothing made (review
    of wave 46)."""
    r = mpmd(online_args(work, tmp_path / "x", "--rounds", 1), online_args(work, tmp_path / "y", "--rounds", 1))
    assert r.returncode != 0
    assert "--out differs between ranks" in r.stderr and "[rank" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_ranks_with_different_ref_cache_dir_are_refused_by_name(work, tmp_path):
    """docs/scaling.md: a flag that differs between ranks is named. Rank 0 alone looks for the
    cache file and tells every rank "hit", which each then read from its own --ref-cache-dir:
    rank 1's, without the file, failed with a bare "cb/ref-....safetensors: No such file"."""
    fdpo(*dpo_args(work, tmp_path / "first", "--steps", 1))   # the cache, in cache-first
    base = dpo_args(work, tmp_path / "x", "--steps", 2)
    at = base.index("--ref-cache-dir") + 1
    other = list(base)
    other[at] = tmp_path / "cb"
    r = mpmd([*base[:at], tmp_path / "cache-first", *base[at + 1:]], other)
    assert r.returncode != 0
    assert "--ref-cache-dir differs between ranks" in r.stderr and "[rank" in r.stderr, r.stderr
    assert "No such file" not in r.stderr, r.stderr


def test_ranks_naming_one_out_two_ways_agree(work, tmp_path):
    """--out (and --ref-cache-dir) were compared as text: an MPMD job whose ranks named one
    directory as "xa" and "./xa" was refused ("--out differs between ranks") though both name
    the same place. What they name is compared now: the run goes to that one directory."""
    base = ["pretrain", "--steps", 2, *PRETRAIN, work / "text.txt"]
    r = mpmd([*base, "--out", "xa"], [*base, "--out", "./xa/"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "xa" / "model.safetensors").exists()
    assert json.loads((tmp_path / "xa" / "training_state.json").read_text())["step"] == 2
    (tmp_path / "sub").mkdir()
    r = mpmd(online_args(work, "xo", "--rounds", 1), online_args(work, "sub/../xo", "--rounds", 1), cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "xo" / "round-0" / "model.safetensors").exists()
    a0 = [str(a) for a in dpo_args(work, tmp_path / "xd", "--steps", 2)]
    at = a0.index("--ref-cache-dir") + 1
    a0[at] = "cache"
    a1 = list(a0)
    a1[at] = "./sub/../cache/"
    r = mpmd(a0, a1, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 1
    made = sorted(n for n in os.listdir(tmp_path) if not n.endswith(".lock"))   # a run's lock file stays
    assert made == ["cache", "sub", "xa", "xd", "xo"], made


def test_sacpo_ranks_naming_one_out_two_ways_agree(work, tmp_path):
    """sacpo's plan held each stage's directory as text (under --out), so "s" and "./s" were
    two plans ("the stages ... differ between ranks"); the places are compared now, and the
    stages' trainers agree too"""
    args = ["sacpo", "--model", work / "pol", "--reward-data", work / "pairs.jsonl", "--safety-data",
            work / "pairs.jsonl", "--batch-size", 4, "--steps", 1, "--lr", "1e-3", "--threads", 1, "--quiet",
            "--lambda", 1]
    r = mpmd([*args, "--out", "s"], [*args, "--out", "./s/"], cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    for stage in ("reward", "lambda-1"):
        assert json.loads((tmp_path / "s" / stage / "training_state.json").read_text())["step"] == 1
    r = mpmd([*args, "--out", tmp_path / "a" / "s"], [*args, "--out", tmp_path / "b" / "s"])
    assert r.returncode != 0
    assert "the stages (--lambda, --merge, --order, --beta, the data or --out) differs between ranks" in r.stderr, \
        r.stderr


@pytest.mark.parametrize("cmd", ["pretrain", "online", "dpo"])
def test_ranks_naming_two_places_with_one_text_are_refused(work, tmp_path, cmd):
    """The same text is not the same place: "x" from two working directories (-wdir) names two
    directories. Compared as text, the job ran and rank 1's x got nothing (rank 0 alone writes).
    Refused now, naming both places; nothing is made in either."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    if cmd == "pretrain":
        args, flag = ["pretrain", "--steps", 2, *PRETRAIN, work / "text.txt", "--out", "x"], "--out"
    elif cmd == "online":
        args, flag = online_args(work, "x", "--rounds", 1), "--out"
    else:
        args = [str(v) for v in dpo_args(work, tmp_path / "xd", "--steps", 2)]
        args[args.index("--ref-cache-dir") + 1] = "x"
        flag = "--ref-cache-dir"
    r = mpmd(args, args, wdirs=(a, b), timeout=120)
    assert r.returncode != 0
    real = os.path.realpath(tmp_path)
    assert f"{flag} differs between ranks (rank 0: x = {real}/a/x, rank 1: x = {real}/b/x)" in r.stderr, r.stderr
    assert os.listdir(a) == [] and os.listdir(b) == [], (os.listdir(a), os.listdir(b))
    assert not (tmp_path / "xd").exists()


def test_ranks_with_different_stop_at_are_refused_not_hung(work, tmp_path):
    """--stop-at is no saved setting, so the ranks' flag hash left it out: the rank that
    stopped went to its final barrier while the other waited in the next step's allreduce,
    and the job never ended. The trainers now agree on it at start."""
    base = ["pretrain", "--out", tmp_path / "x", "--steps", 4, *PRETRAIN, work / "text.txt"]
    r = mpmd([*base, "--stop-at", 2], base)
    assert r.returncode != 0
    assert "--stop-at differs between ranks" in r.stderr and "[rank" in r.stderr, r.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()
    # --stop-at at the last step stops nowhere: the same run as none (it was refused as a difference)
    r = mpmd([*base, "--stop-at", 4], base)
    assert r.returncode == 0, r.stderr


EVAL_SCORING = {   # flags for rank 0, for rank 1, the flag the refusal names
    "reward": (["--reward", "length"], [], "--reward"),   # rank 1's rewards were 0 in the sum
    "safety": ([], ["--safety", "length"], "--safety or --safety-threshold"),
    "safety-threshold": (["--safety", "length", "--safety-threshold", 3], ["--safety", "length"],
                         "--safety or --safety-threshold"),
    "pairs": ([], ["--pairs", "pairs.jsonl"], "--pairs (the pairs' tokens)"),   # hung in the pairs' sums
    "pairs-content": (["--pairs", "pairs.jsonl"], ["--pairs", "pairs2.jsonl"], "--pairs (the pairs' tokens)"),
    "beta": (["--pairs", "pairs.jsonl", "--beta", 0.2], ["--pairs", "pairs.jsonl"], "--beta or --divergence"),
    "divergences": (["--divergences", "rkl"], [], "--divergences"),   # MPI_ERR_TRUNCATE
    # the same spec reading another file: the ranks' rewards were mixed (a review's find)
    "lexicon": (["--reward", "afinn", "--lexicon", "lexA.json"], ["--reward", "afinn", "--lexicon", "lexB.json"],
                "--reward"),
}


@pytest.mark.parametrize("case", sorted(EVAL_SCORING))
def test_eval_ranks_with_different_scoring_flags_are_refused(work, tmp_path, case):
    """eval splits the scoring of the samples and of --pairs over the ranks and sums the blocks,
    but agreed only on the sampling: a scoring flag on some ranks gave a wrong mean with exit
    0, a hang or a bare MPI_ERR_TRUNCATE. Each now fails on every rank naming the flag, before
    anything is sampled or written."""
    write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(3, 0))
    write_jsonl(tmp_path / "pairs2.jsonl", synthetic_pairs(3, 1))
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    (tmp_path / "lexA.json").write_text('{"good": 3}\n')
    (tmp_path / "lexB.json").write_text('{"good": -3}\n')
    base = ["eval", "--model", work / "pol", "--ref", work / "pol", "--data", tmp_path / "prompts.txt", "--n", 2,
            "--max-new-tokens", 4, "--threads", 1, "--out", tmp_path / "e.json"]
    extra0, extra1, flag = EVAL_SCORING[case]
    fix = lambda extra: [tmp_path / a if str(a).endswith((".jsonl", ".json")) else a for a in extra]   # noqa: E731
    r = mpmd([*base, *fix(extra0)], [*base, *fix(extra1)])
    assert r.returncode != 0
    assert f"fdpo eval [rank 0/2]: {flag} differs between ranks" in r.stderr or \
        f"fdpo eval [rank 1/2]: {flag} differs between ranks" in r.stderr, r.stderr
    assert "MPI_ERR" not in r.stderr and not (tmp_path / "e.json").exists(), r.stderr


@pytest.mark.parametrize("extra0,extra1", [(["--lambda", "1"], ["--lambda", "1,2"]),
                                           (["--lambda", "1,2"], ["--lambda", "1,2", "--merge", "0.5"])],
                         ids=["lambda", "merge"])
def test_sacpo_ranks_with_different_stages_are_refused_not_hung(work, tmp_path, extra0, extra1):
    """sacpo runs its stages one after another on every rank, each a collective job, but never
    compared the list: the rank with more stages (another --lambda list, --merge on it alone)
    went on into one the other never started and waited for ever. The ranks now agree on the
    plan before any stage runs."""
    args = ["sacpo", "--model", work / "pol", "--reward-data", work / "pairs.jsonl", "--safety-data",
            work / "pairs.jsonl", "--batch-size", 4, "--steps", 1, "--lr", "1e-3", "--threads", 1, "--quiet",
            "--out", tmp_path / "s"]
    r = mpmd([*args, *extra0], [*args, *extra1])
    assert r.returncode != 0
    assert "the stages (--lambda, --merge, --order, --beta, the data or --out) differs between ranks" in r.stderr, \
        r.stderr
    assert not (tmp_path / "s" / "reward").exists()


@pytest.mark.parametrize("cmd", ["rl", "online", "kto"])
def test_killed_rank_ends_the_new_commands(work, tmp_path, cmd):
    """SIGKILL to rank 1 once the run is under way (rank 0 logged a step, or finished a
    round): the launcher ends the job, non-zero, within seconds; what rank 0 wrote is whole
    (metrics lines parse; a finished round or checkpoint loads)."""
    out = tmp_path / "k"
    if cmd == "rl":
        args = ["rl", "--model", work / "pol", "--data", work / "prompts.txt", "--reward", letters_reward(work),
                "--prompts-per-step", 7, "--n", 3, "--max-new-tokens", 10, "--threads", 1, "--quiet",
                "--steps", 2000, "--out", out]
        started = out / "metrics.jsonl"
    elif cmd == "online":
        args = online_args(work, out, "--rounds", 200, "--batch-size", 1, "--grad-accum", 2, "--epochs", 1)
        started = out / "round-0"
    else:
        rows = [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
                for r in synthetic_pairs(32, 2) for k in ("chosen", "rejected")]
        write_jsonl(tmp_path / "kto.jsonl", rows)
        args = ["kto", "--model", work / "pol", "--data", tmp_path / "kto.jsonl", "--batch-size", 2, "--grad-accum", 2,
                "--steps", 4000, "--save-every", 2, "--lr", "1e-4", "--threads", 1, "--quiet", "--eval-fraction", 0,
                "--out", out]
        started = out / "training_state.json"
    p = subprocess.Popen([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", FDPO, *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not started.exists() and p.poll() is None:
        time.sleep(0.2)
    assert started.exists(), "the run did not get going"
    pid = rank_pid(p.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert time.time() - t0 < 30, "the job did not stop within seconds"
    assert "rank 1" in err and "signal 9" in err, err   # the launcher names the killed rank
    if (out / "metrics.jsonl").exists():
        for line in open(out / "metrics.jsonl"):
            json.loads(line)
    if cmd == "online":
        assert "checkpoint" in fdpo("info", out / "round-0").stdout   # the finished round loads
    if cmd == "kto":
        assert "training_state: yes" in fdpo("info", out).stdout
