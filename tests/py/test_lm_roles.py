"""A reward model (GPT2ForSequenceClassification, num_labels 1) is not a language model to align:
every language-model trainer refuses it as the policy (--model) and as the reference (--ref),
through the one library check (fdpo_trainer_check_lm) that kto had alone. Before, pretrain,
sft, dpo, rl, online and sacpo trained it and saved the result still labelled a classification
model. fdpo rm keeps taking one (it continues a reward model). generate, score and eval refuse
it as the model they sample or score with (fdpo_eval_load_checkpoint): it is a reward."""
import json
import os
import shutil
import subprocess

import pytest

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
POLICY = "a reward model (GPT2ForSequenceClassification), not a language model to align"
REFERENCE = "a reward model (GPT2ForSequenceClassification), not a language model to serve as the reference"


def fdpo(*args):
    return subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """the reviewer's setup: a tiny language model `base` and a reward model `r1` trained from it"""
    tmp = tmp_path_factory.mktemp("roles")
    words = "the cat sat on a mat and the dog ran to the park".split()
    (tmp / "corpus.txt").write_text("".join(" ".join(words[(i + k) % len(words)] for k in range(12)) + "\n"
                                            for i in range(40)))
    with open(tmp / "pairs.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": "the cat", "chosen": " is happy", "rejected": " is sad" + " no" * i}) + "\n")
    with open(tmp / "kto.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": "the dog", "completion": " ran" + " far" * i, "label": i % 2 == 0}) + "\n")
    with open(tmp / "sft.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": "the cat", "completion": " sat" + " down" * i}) + "\n")
    (tmp / "prompts.txt").write_text("the cat\nthe dog\n")
    (tmp / "scored.jsonl").write_text(json.dumps({"prompt": "the cat", "completion": " sat"}) + "\n")
    r = fdpo("pretrain", "--out", tmp / "base", "--n-layer", 2, "--n-embd", 16, "--n-head", 2, "--n-positions", 32,
             "--seq-len", 24, "--threads", 1, "--steps", 5, "--quiet", tmp / "corpus.txt")
    assert r.returncode == 0, r.stderr
    r = fdpo("rm", "--model", tmp / "base", "--data", tmp / "pairs.jsonl", "--out", tmp / "r1", "--threads", 1,
             "--steps", 2, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp / "r1" / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]
    return tmp


def runs(tmp, model, ref=None):
    """every language-model trainer, on `model` (and `ref` where the command has --ref)"""
    ref_flag = ["--ref", ref] if ref else []
    sample = ["--reward", "length", "--max-new-tokens", 4, "--threads", 1, "--quiet"]
    return {
        "pretrain": ["pretrain", "--model", model, "--seq-len", 24, "--steps", 1, "--threads", 1, "--quiet", tmp / "corpus.txt"],
        "sft": ["sft", "--model", model, "--seq-len", 24, "--steps", 1, "--threads", 1, "--quiet", tmp / "sft.jsonl"],
        "dpo": ["dpo", "--model", model, *ref_flag, "--data", tmp / "pairs.jsonl", "--steps", 1, "--threads", 1, "--quiet"],
        "dpo-live": ["dpo", "--model", model, *ref_flag, "--ref-live", "--data", tmp / "pairs.jsonl", "--steps", 1,
                     "--threads", 1, "--quiet"],
        "dpo-lora": ["dpo", "--model", model, *ref_flag, "--lora-r", 2, "--data", tmp / "pairs.jsonl", "--steps", 1,
                     "--threads", 1, "--quiet"],
        "kto": ["kto", "--model", model, *ref_flag, "--data", tmp / "kto.jsonl", "--steps", 1, "--threads", 1, "--quiet"],
        "rl": ["rl", "--model", model, *ref_flag, "--data", tmp / "prompts.txt", "--steps", 1, "--prompts-per-step", 2,
               *sample],
        "rl-lora": ["rl", "--model", model, *ref_flag, "--lora-r", 2, "--data", tmp / "prompts.txt", "--steps", 1,
                    "--prompts-per-step", 2, *sample],
        "online": ["online", "--model", model, *ref_flag, "--data", tmp / "prompts.txt", "--rounds", 1,
                   "--prompts-per-round", 2, *sample],
        "online-step": ["online", "--mode", "step", "--model", model, *ref_flag, "--data", tmp / "prompts.txt",
                        "--steps", 1, "--prompts-per-round", 2, *sample],
    }


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "dpo", "dpo-live", "dpo-lora", "kto", "rl", "rl-lora", "online",
                                 "online-step"])
