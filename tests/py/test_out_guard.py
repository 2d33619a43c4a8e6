"""Two runs never share an --out silently: a command that would write metrics.jsonl, a
checkpoint, stages or tokenizer files into a directory that holds another kind of run stops
with an error naming --out and the file it found, exit status 1, and leaves that run's files
byte for byte as they were (the audit found dpo/rl/online replacing each other's
metrics.jsonl, sacpo reusing stages trained with other --steps, and `tokenizer train` adding
vocab.json next to a checkpoint's fdpo_tokenizer.json, which still took precedence).
An --out is also refused when it is the run's reference (a resumed run would load its
half-trained policy as the reference), when it is named '.', '..' or '/' (its lock and a save's
swap are its text plus a suffix), and when it is a file; a failed start leaves no OUT.lock."""
import json
import shutil

import pytest

from dpo_common import fdpo, run_with_file_size_limit, save_byte_tokenizer, write_jsonl
from fdpo_ref.gpt2 import GPT2

FAST = ["--threads", 1, "--quiet"]
SAMPLE = ["--n", 2, "--max-new-tokens", 4, "--prompts-per-round", 2]


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outguard")
    GPT2(257, 48, 16, 1, 2, seed=5).save_hf(str(tmp / "base"))
    save_byte_tokenizer(str(tmp / "base"))
    write_jsonl(tmp / "pairs.jsonl", [{"prompt": "a:", "chosen": " good", "rejected": " bad"},
                                      {"prompt": "b:", "chosen": " nice", "rejected": " awful"}])
    (tmp / "prompts.txt").write_text("hi\nyo\n")
    # one run of each kind whose directory the others must not write into
    fdpo("dpo", "--model", tmp / "base", "--data", tmp / "pairs.jsonl", "--out", tmp / "dpo_run", "--steps", 1,
         "--eval-fraction", 0, *FAST)
    fdpo("online", "--model", tmp / "base", "--data", tmp / "prompts.txt", "--reward", "length",
         "--out", tmp / "online_run", "--rounds", 1, *SAMPLE, *FAST)
    return tmp


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def refused(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout + r.stderr)
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["dpo", "rl", "online-step", "kto"])
def test_a_trainer_refuses_an_online_rounds_directory(d, cmd):
    before = snapshot(d / "online_run")
    args = {
        "dpo": ["dpo", "--model", d / "base", "--data", d / "pairs.jsonl", "--steps", 1],
        "rl": ["rl", "--model", d / "base", "--data", d / "prompts.txt", "--reward", "length", "--steps", 1,
               "--n", 2, "--max-new-tokens", 4],
        "online-step": ["online", "--mode", "step", "--model", d / "base", "--data", d / "prompts.txt",
                        "--reward", "length", "--steps", 1, *SAMPLE],
        "kto": ["kto", "--model", d / "base", "--data", d / "pairs.jsonl", "--steps", 1],
    }[cmd]
    if cmd == "kto":   # an unpaired file; the check on --out must come before any training
        # (3 lines: 2 left for training after the held-out one, the least kto takes)
        (d / "unpaired.jsonl").write_text('{"prompt":"a","completion":" b","label":true}\n'
                                          '{"prompt":"c","completion":" d","label":false}\n'
                                          '{"prompt":"e","completion":" f","label":true}\n')
        args[4] = d / "unpaired.jsonl"
    r = fdpo(*args, "--out", d / "online_run", *FAST, check=False)
    refused(r, f"--out: {d / 'online_run'} already holds online rounds (round-0) of another run")
    assert snapshot(d / "online_run") == before


def test_online_rounds_refuse_a_trainer_checkpoint(d):
    before = snapshot(d / "dpo_run")
    r = fdpo("online", "--model", d / "base", "--data", d / "prompts.txt", "--reward", "length",
             "--out", d / "dpo_run", "--rounds", 1, *SAMPLE, *FAST, check=False)
    refused(r, f"--out {d / 'dpo_run'}: already holds a checkpoint (training_state.json) of another run")
    assert snapshot(d / "dpo_run") == before


def test_online_rounds_still_resume_their_own_directory(d, tmp_path):
    out = tmp_path / "o"
    common = ["--model", d / "base", "--data", d / "prompts.txt", "--reward", "length", "--out", out, *SAMPLE, *FAST]
    fdpo("online", *common, "--rounds", 1)
    fdpo("online", *common, "--rounds", 2, "--resume")
    assert (out / "round-1").is_dir()


def sacpo(d, out, *extra, check=True):
    return fdpo("sacpo", "--model", d / "base", "--reward-data", d / "pairs.jsonl", "--safety-data",
                d / "pairs.jsonl", "--lambda", 1, "--eval-fraction", 0, "--out", out, *FAST, *extra, check=check)


def test_sacpo_refuses_a_dpo_run_directory(d):
    before = snapshot(d / "dpo_run")
    refused(sacpo(d, d / "dpo_run", "--steps", 1, check=False),
            f"--out: {d / 'dpo_run'} already holds a checkpoint (training_state.json) of another run")
    assert snapshot(d / "dpo_run") == before


@pytest.mark.parametrize("change", [["--steps", 2], ["--lr", "1e-3"], ["--loss", "ipo"], ["--seed", 7],
                                    ["--precision", "bf16"], ["--max-length", 12], ["--eval-fraction", 0.25],
                                    ["--on-long", "skip"]])
def test_sacpo_does_not_reuse_stages_trained_with_other_settings(d, tmp_path, change):
    """named: the flag and sacpo.json (the pairs' --max-length, --eval-fraction and --on-long
    were not recorded, so a stage added later trained on other data silently)"""
    out = tmp_path / "s"
    sacpo(d, out, "--steps", 1)
    before = snapshot(out)
    refused(sacpo(d, out, "--steps", 1, *change, check=False), f"{change[0]}: ", "which its stages trained with",
            "sacpo.json")
    assert snapshot(out) == before
    # the same settings again (and another --threads, which does not change the result) reuse both stages
    sacpo(d, out, "--steps", 1, "--threads", 2)
    assert snapshot(out) == before


def test_sacpo_plans_written_before_training_settings_were_recorded_still_match(d, tmp_path):
    out = tmp_path / "s"
    sacpo(d, out, "--steps", 1)
    state = json.loads((out / "sacpo.json").read_text())
    assert state["plan"]["training"]["steps"] == 1 and state["plan"]["training"]["loss"] == "sigmoid"
    del state["plan"]["training"]          # as an earlier version wrote it
    (out / "sacpo.json").write_text(json.dumps(state))
    weights = (out / "lambda-1" / "model.safetensors").read_bytes()
    sacpo(d, out, "--steps", 1)
    assert (out / "lambda-1" / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "sacpo.json").read_text())["stages_done"] == state["stages_done"]


def test_sacpo_plans_that_recorded_val_fraction_still_match(d, tmp_path):
    """Before wave 28 the plan's training settings also held the unused train option
    "val-fraction": 0 beside "eval-fraction"; that option is --eval-fraction now, and such a
    plan still reuses its stages."""
    out = tmp_path / "s"
    sacpo(d, out, "--steps", 1)
    state = json.loads((out / "sacpo.json").read_text())
    training = state["plan"]["training"]
    assert training["eval-fraction"] == 0 and "val-fraction" not in training
    training["val-fraction"] = 0           # as the previous version wrote it
    (out / "sacpo.json").write_text(json.dumps(state))
    weights = (out / "lambda-1" / "model.safetensors").read_bytes()
    sacpo(d, out, "--steps", 1)
    assert (out / "lambda-1" / "model.safetensors").read_bytes() == weights


def test_tokenizer_train_refuses_a_checkpoint_directory(d, tmp_path):
    (tmp_path / "text.txt").write_text("the cat sat on the mat " * 20)
    before = snapshot(d / "dpo_run")
    r = fdpo("tokenizer", "train", "--vocab-size", 260, "--out", d / "dpo_run", tmp_path / "text.txt", check=False)
    refused(r, f"--out: {d / 'dpo_run'} already holds fdpo_tokenizer.json (use --overwrite to replace it)")
    assert snapshot(d / "dpo_run") == before
    # --overwrite cannot make the trained files win over fdpo_tokenizer.json: refused before it writes anything
    ck = tmp_path / "ck"
    ck.mkdir()
    save_byte_tokenizer(str(ck))
    r = fdpo("tokenizer", "train", "--vocab-size", 260, "--overwrite", "--out", ck, tmp_path / "text.txt", check=False)
    refused(r, f"--out: {ck} holds fdpo_tokenizer.json, which loads before vocab.json")
    assert sorted(p.name for p in ck.iterdir()) == ["fdpo_tokenizer.json"]


def test_dpo_refuses_a_checkpoint_before_reading_data_or_the_reference(d, tmp_path):
    """the --out check comes first: no pairs read, no reference cache built, before the refusal"""
    before = snapshot(d / "dpo_run")
    r = fdpo("dpo", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", d / "dpo_run", "--steps", 1,
             "--ref-cache-dir", tmp_path / "cache", "--threads", 1, check=False)
    refused(r, f"--out: {d / 'dpo_run'} already holds a checkpoint (use --resume to continue it, --overwrite to start over)")
    assert "pairs from" not in r.stderr and "ref cache" not in r.stderr, r.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert snapshot(d / "dpo_run") == before


# ---- --out that the run reads again: its reference ----

def ref_args(d, cmd):
    """a trainer with a reference, its data and a one-step run (the reference: --ref, else --model)"""
    (d / "unpaired.jsonl").write_text('{"prompt":"a","completion":" b","label":true}\n'
                                      '{"prompt":"c","completion":" d","label":false}\n'
                                      '{"prompt":"e","completion":" f","label":true}\n')   # kto trains on >= 2
    return {
        "dpo": ["dpo", "--data", d / "pairs.jsonl", "--steps", 1],
        "kto": ["kto", "--data", d / "unpaired.jsonl", "--steps", 1],
        "rl": ["rl", "--data", d / "prompts.txt", "--reward", "length", "--steps", 1, "--n", 2, "--max-new-tokens", 4],
        "online-step": ["online", "--mode", "step", "--data", d / "prompts.txt", "--reward", "length", "--steps", 1,
                        *SAMPLE],
        "online": ["online", "--data", d / "prompts.txt", "--reward", "length", "--rounds", 1, *SAMPLE],
    }[cmd]


@pytest.mark.parametrize("cmd", ["dpo", "kto", "rl", "online-step", "online"])
def test_a_trainer_refuses_an_out_that_is_its_reference(d, tmp_path, cmd):
    """--out = the reference (--model without --ref): a run stopped and resumed loaded its
    half-trained policy as the reference (dpo's loss at the resumed step was log 2 again)
    -- refused at the start, before anything is written, on a fresh run and on --resume"""
    import shutil
    self_dir = tmp_path / "self"
    shutil.copytree(d / "dpo_run", self_dir)   # a checkpoint with a training state, to resume
    before = snapshot(tmp_path)
    fresh = [] if cmd == "online" else ["--overwrite"]   # rounds mode has no --overwrite
    r = fdpo(*ref_args(d, cmd), "--model", self_dir, "--out", self_dir, *fresh, *FAST, check=False)
    refused(r, f"--out {self_dir}: is the reference (--model {self_dir}): a resumed run would load its "
               "half-trained policy as the reference; give another --out")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["self"]
    # --ref names it (here another spelling of the same directory), and --resume is refused too
    # (rounds mode: its OUT holds rounds, never a checkpoint to resume)
    resume = [] if cmd == "online" else ["--resume"]
    r = fdpo(*ref_args(d, cmd), "--model", d / "base", "--ref", f"{self_dir}/", "--out", self_dir, *resume, *FAST,
             check=False)
    if cmd in ("kto", "rl", "online-step"):   # OUT holds a dpo run: that is said first, before any file is read
        refused(r, f"--resume: {self_dir} holds a 'dpo' run, not '{cmd}'")
    else:
        refused(r, f"--out {self_dir}: is the reference (--ref {self_dir}/): a resumed run would load its "
                   "half-trained policy as the reference; give another --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", ["sft", "rm"])
def test_a_lora_run_refuses_an_out_that_is_its_base(d, tmp_path, cmd):
    """--lora-r with --out = --model: the first save replaced the frozen base's model.safetensors
    with the adapter, whose recorded base was then itself (resume failed, the base was gone)"""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(d / "base", base)
    (d / "sft.jsonl").write_text('{"prompt":"a","completion":" b"}\n{"prompt":"c","completion":" d"}\n')
    data = {"sft": ["--data", d / "sft.jsonl", "--seq-len", 16], "rm": ["--data", d / "pairs.jsonl"]}[cmd]
    before = snapshot(tmp_path)
    r = fdpo(cmd, "--model", base, "--out", f"{base}/", "--overwrite", "--lora-r", 2, *data, "--steps", 1, *FAST,
             check=False)
    refused(r, f"--out {base}/: is --model {base}, the frozen base of the adapters: the first save would replace the "
               "base with the adapter; give another --out")
    assert snapshot(tmp_path) == before


def test_an_out_that_is_the_base_of_the_adapter_given_as_model_is_refused(d, tmp_path):
    """--model ADAPTER (its base_model_name_or_path B) --lora-r --out B --overwrite: the check
    compared OUT with --model only; the save replaced B's weights with the new adapter, which
    named B, itself, as its base, and ADAPTER lost its base too (diff review)"""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(d / "base", base)
    fdpo("dpo", "--model", base, "--lora-r", 2, "--data", d / "pairs.jsonl", "--eval-fraction", 0, "--out",
         tmp_path / "adapter", "--steps", 1, *FAST)
    before = snapshot(tmp_path)
    r = fdpo("dpo", "--model", tmp_path / "adapter", "--lora-r", 2, "--data", d / "pairs.jsonl", "--eval-fraction", 0,
             "--out", base, "--overwrite", "--steps", 1, *FAST, check=False)
    refused(r, f"--out {base}: is the LoRA base of --model {tmp_path / 'adapter'} (its base_model_name_or_path); the "
               "adapter saved there would replace that base and name itself as its base: give another --out")
    assert snapshot(tmp_path) == before