def test_a_reward_model_is_refused_as_the_policy(models, tmp_path, cmd):
    args = runs(models, models / "r1")[cmd]
    r = fdpo(*args, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert f"fdpo {args[0]}: --model {models / 'r1'}: {POLICY}\n" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("cmd", ["dpo", "dpo-live", "dpo-lora", "kto", "rl", "rl-lora", "online", "online-step"])
def test_a_reward_model_is_refused_as_the_reference(models, tmp_path, cmd):
    args = runs(models, models / "base", models / "r1")[cmd]
    r = fdpo(*args, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert f"fdpo {args[0]}: --ref {models / 'r1'}: {REFERENCE}\n" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()


def test_sacpo_refuses_a_reward_model(models, tmp_path):
    r = fdpo("sacpo", "--model", models / "r1", "--reward-data", models / "pairs.jsonl", "--safety-data",
             models / "pairs.jsonl", "--lambda", 1, "--out", tmp_path / "s", "--steps", 1, "--threads", 1, "--quiet")
    assert r.returncode == 1, r.stderr
    assert f"--model {models / 'r1'}: {POLICY}\n" in r.stderr, r.stderr


def test_the_language_model_still_trains_and_rm_still_continues_a_reward_model(models, tmp_path):
    r = fdpo(*runs(models, models / "base", models / "base")["dpo"], "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    r = fdpo("rm", "--model", models / "r1", "--data", models / "pairs.jsonl", "--out", tmp_path / "r2",
             "--threads", 1, "--steps", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]


@pytest.mark.parametrize("cmd,role", [("generate", "--model"), ("score", "--model"), ("score", "--ref"),
                                      ("eval", "--model"), ("eval", "--ref")])
def test_sampling_and_scoring_commands_refuse_a_reward_model(models, tmp_path, cmd, role):
    """generate, score and eval ran a reward model's backbone through the tied head as if it were a
    language model (near-uniform log-probs, byte salad); it is a reward: --reward rm:DIR"""
    model, ref = (models / "r1", models / "base") if role == "--model" else (models / "base", models / "r1")
    args = {"generate": ["generate", "--model", model, "--data", models / "prompts.txt", "--max-new-tokens", 2],
            "score": ["score", "--model", model, "--ref", ref, "--data", models / "scored.jsonl"],
            "eval": ["eval", "--model", model, "--ref", ref, "--data", models / "prompts.txt", "--n", 1,
                     "--max-new-tokens", 2, "--reward", "length", "--out", tmp_path / "e.json"]}[cmd]
    r = fdpo(*args, "--threads", 1)
    assert r.returncode == 1, r.stderr
    assert (f"fdpo {cmd}: {role} {models / 'r1'}: a reward model (GPT2ForSequenceClassification), not a language "
            f"model to sample or score with (as a reward: --reward rm:{models / 'r1'})\n") in r.stderr, r.stderr
    assert r.stdout == "" and not (tmp_path / "e.json").exists()


def test_a_reward_model_still_serves_as_the_reward(models, tmp_path):
    r = fdpo("eval", "--model", models / "base", "--ref", models / "base", "--data", models / "prompts.txt", "--n", 1,
             "--max-new-tokens", 2, "--reward", f"rm:{models / 'r1'}", "--threads", 1, "--out", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def bpe257(models):
    """a language model of the same shape and vocabulary size (257) as `base`, whose tokenizer is a
    257-token BPE (256 bytes in GPT-2's byte order + <|endoftext|>, no merges): other ids"""
    r = fdpo("tokenizer", "train", "--vocab-size", 257, "--out", models / "tok257", models / "corpus.txt")
    assert r.returncode == 0, r.stderr
    r = fdpo("pretrain", "--out", models / "bpe257", "--tokenizer", models / "tok257", "--n-layer", 2, "--n-embd", 16,
             "--n-head", 2, "--n-positions", 32, "--seq-len", 24, "--threads", 1, "--steps", 1, "--quiet",
             models / "corpus.txt")
    assert r.returncode == 0, r.stderr
    return models / "bpe257"


@pytest.mark.parametrize("cmd", ["dpo", "dpo-live", "kto", "rl", "online", "online-step"])
def test_a_reference_with_another_tokenizer_of_the_same_size_is_refused(models, bpe257, tmp_path, cmd):
    """the vocab_size check passed (257 = 257) and the reference scored the policy's ids as its own"""
    args = runs(models, models / "base", bpe257)[cmd]
    r = fdpo(*args, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    # the first difference named: bpe257 is a BPE, the policy's tokenizer fdpo's byte-level one
    assert json.loads((models / "base" / "fdpo_tokenizer.json").read_text())["type"] == "byte"
    want = (f"fdpo {args[0]}: --ref {bpe257}: its tokenizer differs from that of the policy {models / 'base'} (kind "
            "gpt2-bpe vs byte): the same text would be other ids\n")
    assert want in r.stderr, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.fixture(scope="module")
def adapter_on_a_broken_base(models):
    """a PEFT adapter directory without tokenizer files (its tokenizer is its base's) whose base's
    fdpo_tokenizer.json does not load"""
    base = models / "base_badtok"
    base.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(models / "base" / f, base / f)
    (base / "fdpo_tokenizer.json").write_text('{"type": 3}')
    r = fdpo("sft", "--model", models / "base", "--lora-r", 2, "--seq-len", 24, "--steps", 1, "--threads", 1, "--quiet",
             "--out", models / "lora", models / "sft.jsonl")
    assert r.returncode == 0, r.stderr
    ad = models / "lora_badbase"
    ad.mkdir()
    shutil.copy(models / "lora" / "adapter_model.safetensors", ad)
    cfg = json.loads((models / "lora" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    return ad


@pytest.mark.parametrize("cmd", ["dpo", "kto", "rl", "online"])
def test_an_adapter_reference_whose_base_tokenizer_cannot_be_read_is_refused(models, adapter_on_a_broken_base, tmp_path,
                                                                              cmd):
    """the check looked for tokenizer files in the adapter directory only, so an adapter whose
    tokenizer is its base's passed unchecked when the base's files did not load (score refused it)"""
    ad = adapter_on_a_broken_base
    args = runs(models, models / "base", ad)[cmd]
    r = fdpo(*args, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert (f"fdpo {args[0]}: --ref {ad}: {ad}: the tokenizer of its base_model_name_or_path {models / 'base_badtok'}: "
            f"{models / 'base_badtok' / 'fdpo_tokenizer.json'}") in r.stderr, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("cmd", ["dpo", "dpo-live", "kto", "rl", "online", "online-step"])
def test_a_reference_whose_tokenizer_files_cannot_be_read_is_refused(models, bpe257, tmp_path, cmd):
    """the tokenizer check was skipped when the reference's files did not load: a broken vocab.json
    passed as 'no tokenizer files', and the run trained against a reference it could not compare"""
    ref = tmp_path / "ref"
    shutil.copytree(bpe257, ref)
    (ref / "vocab.json").write_text('{"a": 0,')
    for f in ("tokenizer.json",):
        (ref / f).unlink(missing_ok=True)
    args = runs(models, models / "base", ref)[cmd]
    r = fdpo(*args, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert f"fdpo {args[0]}: --ref {ref}: {ref / 'vocab.json'}" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()