def test_a_run_whose_out_is_not_its_reference_still_works(d, tmp_path):
    """the check is on the reference alone: --out = --model with another --ref trains (and
    resumes: the policy comes from OUT, the reference from --ref), as does a plain run"""
    import shutil
    fdpo(*ref_args(d, "dpo"), "--model", d / "base", "--out", tmp_path / "plain", *FAST)
    assert (tmp_path / "plain" / "model.safetensors").exists()
    shutil.copytree(d / "base", tmp_path / "self")
    common = ["dpo", "--data", d / "pairs.jsonl", "--steps", 2, "--model", tmp_path / "self", "--ref", d / "base",
              "--out", tmp_path / "self", *FAST]
    fdpo(*common, "--overwrite", "--stop-at", 1)
    fdpo(*common, "--resume")
    assert json.loads((tmp_path / "self" / "training_state.json").read_text())["step"] == 2


# ---- --out as a run directory: named by its own name, and a directory ----

def checkpoint_cmd(d, cmd):
    """each command that writes a checkpoint directory, with inputs by absolute path"""
    (d / "sft.jsonl").write_text('{"prompt":"a","completion":" b"}\n{"prompt":"c","completion":" d"}\n')
    (d / "text.txt").write_text("the cat sat on the mat\n" * 8)
    if cmd in ("dpo", "kto", "rl", "online-step", "online"):
        return [*ref_args(d, cmd), "--model", d / "base"]
    return {
        "pretrain": ["pretrain", "--n-layer", 1, "--n-embd", 16, "--n-head", 2, "--n-positions", 32, "--seq-len", 16,
                     "--steps", 1, d / "text.txt"],
        "sft": ["sft", "--model", d / "base", "--data", d / "sft.jsonl", "--seq-len", 16, "--steps", 1],
        "rm": ["rm", "--model", d / "base", "--data", d / "pairs.jsonl", "--steps", 1],
        "sacpo": ["sacpo", "--model", d / "base", "--reward-data", d / "pairs.jsonl", "--safety-data", d / "pairs.jsonl",
                  "--lambda", 1, "--eval-fraction", 0, "--steps", 1],
        "merge": ["merge", "--model", d / "base", "--model", d / "base"],
    }[cmd]


CHECKPOINT_CMDS = ["pretrain", "sft", "dpo", "rm", "kto", "rl", "online-step", "online", "sacpo", "merge"]


@pytest.mark.parametrize("cmd", CHECKPOINT_CMDS)
@pytest.mark.parametrize("out", [".", "./", "..", "sub/."])
def test_an_out_named_dot_or_dotdot_is_refused(d, tmp_path, cmd, out):
    """OUT.lock, OUT.tmp and OUT.old are OUT's text plus a suffix: `--out .` made ..lock and
    ..tmp inside OUT, and a save copied OUT into ..tmp/..tmp/... ~680 levels deep before it
    failed. Refused, naming --out, before anything is written."""
    import subprocess
    from dpo_common import FDPO
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    args = [*checkpoint_cmd(d, cmd), "--out", out]
    if cmd != "merge":
        args += FAST
    r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=work / "sub")
    refused(r, f"--out {out}: give the directory by its name, not '.', '..' or '/' (the run's lock and each save's "
               "swap go beside it, under that name); from inside it: cd .. and give --out NAME")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["work", "work/sub"]


@pytest.mark.parametrize("cmd", ["sft", "dpo", "merge"])
def test_an_out_with_a_trailing_slash_is_the_directory(d, tmp_path, cmd):
    """`--out runs/a/` is runs/a: its lock is runs/a.lock beside it (not runs/a/.lock), a save
    swaps runs/a, and --resume finds it under either spelling"""
    def files():   # dpo's reference cache is beside OUT too
        return sorted(p.name for p in tmp_path.iterdir() if p.name != ".fdpo-cache")

    fdpo(*checkpoint_cmd(d, cmd), "--out", f"{tmp_path / 'a'}/", *([] if cmd == "merge" else FAST))
    assert files() == ["a", "a.lock"]
    assert (tmp_path / "a" / "model.safetensors").exists() and not (tmp_path / "a" / ".lock").exists()
    if cmd != "merge":
        fdpo(*checkpoint_cmd(d, cmd), "--out", tmp_path / "a", "--resume", *FAST)
        assert "already finished" in fdpo(*checkpoint_cmd(d, cmd), "--out", f"{tmp_path / 'a'}//", "--resume",
                                          "--threads", 1).stderr
        assert files() == ["a", "a.lock"]


@pytest.mark.parametrize("cmd", CHECKPOINT_CMDS)
def test_an_out_that_is_a_file_is_refused_naming_out(d, tmp_path, cmd):
    """`--out victim.jsonl` (a file) said "victim.jsonl: not a directory" without the flag and
    left victim.jsonl.lock behind"""
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"keep": "me"}\n')
    args = [*checkpoint_cmd(d, cmd), "--out", victim]
    r = fdpo(*args, *([] if cmd == "merge" else FAST), check=False)
    refused(r, f"--out {victim}: not a directory (a run writes its checkpoint directory there); choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.jsonl"]
    assert victim.read_text() == '{"keep": "me"}\n'


def test_a_failed_start_leaves_no_lock(d, tmp_path):
    """a run that fails before it saved anything leaves no OUT.lock (nor does --resume of a
    directory that does not exist), and no empty OUT it made (a directory the user made stays),
    nor the empty parents it made for --out a/b/c; a run that saved keeps OUT.lock beside OUT"""
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\nexit 3\n")
    fail.chmod(0o755)
    for cmd in ("rl", "online-step", "online"):   # the reward fails at step 0, after OUT was made
        args = [a if a != "length" else f"cmd:{fail}" for a in checkpoint_cmd(d, cmd)]
        r = fdpo(*args, "--out", tmp_path / cmd, *FAST, check=False)
        refused(r, f"--reward cmd:{fail}: reward command '{fail}' exited with status 3")
    r = fdpo("sft", "--model", d / "base", "--data", d / "sft.jsonl", "--out", tmp_path / "none", "--resume", *FAST,
             check=False)
    refused(r, f"--resume: {tmp_path / 'none'}: no training state")
    assert not list(tmp_path.glob("*.lock")), sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fail.sh"]   # no empty rl/, online-step/, online/
    (tmp_path / "mine").mkdir()
    args = [a if a != "length" else f"cmd:{fail}" for a in checkpoint_cmd(d, "rl")]
    refused(fdpo(*args, "--out", tmp_path / "mine", *FAST, check=False), "exited with status 3")
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "mine.lock").exists()
    # --out a/b/c where a/ and a/b/ did not exist: the failed start removes them too (they
    # stayed), but not a directory above them that the user made, nor one that holds a file
    (tmp_path / "user").mkdir()
    refused(fdpo(*args, "--out", tmp_path / "user" / "a" / "b" / "c", *FAST, check=False), "exited with status 3")
    assert sorted(p.name for p in (tmp_path / "user").iterdir()) == []
    (tmp_path / "user" / "a").mkdir()
    (tmp_path / "user" / "a" / "keep.txt").write_text("x")
    refused(fdpo(*args, "--out", tmp_path / "user" / "a" / "b" / "c", *FAST, check=False), "exited with status 3")
    assert sorted(p.name for p in (tmp_path / "user" / "a").iterdir()) == ["keep.txt"]
    # the directories its mkdir made, not the path's text: an empty directory of the user's
    # reached through a new one ("new/../keep") stays, and "//" or "/./" do not stop the cleanup
    (tmp_path / "user" / "keep").mkdir()
    for out in ("new/../keep/run", "x//y//run", "x/./y/run", "x/y/../z/run"):
        refused(fdpo(*args, "--out", f"{tmp_path / 'user'}/{out}", *FAST, check=False), "exited with status 3")
        assert sorted(p.name for p in (tmp_path / "user").iterdir()) == ["a", "keep"], out
        assert not list((tmp_path / "user" / "keep").iterdir()), out
    fdpo(*checkpoint_cmd(d, "sft"), "--out", tmp_path / "ok", *FAST)
    assert (tmp_path / "ok.lock").exists()
    fdpo(*checkpoint_cmd(d, "sft"), "--out", tmp_path / "n1" / "n2" / "ok", *FAST)   # a run that saved keeps its parents
    assert (tmp_path / "n1" / "n2" / "ok.lock").exists() and (tmp_path / "n1" / "n2" / "ok" / "config.json").exists()


@pytest.mark.parametrize("cmd", ["pairs", "score", "eval"])
@pytest.mark.parametrize("given", ["lexicon:{f}", "words:{f}", "--lexicon"])
def test_an_output_may_not_replace_a_file_the_reward_reads(d, tmp_path, cmd, given):
    """pairs and score replaced a lexicon:FILE reward's word list with their JSONL (exit 0):
    only an rm:DIR reward was among the inputs an output may not replace"""
    f = tmp_path / "words.txt"
    f.write_text("good 1\nnice 2\n" if given != "words:{f}" else "good\nnice\n")
    before = f.read_bytes()
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [{"prompt": "a:", "completion": " good"}, {"prompt": "a:", "completion": " bad"}])
    reward = ["--reward", "afinn", "--lexicon", f] if given == "--lexicon" else ["--reward", given.format(f=f)]
    flag = "--lexicon" if given == "--lexicon" else "--reward"
    args = {"pairs": ["pairs", "--data", samples],
            "score": ["score", "--model", d / "base", "--data", samples],
            "eval": ["eval", "--model", d / "base", "--ref", d / "base", "--data", d / "prompts.txt", "--n", 2,
                     "--max-new-tokens", 2]}[cmd]
    threads = FAST[:2] if cmd != "pairs" else []   # pairs refuses --threads without an rm: reward
    r = fdpo(*args, *reward, "--out", f, *threads, check=False)
    refused(r, f"--out {f}: is the input {flag} {f}, which the output would replace; give another file")
    assert f.read_bytes() == before


@pytest.mark.parametrize("cmd", ["dpo", "rm"])
def test_a_failed_final_save_leaves_no_summary_of_the_unsaved_model(d, tmp_path, cmd):
    """dpo and rm wrote eval_summary.json (the final model's held-out accuracy) into OUT before
    the final save: a save that then failed (full disk) or was killed left a checkpoint of step
    2 beside the summary of step 4 (review: crash safety). The summary now follows the save."""
    out = tmp_path / "run"
    args = [cmd, "--model", d / "base", "--data", d / "pairs.jsonl", "--out", out, "--steps", 4, "--batch-size", 1,
            "--eval-fraction", 0.5, "--eval-every", 1, *FAST]
    fdpo(*args, "--stop-at", 2)
    assert json.loads((out / "training_state.json").read_text())["step"] == 2
    assert not (out / "eval_summary.json").exists()
    model_bytes = (out / "model.safetensors").stat().st_size
    r = run_with_file_size_limit(model_bytes // 2, *args, "--resume")
    assert r.returncode == 1, r.stderr
    assert f"saving checkpoint {out}: {out}.tmp/model.safetensors: write failed" in r.stderr, r.stderr
    assert json.loads((out / "training_state.json").read_text())["step"] == 2
    assert not (out / "eval_summary.json").exists()
    fdpo(*args, "--resume")   # room again: the run ends, and its summary is of the saved step 4
    assert json.loads((out / "eval_summary.json").read_text())["step"] == 4
    assert json.loads((out / "training_state.json").read_text())["step"] == 4


def test_an_out_that_is_the_base_of_an_adapter_reference_is_refused(d, tmp_path):
    """dpo --model ADAPTER (a LoRA adapter on B) --out B: a full fine-tune whose saves replace
    B, the base the reference ADAPTER is read onto; on --resume the reference was the
    half-trained policy under the adapter (loss log 2 again; diff review). The check compared
    OUT with the reference's directory only."""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(d / "base", base)
    fdpo("dpo", "--model", base, "--lora-r", 2, "--data", d / "pairs.jsonl", "--eval-fraction", 0, "--out",
         tmp_path / "adapter", "--steps", 1, *FAST)
    before = snapshot(tmp_path)
    r = fdpo("dpo", "--model", tmp_path / "adapter", "--data", d / "pairs.jsonl", "--eval-fraction", 0,
             "--out", base, "--overwrite", "--steps", 1, *FAST, check=False)
    refused(r, f"--out {base}: is the base model of the reference (--model {tmp_path / 'adapter'}, a LoRA adapter on "
               f"{base}): a resumed run would load its half-trained policy under the adapter as the reference")
    assert snapshot(tmp_path) == before


def test_a_failed_merge_over_a_run_leaves_that_run_whole(d, tmp_path):
    """merge --overwrite removed the replaced run's metrics.jsonl and summaries before its save:
    a save that failed (a full disk) left the old, resumable model without them (diff review).
    They now stay out of the save's swap only."""
    out = tmp_path / "run"
    fdpo("dpo", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", out, "--steps", 2, "--eval-fraction", 0.5,
         *FAST)
    before = snapshot(out)
    assert {"metrics.jsonl", "data_summary.json", "eval_summary.json"} <= set(before)
    model_bytes = (out / "model.safetensors").stat().st_size
    r = run_with_file_size_limit(model_bytes // 2, "merge", "--model", d / "base", "--model", d / "base", "--out", out,
                                 "--overwrite")
    assert r.returncode == 1 and "model.safetensors: write failed" in r.stderr, r.stderr
    assert snapshot(out) == before
    fdpo("merge", "--model", d / "base", "--model", d / "base", "--out", out, "--overwrite")
    assert not {"metrics.jsonl", "data_summary.json", "eval_summary.json"} & {p.name for p in out.iterdir()}


# ---- --out that holds a tokenizer (`fdpo tokenizer train`'s OUT) ----

def trained_tokenizer(tmp_path, name="tok"):
    """a directory as `fdpo tokenizer train` leaves it, with a user's note beside it"""
    (tmp_path / "tok_text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 6)
    tok = tmp_path / name
    fdpo("tokenizer", "train", "--vocab-size", 270, "--out", tok, tmp_path / "tok_text.txt")
    (tok / "notes.md").write_text("my tokenizer\n")
    return tok


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "dpo", "rm", "kto", "rl", "online-step", "merge"])
def test_a_run_refuses_an_out_that_holds_a_tokenizer(d, tmp_path, cmd):
    """a fresh run (no --overwrite) into `tokenizer train`'s OUT deleted vocab.json, merges.txt
    and tokenizer_config.json, exit 0: its save writes the run's own tokenizer and carries none
    of OUT's (tokenizer train refuses the reverse). Refused, naming what OUT holds."""
    tok = trained_tokenizer(tmp_path)
    before = snapshot(tok)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "notes.md"} == set(before)
    args = [*checkpoint_cmd(d, cmd), "--out", tok, *([] if cmd == "merge" else FAST)]
    r = fdpo(*args, check=False)
    refused(r, f"--out: {tok} already holds a tokenizer (vocab.json)", "--overwrite")
    assert snapshot(tok) == before
    if cmd in ("pretrain", "merge"):   # --overwrite replaces it, as before (the user's note stays)
        fdpo(*args, "--overwrite")
        names = {p.name for p in tok.iterdir()}
        assert {"model.safetensors", "fdpo_tokenizer.json", "notes.md"} <= names and "vocab.json" not in names, names
        assert (tok / "notes.md").read_text() == "my tokenizer\n"


TOKENIZER_FILES_ALONE = {"chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
                         "special_tokens_map.json": '{"eos_token": "<|endoftext|>"}\n'}


@pytest.mark.parametrize("cmd", CHECKPOINT_CMDS)
@pytest.mark.parametrize("name", list(TOKENIZER_FILES_ALONE))
def test_a_run_refuses_an_out_that_holds_a_chat_template_or_special_tokens_map_alone(d, tmp_path, cmd, name):
    """a chat_template.jinja (a tokenizer file, docs/tokenizer.md; tokenizer train refuses it)
    that a user put in OUT alone was deleted by the save, exit 0, while a note beside it was
    kept: the save drops OUT's tokenizer files, and this one was not among those that refuse.
    special_tokens_map.json too, since fdpo reads it (a tokenizer file; the fdpo before that
    kept it, the one that first read it deleted it). online rounds and sacpo stages save in
    subdirectories and keep it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(TOKENIZER_FILES_ALONE[name])
    (out / "notes.md").write_text("mine\n")
    before = snapshot(out)
    args = [*checkpoint_cmd(d, cmd), "--out", out, *([] if cmd == "merge" else FAST)]
    if cmd in ("online", "sacpo"):
        fdpo(*args)
        assert all(snapshot(out)[k] == v for k, v in before.items())
        return
    refused(fdpo(*args, check=False), f"--out: {out} already holds a tokenizer ({name})", "--overwrite")
    assert snapshot(out) == before
    if cmd in ("sft", "merge"):   # --overwrite replaces it (it would override the saved tokenizer's template/eos)
        fdpo(*args, "--overwrite")
        names = {p.name for p in out.iterdir()}
        assert {"model.safetensors", "notes.md"} <= names and name not in names, names


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "dpo", "merge"])
def test_a_run_refuses_an_out_that_holds_a_model_in_another_format(d, tmp_path, cmd):
    """What transformers' save_pretrained(safe_serialization=False) writes: config.json,
    generation_config.json, pytorch_model.bin. A fresh run took it for an empty directory: its
    save replaced config.json (which no longer described pytorch_model.bin) and removed
    generation_config.json, exit 0 (tokenizer train refused the same directory)."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                 "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257}))
    (hf / "generation_config.json").write_text(json.dumps({"bos_token_id": 50256, "eos_token_id": 50256}))
    (hf / "pytorch_model.bin").write_bytes(b"weights" * 100)
    before = snapshot(hf)
    args = [*checkpoint_cmd(d, cmd), "--out", hf, *([] if cmd == "merge" else FAST)]
    refused(fdpo(*args, check=False), f"--out: {hf} already holds a checkpoint", "--overwrite")
    assert snapshot(hf) == before
    (hf / "config.json").unlink()
    refused(fdpo(*args, check=False), f"--out: {hf} already holds a checkpoint")
    assert snapshot(hf) == {k: v for k, v in before.items() if k != "config.json"}


def test_a_run_whose_tokenizer_is_its_out_keeps_that_tokenizer(d, tmp_path):
    """`pretrain --tokenizer tok --out tok`: the tokenizer in OUT is the run's own, which its save
    writes back -- not refused; OUT then holds the model with the same vocabulary and merges"""
    tok = trained_tokenizer(tmp_path)
    vocab = json.loads((tok / "vocab.json").read_text())
    merges = [m for m in (tok / "merges.txt").read_text().splitlines() if m and not m.startswith("#")]
    fdpo(*checkpoint_cmd(d, "pretrain"), "--tokenizer", tok, "--out", tok, *FAST)
    assert (tok / "model.safetensors").exists() and (tok / "notes.md").read_text() == "my tokenizer\n"
    assert json.loads((tok / "vocab.json").read_text()) == vocab
    assert [m for m in (tok / "merges.txt").read_text().splitlines() if m and not m.startswith("#")] == merges
    assert json.loads((tok / "config.json").read_text())["vocab_size"] == len(vocab)


@pytest.mark.parametrize("cmd", ["pretrain", "sft"])
def test_a_byte_tokenizer_given_as_out_keeps_the_map_and_template_beside_it(d, tmp_path, cmd):
    """`--tokenizer tok --out tok` where tok holds fdpo's byte-level tokenizer and a
    special_tokens_map.json (or chat_template.jinja): the out guard lets the run's own tokenizer
    through since the save writes it back, but the byte-level tokenizer neither reads nor writes
    those two, and the save dropped them as tokenizer files (the map deleted, exit 0; the fdpo
    before kept it). They are kept through every save, byte for byte."""
    tok = tmp_path / "tok"
    tok.mkdir()
    save_byte_tokenizer(str(tok))
    kept = {**TOKENIZER_FILES_ALONE, "notes.md": "mine\n"}
    for name, text in kept.items():
        (tok / name).write_text(text)
    args = [*checkpoint_cmd(d, cmd), "--tokenizer", tok, "--out", tok, *FAST]
    args[args.index("--steps") + 1] = 2
    fdpo(*args, "--save-every", 1)   # two saves: the second carries what the first kept
    assert {n: (tok / n).read_text() for n in kept} == kept
    assert (tok / "model.safetensors").exists()
    assert json.loads((tok / "fdpo_tokenizer.json").read_text())["type"] == "byte"
    assert json.loads((tok / "training_state.json").read_text())["step"] == 2


# ---- --out that the run reads again: its reward model ----

def reward_args(d, cmd, spec):
    args = ref_args(d, cmd)
    args[args.index("--reward") + 1] = spec
    return args


@pytest.mark.parametrize("cmd", ["rl", "online-step"])
def test_a_trainer_refuses_an_out_that_is_its_reward_model(d, tmp_path, cmd):
    """rl --reward rm:R --out R --overwrite replaced the reward model R with the policy, exit 0
    (a resumed run then refused R as a language model): refused at the start, as --ref R --out R
    is, on a fresh run, with --overwrite, under another spelling and on --resume"""
    rm = tmp_path / "R"
    fdpo("rm", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", rm, "--steps", 1, "--eval-fraction", 0,
         *FAST)
    assert json.loads((rm / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]
    before = snapshot(tmp_path)
    for spec, flags in [(f"rm:{rm}", ["--overwrite"]), (f"rm:{rm}/", []), (f"rm:{rm}", ["--resume"])]:
        r = fdpo(*reward_args(d, cmd, spec), "--model", d / "base", "--out", rm, *flags, *FAST, check=False)
        if "--resume" in flags:   # OUT holds an rm run: that is said first, before any file is read
            refused(r, f"--resume: {rm} holds a 'rm' run, not '{cmd}'")
        else:
            refused(r, f"--out {rm}: is read by --reward {spec}: this run's saves would replace it with the policy; "
                       "give another --out")
        assert snapshot(tmp_path) == before


def test_a_trainer_refuses_an_out_that_is_the_base_of_its_lora_reward_model(d, tmp_path):
    """rm:ADAPTER (a LoRA reward model) is read onto its base B: rl --out B --overwrite replaced B"""
    import shutil
    base = tmp_path / "B"
    shutil.copytree(d / "base", base)
    fdpo("rm", "--model", base, "--lora-r", 2, "--data", d / "pairs.jsonl", "--out", tmp_path / "adapter", "--steps", 1,
         "--eval-fraction", 0, *FAST)
    before = snapshot(tmp_path)
    spec = f"rm:{tmp_path / 'adapter'}"
    r = fdpo(*reward_args(d, "rl", spec), "--model", d / "base", "--out", base, "--overwrite", *FAST, check=False)
    refused(r, f"--out {base}: is the base model of --reward {spec} (a LoRA adapter on {base}), which this run's saves "
               "would replace with the policy; give another --out")
    assert snapshot(tmp_path) == before


def test_a_trainer_whose_reward_model_is_elsewhere_still_trains(d, tmp_path):
    """the check is on the reward's own files: a reward model beside OUT (and the reward-free
    specs) still train"""
    rm = tmp_path / "R"
    fdpo("rm", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", rm, "--steps", 1, "--eval-fraction", 0,
         *FAST)
    fdpo(*reward_args(d, "rl", f"rm:{rm}"), "--model", d / "base", "--out", tmp_path / "pol", *FAST)
    assert json.loads((tmp_path / "pol" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert json.loads((rm / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]


# ---- OUT.tmp and OUT.old: a save's swap touches only what it made (ckpt hunt, findings 1 and 3) ----

def sft_args(d, out, *more):
    return [*checkpoint_cmd(d, "sft")[:-2], "--steps", 4, "--out", out, *more, *FAST]


def test_a_users_backup_beside_out_is_left_alone_and_refused(d, tmp_path):
    """`cp -r run run.old` (or `mv run run.old`) beside a run: --resume deleted run.old
    silently, and a fresh --overwrite run "restored" it into OUT and replaced it at its first
    save; a user's run.tmp went as "left by an interrupted save". The swap's names are refused
    while something fdpo did not make is there, naming it; the backup stays byte for byte."""
    out = tmp_path / "run"
    fdpo(*sft_args(d, out, "--stop-at", 2))
    (tmp_path / "run.old").mkdir()
    for f in out.iterdir():
        (tmp_path / "run.old" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "run.old" / "NOTES").write_text("my notes\n")
    backup, run_before = snapshot(tmp_path / "run.old"), snapshot(out)
    r = fdpo(*sft_args(d, out, "--resume"), check=False)
    refused(r, f"{out}.old is in the way of the saves of {out} (each writes {out}.tmp and moves the old checkpoint "
               f"to {out}.old) and carries no mark of this fdpo's saves, so it is not removed")
    assert snapshot(tmp_path / "run.old") == backup and snapshot(out) == run_before
    # `mv run run.old`, then a fresh run in its place
    import shutil
    shutil.rmtree(tmp_path / "run.old")
    out.rename(tmp_path / "run.old")
    refused(fdpo(*sft_args(d, out, "--overwrite"), check=False), f"{out}.old is in the way")
    assert snapshot(tmp_path / "run.old") == run_before and not out.exists()
    # a user's run.tmp: the same
    (tmp_path / "run.old").rename(out)
    (tmp_path / "run.tmp").mkdir()
    (tmp_path / "run.tmp" / "keep.txt").write_text("mine\n")
    refused(fdpo(*sft_args(d, out, "--resume"), check=False), f"{out}.tmp is in the way")
    assert (tmp_path / "run.tmp" / "keep.txt").read_text() == "mine\n" and snapshot(out) == run_before
    (tmp_path / "run.tmp").rename(tmp_path / "elsewhere")
    fdpo(*sft_args(d, out, "--resume"))
    assert json.loads((out / "training_state.json").read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "run", "run.lock"]


def test_a_running_run_named_out_tmp_or_out_old_is_left_alone(d, tmp_path):
    """A run on v removed the directory of a running run on v.tmp ("left by an interrupted
    save"; that run then died) and emptied one on v.old. A run holding v.tmp.lock or v.old.lock
    is refused by a run on v, and a run on v.tmp or v.old while a run on v holds v.lock."""
    import signal
    import subprocess
    import time
    from dpo_common import FDPO

    def start(out):
        args = [*sft_args(d, out)[:-len(FAST)], "--steps", 10 ** 6, "--save-every", 10 ** 6, *FAST]
        p = subprocess.Popen([FDPO, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (out.parent / f"{out.name}.lock").exists() or not (out.parent / f"{out.name}.lock").read_text():
            assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "slow"
            time.sleep(0.02)
        return p

    def stop(p, out):
        p.send_signal(signal.SIGINT)   # the run saves and ends
        p.communicate(timeout=60)
        assert (out / "training_state.json").exists(), out

    v = tmp_path / "v"
    for name in ("v.tmp", "v.old"):
        other = tmp_path / name
        p = start(other)
        r = fdpo(*sft_args(d, v), check=False)
        refused(r, f"--out {v}: {other} is the directory of a running run (pid {p.pid} holds {other}.lock)")
        assert p.poll() is None, p.stderr.read()
        stop(p, other)
        other.rename(tmp_path / f"kept-{name}")   # finished, it would be in the way of v's swap (the test above)
    p = start(v)
    (tmp_path / "text.txt").write_text("the cat sat on the mat\n" * 20)
    for name in ("v.tmp", "v.old"):
        r = fdpo(*sft_args(d, tmp_path / name), check=False)
        refused(r, f"--out {tmp_path / name}: is where each save of the running run on {v} (pid {p.pid} holds {v}.lock)")
        # a tokenizer's directory and an output file too (review-swap finding 4: accepted, and the run
        # on v then died at its next save, finding it in the way)
        r = fdpo("tokenizer", "train", "--vocab-size", 260, "--out", tmp_path / name, tmp_path / "text.txt",
                 check=False)
        refused(r, f"--out {tmp_path / name}: is where each save of the running run on {v} (pid {p.pid} holds {v}.lock)")
        r = fdpo("generate", "--model", d / "base", "--data", d / "prompts.txt", "--max-new-tokens", 2, "--threads", 1,
                 "--out", tmp_path / name, check=False)
        refused(r, f"--out {tmp_path / name}: is where each save of the running run on {v} (pid {p.pid} holds {v}.lock)")
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.lock").exists()
        # and every output inside such a name, a dpo's --ref-cache-dir at it too (accepted:
        # the run on v then died at its next save, or took the other's files into its checkpoint)
        inside = (f"--out {tmp_path / name}/%s: inside {tmp_path / name}, where each save of the running run on {v} "
                  f"(pid {p.pid} holds {v}.lock) puts its new or its old checkpoint")
        r = fdpo(*sft_args(d, tmp_path / name / "x"), check=False)
        refused(r, inside % "x")
        r = fdpo("tokenizer", "train", "--vocab-size", 260, "--out", tmp_path / name / "tok", tmp_path / "text.txt",
                 check=False)
        refused(r, inside % "tok")
        r = fdpo("generate", "--model", d / "base", "--data", d / "prompts.txt", "--max-new-tokens", 2, "--threads", 1,
                 "--out", tmp_path / name / "sub" / "g.jsonl", check=False)
        refused(r, inside % "sub/g.jsonl")
        r = fdpo("dpo", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", tmp_path / "D", "--steps", 1,
                 "--eval-fraction", 0, "--ref-cache-dir", tmp_path / name, *FAST, check=False)
        refused(r, f"--ref-cache-dir {tmp_path / name}: is where each save of the running run on {v} "
                   f"(pid {p.pid} holds {v}.lock)")
        assert not (tmp_path / name).exists() and not (tmp_path / "D").exists()
    stop(p, v)
    # the run's own swap name as its cache: it built the cache there, trained, and failed at its first save
    own = tmp_path / "own"
    r = fdpo("dpo", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", own, "--steps", 1,
             "--eval-fraction", 0, "--ref-cache-dir", tmp_path / "own.tmp" / "cache", *FAST, check=False)
    refused(r, f"--ref-cache-dir {tmp_path / 'own.tmp' / 'cache'}: inside {tmp_path / 'own.tmp'}, where each save of "
               f"the running run on {own} (pid ")
    assert not (tmp_path / "own.tmp").exists()
    for name in ("v.tmp", "v.old"):
        assert json.loads((tmp_path / f"kept-{name}" / "training_state.json").read_text())["step"] >= 1
        assert not (tmp_path / name).exists()


def test_an_earlier_fdpos_save_killed_between_its_renames_is_resumed(d, tmp_path):
    """An fdpo before the swap's marks, killed between OUT -> OUT.old and OUT.tmp -> OUT, left
    OUT missing and unmarked OUT.old and OUT.tmp, both complete; that fdpo restored OUT.old and
    removed OUT.tmp on --resume, and so must this one (the marks' fix refused both). The run ends
    byte-identical to an uninterrupted one. A regression guard: the fdpo before the marks passes."""
    import shutil
    from dpo_common import assert_same_run
    fdpo(*sft_args(d, tmp_path / "whole"))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "o"
    fdpo(*sft_args(d, out, "--stop-at", 2))
    shutil.copytree(out, work / "o.old")
    shutil.copytree(out, work / "o.tmp")
    shutil.rmtree(out)
    r = fdpo(*sft_args(d, out, "--resume"))
    assert f"{out} restored from {out}.old" in r.stderr and f"removed {out}.tmp" in r.stderr, r.stderr
    assert_same_run(tmp_path / "whole", out)
    assert sorted(p.name for p in work.iterdir()) == ["o", "o.lock"]


def test_an_earlier_fdpos_first_save_killed_between_its_renames_is_recovered(d, tmp_path):
    """The same kill at a run's first save (a sacpo stage's, or any run that had written only
    its metrics): OUT.old holds no checkpoint, only the run's files, which the save hard-linked
    into the complete OUT.tmp. That fdpo restored OUT.old and removed OUT.tmp, and so does this one."""
    import os
    import shutil
    work = tmp_path / "work"
    work.mkdir()
    out = work / "o"
    fdpo(*sft_args(d, out, "--stop-at", 2))
    (work / "o.old").mkdir()
    (work / "o.old" / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes())
    out.rename(work / "o.tmp")
    os.unlink(work / "o.tmp" / "metrics.jsonl")
    os.link(work / "o.old" / "metrics.jsonl", work / "o.tmp" / "metrics.jsonl")   # the save's carry-over
    r = fdpo(*sft_args(d, out, "--overwrite"))
    assert f"{out} restored from {out}.old" in r.stderr and f"removed {out}.tmp" in r.stderr, r.stderr
    assert json.loads((out / "training_state.json").read_text())["step"] == 4
    assert sorted(p.name for p in work.iterdir()) == ["o", "o.lock"]
    shutil.rmtree(work)


@pytest.mark.parametrize("leftover", ["o.tmp", "o.old"])
def test_an_earlier_fdpos_other_leftovers_are_refused_saying_what_to_do(d, tmp_path, leftover):
    """An unmarked OUT.tmp or OUT.old beside a complete OUT may be what an earlier fdpo's killed
    save left (it marked none): still refused (it may be a user's), but the message says so and
    what to do with it, and says to move it, not to choose another --out (a sacpo stage's or an
    online round's directory is not one the user named)."""
    import shutil
    out = tmp_path / "o"
    fdpo(*sft_args(d, out, "--stop-at", 2))
    shutil.copytree(out, tmp_path / leftover)
    before = snapshot(tmp_path / leftover)
    r = fdpo(*sft_args(d, out, "--resume"), check=False)
    refused(r, f"{tmp_path / leftover} is in the way of the saves of {out}",
            "a leftover of an interrupted save of an earlier fdpo (which marked none)",
            f"An earlier fdpo's unfinished save beside a complete {out}: remove it" if leftover == "o.tmp"
            else f"Beside a complete {out}, the checkpoint an earlier fdpo's save replaced: remove it if it is not "
                 "your backup", "otherwise move it away")
    assert "choose another --out" not in r.stderr
    assert snapshot(tmp_path / leftover) == before


SWAP_KILL_POINTS = {   # strace -P PATH: the first SYSCALL on PATH is where the save is killed
    "checkpoint-written": ("o.tmp/.fdpo-save", "rename"),
    "before-out-moved-aside": ("o", "rename"),
    "between-the-renames": ("o.tmp", "rename"),
    "removing-out-old": ("o.old/model.safetensors", "unlink"),
    "before-the-mark-goes": ("o/.fdpo-swap", "unlink"),
}


@pytest.mark.parametrize("point", SWAP_KILL_POINTS)
def test_a_save_killed_anywhere_in_its_swap_resumes_as_if_uninterrupted(d, tmp_path, point):
    """SIGKILL at each step of a save's directory swap (strace injects it at the syscall): the
    next --resume repairs what the swap left (OUT.old back, or OUT.tmp / OUT.old removed) and
    the run ends byte-identical to an uninterrupted one, with no OUT.tmp, OUT.old or mark left."""
    import shutil
    import subprocess
    from dpo_common import FDPO, assert_same_run
    if not shutil.which("strace") or subprocess.run(["strace", "-o", "/dev/null", "true"]).returncode:
        pytest.skip("strace is missing or may not trace here (ptrace refused)")
    fdpo(*sft_args(d, tmp_path / "whole"))
    work = tmp_path / "work"
    work.mkdir()
    fdpo(*sft_args(d, work / "o", "--stop-at", 1))
    path, syscall = SWAP_KILL_POINTS[point]
    r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", path, "-e", f"trace={syscall}",
                        "-e", f"inject={syscall}:signal=SIGKILL", FDPO,
                        *map(str, sft_args(d, "o", "--resume", "--stop-at", 2))], cwd=work, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0, f"not killed at {path}: {r.stderr}"
    fdpo(*sft_args(d, work / "o", "--resume"))
    assert_same_run(tmp_path / "whole", work / "o")
    assert sorted(p.name for p in work.iterdir()) == ["o", "o.lock"]
    assert not {".fdpo-save", ".fdpo-swap"} & {p.name for p in (work / "o").iterdir()}


def test_a_run_directorys_lock_path_that_is_a_link_or_a_users_file_is_refused(d, tmp_path):
    """OUT.lock was opened through a symbolic link and over any file: the link's target was
    truncated to the run's pid (ckpt hunt, finding 2). Refused naming it; the target unchanged."""
    (tmp_path / "keep.txt").write_text("keep me\n")
    (tmp_path / "run.lock").symlink_to("keep.txt")
    r = fdpo(*sft_args(d, tmp_path / "run"), check=False)
    refused(r, f"--out {tmp_path / 'run'}: its lock file {tmp_path / 'run.lock'} is a symbolic link")
    assert (tmp_path / "keep.txt").read_text() == "keep me\n" and (tmp_path / "run.lock").is_symlink()
    (tmp_path / "run.lock").unlink()
    (tmp_path / "run.lock").write_text("my lock notes\n")
    refused(fdpo(*sft_args(d, tmp_path / "run"), check=False), f"{tmp_path / 'run.lock'} exists and is not a lock file")
    assert (tmp_path / "run.lock").read_text() == "my lock notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "run.lock"]


# ---- --overwrite of a rounds run: the new run's inputs inside the entries it removes ----

def rounds_out(d, tmp_path):
    """an online rounds run of 2 rounds in tmp_path/on; its round-1.pairs.jsonl holds real pairs
    (these tiny rounds find none: the name, not the content, makes it the run's entry)"""
    out = tmp_path / "on"
    fdpo("online", "--model", d / "base", "--data", d / "prompts.txt", "--reward", "length", "--out", out,
         "--rounds", 2, *SAMPLE, *FAST)
    (out / "round-1.pairs.jsonl").write_bytes((d / "pairs.jsonl").read_bytes())
    assert (out / "round-1" / "model.safetensors").exists()
    return out


@pytest.mark.parametrize("case", ["dpo-model", "lora-sft-model", "dpo-data", "dpo-eval-file", "kto-ref",
                                  "adapter-base", "rl-reward"])
def test_an_overwrite_refuses_an_input_inside_an_entry_its_first_save_removes(d, tmp_path, case):
    """--overwrite over an online rounds OUT: the first save drops the replaced run's round-K and
    round-K.pairs.jsonl (docs/training.md "A replaced run goes whole"). A dpo run whose --model
    (its reference) was OUT/round-1 deleted it, exit 0, and could not resume; a LoRA sft on it
    wrote an adapter whose base it had deleted, exit 0; --data OUT/round-1.pairs.jsonl was gone
    for the resume. Refused at the start, naming the flag and the entry; OUT byte for byte."""
    out = rounds_out(d, tmp_path)
    if case == "adapter-base":   # an adapter elsewhere, on OUT/round-1: its base goes with the rounds
        fdpo("dpo", "--model", out / "round-1", "--lora-r", 2, "--data", d / "pairs.jsonl", "--eval-fraction", 0,
             "--out", tmp_path / "a" / "adapter", "--steps", 1, *FAST)
    if case == "rl-reward":   # a reward model a user keeps inside a round's directory
        import shutil
        fdpo("rm", "--model", d / "base", "--data", d / "pairs.jsonl", "--out", tmp_path / "a" / "R", "--steps", 1,
             "--eval-fraction", 0, *FAST)
        shutil.copytree(tmp_path / "a" / "R", out / "round-1" / "R")
    (d / "sft.jsonl").write_text('{"prompt":"a","completion":" b"}\n{"prompt":"c","completion":" d"}\n')
    (d / "unpaired.jsonl").write_text('{"prompt":"a","completion":" b","label":true}\n'
                                      '{"prompt":"c","completion":" d","label":false}\n'
                                      '{"prompt":"e","completion":" f","label":true}\n')
    dpo = ["dpo", "--steps", 2, "--stop-at", 1, "--eval-fraction", 0]
    args, flag, path, entry = {
        "dpo-model": ([*dpo, "--model", out / "round-1", "--data", d / "pairs.jsonl"], "--model", out / "round-1",
                      "round-1"),
        "lora-sft-model": (["sft", "--model", f"{out}/round-1/", "--lora-r", 2, "--data", d / "sft.jsonl", "--seq-len",
                            16, "--steps", 1], "--model", f"{out}/round-1/", "round-1"),
        "dpo-data": ([*dpo, "--model", d / "base", "--data", out / "round-1.pairs.jsonl"], "--data",
                     out / "round-1.pairs.jsonl", "round-1.pairs.jsonl"),
        "dpo-eval-file": (["dpo", "--steps", 1, "--model", d / "base", "--data", d / "pairs.jsonl", "--eval-file",
                           out / "round-1.pairs.jsonl"], "--eval-file", out / "round-1.pairs.jsonl",
                          "round-1.pairs.jsonl"),
        "kto-ref": (["kto", "--steps", 1, "--model", d / "base", "--ref", out / "round-0", "--data",
                     d / "unpaired.jsonl"], "--ref", out / "round-0", "round-0"),
        "adapter-base": ([*dpo, "--model", tmp_path / "a" / "adapter", "--lora-r", 2, "--data", d / "pairs.jsonl"],
                         "--model", tmp_path / "a" / "adapter", "round-1"),
        "rl-reward": (["rl", "--model", d / "base", "--data", d / "prompts.txt", "--reward", f"rm:{out}/round-1/R",
                       "--steps", 1, "--n", 2, "--max-new-tokens", 4], "--reward", f"{out}/round-1/R", "round-1"),
    }[case]
    before = snapshot(out)
    r = fdpo(*args, "--out", out, "--overwrite", *FAST, check=False)
    if case == "adapter-base":
        refused(r, f"--model {path}: a LoRA adapter on {out / 'round-1'}, which lies in {out / entry}, which this "
                   f"run's first save removes with the run it replaces in {out} (--overwrite)")
    else:
        refused(r, f"{flag} {path}: lies in {out / entry}, which this run's first save removes with the run it "
                   f"replaces in {out} (--overwrite), while this run reads it again")
    assert snapshot(out) == before
    assert not (tmp_path / ".fdpo-cache").exists()   # refused before dpo's reference cache


def test_an_overwrite_refuses_a_sacpo_stage_it_removes_as_its_model(d, tmp_path):
    """the same over a sacpo OUT: dpo --model OUT/lambda-1 --overwrite deleted lambda-1 (and
    reward) at its first save, and its --resume failed ("--model sv/lambda-1: ... cannot open")"""
    out = tmp_path / "sv"
    sacpo(d, out)
    before = snapshot(out)
    r = fdpo("dpo", "--model", out / "lambda-1", "--data", d / "pairs.jsonl", "--steps", 2, "--stop-at", 1,
             "--eval-fraction", 0, "--out", out, "--overwrite", *FAST, check=False)
    refused(r, f"--model {out / 'lambda-1'}: lies in {out / 'lambda-1'}, which this run's first save removes with the "
               f"run it replaces in {out} (--overwrite)")
    assert snapshot(out) == before


def test_an_overwrite_reading_what_it_keeps_of_the_replaced_run_still_trains(d, tmp_path):
    """the check is on the entries the save drops: a checkpoint a user keeps in a directory of
    OUT is carried over, so a run on it replaces the rounds and resumes"""
    import shutil
    out = rounds_out(d, tmp_path)
    shutil.copytree(out / "round-1", out / "mine")
    common = ["dpo", "--model", out / "mine", "--data", d / "pairs.jsonl", "--steps", 2, "--eval-fraction", 0,
              "--out", out, *FAST]
    fdpo(*common, "--overwrite", "--stop-at", 1)
    assert not (out / "round-1").exists() and (out / "mine" / "model.safetensors").exists()
    fdpo(*common, "--resume")
    assert json.loads((out / "training_state.json").read_text())["step"] == 2
