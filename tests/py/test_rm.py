"""Reward models (`fdpo rm`, `rm:DIR` rewards) against PyTorch.

- parity: the scalar outputs of a GPT2ForSequenceClassification-layout model and the
  gradient of the Bradley-Terry step loss (margins, centering, micro-batches) wrt every
  parameter, fdpo (float32) vs autograd on the plain-PyTorch GPT-2 in float64;
- learning: a reward model trained on pairs labelled by a synthetic reward (completion
  length) ranks >= 90% of HELD-OUT pairs as that reward does, measured in PyTorch on the
  saved checkpoint (which also proves the Hugging Face layout loads);
- `rm:DIR` scores text like the reference, batched; bad inputs give clear errors."""
import json
import os
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpo_common import EOT, FDPO, assert_same_run, fdpo, harness, save_byte_tokenizer, tokenize_pair, write_jsonl
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

torch.set_num_threads(1)

CFG = dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
ROWS = [
    {"prompt": "The cat", "chosen": " sat on the mat.", "rejected": " ran.", "margin": 0.5},
    {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " five, I think"},
    {"chosen": "Hello there, friend!", "rejected": "Hello there, enemy.", "margin": -1.25},   # implicit prompt
    {"prompt": [{"role": "user", "content": "Hi"}],                                          # conversational
     "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}], "margin": 2.0},
    {"prompt": "", "chosen": "yes", "rejected": "no"},                                        # empty prompt
]
RM_CONFIG = {"architectures": ["GPT2ForSequenceClassification"], "num_labels": 1, "pad_token_id": EOT}


def rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def save_rm(model, score, d):
    model.save_hf(str(d), config_extra=RM_CONFIG, extra={"score.weight": score.detach().float()})
    save_byte_tokenizer(str(d))


def seq(P, comp):
    """prompt + completion with the trailing <|endoftext|> dropped (docs/rm.md)."""
    while comp and comp[-1] == EOT:
        comp = comp[:-1]
    return P + comp


def reward(model, score, toks):
    h = model(torch.tensor(toks, dtype=torch.long), hidden=True)
    return h[-1] @ score[0]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    model = GPT2(**CFG, seed=21)
    score = torch.randn(1, CFG["n_embd"], generator=torch.Generator().manual_seed(5)) * 0.5
    save_rm(model, score, tmp / "rm")
    write_jsonl(tmp / "pairs.jsonl", ROWS)
    return tmp, model, score


@pytest.mark.parametrize("center,micro", [(0.0, 0), (0.3, 2)])
def test_rewards_and_gradients_match_pytorch(rm_dir, center, micro):
    tmp, model, score = rm_dir
    out = tmp / f"out_{center}_{micro}"
    harness("rm-grad", "--model", tmp / "rm", "--data", tmp / "pairs.jsonl", "--out", out,
            "--center", center, "--micro-batch", micro)
    res = json.loads((out / "result.json").read_text())
    ref = GPT2(**CFG).double()
    ref.load_hf(str(tmp / "rm"))
    w = score.detach().double().clone().requires_grad_(True)
    losses, rewards = [], []
    for row in ROWS:
        P, C, R = tokenize_pair(row)
        rc, rr = reward(ref, w, seq(P, C)), reward(ref, w, seq(P, R))
        z = rc - rr - row.get("margin", 0.0)
        losses.append(-F.logsigmoid(z) + center * (rc + rr) ** 2)
        rewards.append([rc.item(), rr.item()])
    loss = torch.stack(losses).mean()
    loss.backward()
    assert np.max(np.abs(np.array(res["rewards"]) - np.array(rewards))) < 1e-5
    assert abs(res["loss"] - loss.item()) < 1e-5
    g, _ = st.load(str(out / "grads.safetensors"))
    V = CFG["vocab_size"]
    assert g["transformer.wte.weight"].shape == (V + 1, CFG["n_embd"])
    assert rel(g["transformer.wte.weight"][V:], w.grad.numpy()) < 1e-5
    assert rel(g["transformer.wte.weight"][:V], ref.param("wte.weight").grad.numpy()) < 1e-5
    for name, p in ref.named().items():
        if name == "transformer.wte.weight":
            continue
        assert rel(g[name], p.grad.numpy()) < 1e-5, name


def length_rows(rng, n):
    """Pairs labelled by a synthetic reward: the longer completion (in bytes) wins."""
    words = ["apple", "blue", "cat", "dog", "egg", "fig", "green", "hat"]
    rows = []
    while len(rows) < n:
        a, b = rng.randint(1, 6), rng.randint(1, 6)
        if a == b:
            continue
        p = rng.choice(["Say:", "Tell me:", "Q:"])
        ca = " " + " ".join(rng.choice(words) for _ in range(a))
        cb = " " + " ".join(rng.choice(words) for _ in range(b))
        if len(ca) == len(cb):
            continue
        ch, rj = (ca, cb) if len(ca) > len(cb) else (cb, ca)
        rows.append({"prompt": p, "chosen": ch, "rejected": rj})
    return rows


def test_trained_reward_model_agrees_with_synthetic_reward(tmp_path):
    rng = random.Random(3)
    train, held = length_rows(rng, 300), length_rows(rng, 100)
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "held.jsonl", held)
    lm = GPT2(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4, seed=1)
    lm.save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    out = tmp_path / "rm"
    r = fdpo("rm", "--model", tmp_path / "lm", "--data", tmp_path / "train.jsonl", "--eval-file",
             tmp_path / "held.jsonl", "--out", out, "--lr", "3e-3", "--schedule", "constant",
             "--batch-size", "16", "--epochs", "6", "--eval-every", "0", "--threads", "1", "--quiet",
             "--weight-decay", "0")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["num_labels"] == 1 and cfg["pad_token_id"] == EOT and cfg["vocab_size"] == 257
    t, _ = st.load(str(out / "model.safetensors"))
    assert t["score.weight"].shape == (1, 32) and t["transformer.wte.weight"].shape == (257, 32)
    assert "lm_head.weight" not in t
    ref = GPT2(**CFG)
    ref.load_hf(str(out))
    score = torch.from_numpy(t["score.weight"])
    agree = 0
    with torch.no_grad():
        for row in held:
            P, C, R = tokenize_pair(row)
            agree += reward(ref, score, seq(P, C)) > reward(ref, score, seq(P, R))
    print(f"reward model agrees with the length reward on {int(agree)}/{len(held)} held-out pairs "
          f"({100 * float(agree) / len(held):.0f}%)")
    assert agree / len(held) >= 0.9, (agree, r.stderr)
    # fdpo's own held-out accuracy is the same count
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["pairs"] == len(held) and abs(summary["eval_accuracy"] - float(agree) / len(held)) < 1e-12
    # metrics with TRL RewardTrainer's names
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for k in ("loss", "accuracy", "grad_norm", "learning_rate", "epoch", "margin"):
        assert k in lines[-1], k
    # rm:DIR as a reward (text in, batched): the same numbers as the reference, and the
    # ranking of the held-out completions
    comps = [{"prompt": row["prompt"], "completion": row[k]} for row in held[:20] for k in ("chosen", "rejected")]
    write_jsonl(tmp_path / "comps.jsonl", comps)
    got = [float(x) for x in harness("eval-reward", f"rm:{out}", tmp_path / "comps.jsonl").stdout.split()]
    with torch.no_grad():
        want = [reward(ref, score, list(c["prompt"].encode()) + list(c["completion"].encode())).item() for c in comps]
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-4
    # ... and through a command that takes --reward: fdpo pairs labels with rm:DIR's rewards
    fdpo("pairs", "--samples", tmp_path / "comps.jsonl", "--reward", f"rm:{out}", "--out", tmp_path / "p.jsonl")
    by_text = {(c["prompt"], c["completion"]): w for c, w in zip(comps, want)}
    made = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert made
    for m in made:
        assert abs(m["chosen_reward"] - by_text[(m["prompt"], m["chosen"])]) < 1e-4
        assert abs(m["rejected_reward"] - by_text[(m["prompt"], m["rejected"])]) < 1e-4
    assert "architecture: GPT2ForSequenceClassification" in fdpo("info", out).stdout


def test_resume_continues_the_same_run(tmp_path):
    rows = length_rows(random.Random(4), 40)
    write_jsonl(tmp_path / "d.jsonl", rows)
    lm = GPT2(**CFG, seed=2)
    lm.save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    common = ["--model", tmp_path / "lm", "--data", tmp_path / "d.jsonl", "--steps", "6", "--batch-size", "4",
              "--threads", "1", "--quiet", "--eval-every", "3"]
    fdpo("rm", *common, "--out", tmp_path / "a")
    fdpo("rm", *common, "--out", tmp_path / "b", "--stop-at", "3")
    # a changed --seed (or --eval-fraction) also changes the held-out split, hence the data's
    # hash: the flag is named, not "the training data differ"
    for flag, value, saved in (("--seed", "7", "1337"), ("--eval-fraction", "0.25", "0.1")):
        r = fdpo("rm", *common, "--out", tmp_path / "b", "--resume", flag, value, check=False)
        assert r.returncode != 0 and f"{flag}: {value} differs from the saved run's {saved}" in r.stderr, r.stderr
    fdpo("rm", *common, "--out", tmp_path / "b", "--resume")
    # weights, AdamW moments and metrics (training and eval lines): each once, the same numbers
    metrics = assert_same_run(tmp_path / "a", tmp_path / "b")
    assert sorted({m["step"] for m in metrics}) == list(range(0, 7))  # 0: the eval before training


def test_resume_refuses_changed_held_out_pairs(tmp_path):
    """The resume fingerprint covers the held-out pairs (--eval-file's, the --eval-fraction
    split's), as dpo's does: rm --resume accepted an edited --eval-file and logged eval_* of
    other pairs after the resume. The error names the set that changed."""
    rows = length_rows(random.Random(5), 14)
    train, held = tmp_path / "d.jsonl", tmp_path / "e.jsonl"
    write_jsonl(train, rows[:10])
    write_jsonl(held, rows[10:])
    GPT2(**CFG, seed=2).save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    common = ["rm", "--model", tmp_path / "lm", "--data", train, "--eval-file", held, "--steps", 4, "--batch-size", 2,
              "--eval-every", 1, "--threads", 1, "--quiet"]
    fdpo(*common, "--out", tmp_path / "a")
    fdpo(*common, "--out", tmp_path / "b", "--stop-at", 2)
    edited = dict(rows[11], chosen=rows[11]["chosen"] + " egg")
    write_jsonl(held, rows[10:11] + [edited] + rows[12:])
    r = fdpo(*common, "--out", tmp_path / "b", "--resume", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo rm: --resume: the held-out data (--eval-file {held}) differ from the saved run's (4 items then, 4 now): "
        "resume needs the same files and tokenizer\n"), r.stderr
    write_jsonl(held, rows[10:])
    fdpo(*common, "--out", tmp_path / "b", "--resume")
    assert [m["step"] for m in assert_same_run(tmp_path / "a", tmp_path / "b")] == [0, 1, 2, 3, 4]


def test_resume_takes_a_path_spelled_another_way(tmp_path):
    """training_state.json's path settings (--model, --data, ...) are compared as paths
    (fdpo_settings_same_path, as online.json's): a run started with absolute paths resumes
    with ./lm and ./d.jsonl from their directory; a copy of the data under another name is
    another file and is still refused (the same bytes: the flag is what is named)."""
    write_jsonl(tmp_path / "d.jsonl", length_rows(random.Random(4), 24))
    shutil.copy(tmp_path / "d.jsonl", tmp_path / "copy.jsonl")
    GPT2(**CFG, seed=2).save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    common = ["--steps", "4", "--batch-size", "4", "--threads", "1", "--quiet", "--out", tmp_path / "b"]
    fdpo("rm", "--model", tmp_path / "lm", "--data", tmp_path / "d.jsonl", *common, "--stop-at", "2")

    def resume(model, data):
        return subprocess.run([os.path.abspath(FDPO), "rm", "--model", model, "--data", data, *map(str, common),
                               "--resume"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    r = resume("./lm", "copy.jsonl")
    assert r.returncode != 0 and f"--data: copy.jsonl differs from the saved run's {tmp_path / 'd.jsonl'}" in r.stderr, r.stderr
    r = resume("./lm", "./d.jsonl")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "training_state.json").read_text())["step"] == 4


def test_bad_inputs(rm_dir, tmp_path):
    tmp, _, _ = rm_dir
    lm = GPT2(**CFG, seed=3)
    lm.save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "completion": "b"}])
    # a language model is not a reward model
    r = harness("eval-reward", f"rm:{tmp_path / 'lm'}", tmp_path / "c.jsonl", check=False)
    assert r.returncode != 0 and str(tmp_path / "lm") in r.stderr and "language model" in r.stderr
    # score.weight missing although config says GPT2ForSequenceClassification
    d = tmp_path / "noscore"
    lm.save_hf(str(d), config_extra=RM_CONFIG)
    save_byte_tokenizer(str(d))
    r = harness("eval-reward", f"rm:{d}", tmp_path / "c.jsonl", check=False)
    assert r.returncode != 0 and "score.weight" in r.stderr
    # a NaN or Inf in the score head is refused as in any other tensor (it scored null, exit 0)
    for bad in (float("nan"), float("inf")):
        score = torch.full((1, CFG["n_embd"]), 0.1)
        score[0, 3] = bad
        d = tmp_path / f"nonfinite{bad}"
        save_rm(lm, score, d)
        for cmd in (["info", d], ["score", "--model", tmp_path / "lm", "--data", tmp_path / "c.jsonl", "--reward", f"rm:{d}"]):
            r = fdpo(*cmd, check=False)
            assert r.returncode == 1 and (f"{d / 'model.safetensors'}: tensor 'score.weight' has 1 non-finite value "
                                          "(NaN or Inf)\n") in r.stderr, r.stderr
    # a margin that is not a number: FILE:LINE
    rows = [dict(ROWS[0]), dict(ROWS[1], margin="big")]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    r = fdpo("rm", "--model", tmp_path / "lm", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o",
             "--steps", "1", "--quiet", check=False)
    assert r.returncode != 0 and f"{tmp_path / 'bad.jsonl'}:2" in r.stderr and "margin" in r.stderr
    # required flags
    r = fdpo("rm", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o", check=False)
    assert r.returncode != 0 and "--model" in r.stderr
    r = fdpo("rm", "--model", tmp_path / "lm", "--data", tmp / "pairs.jsonl", "--out", tmp_path / "o2",
             "--center-rewards-coefficient", "-1", check=False)
    assert r.returncode != 0 and "--center-rewards-coefficient" in r.stderr


def test_help_lists_the_commands_and_their_flags():
    assert "  rm " in fdpo("--help").stdout and "  kto " in fdpo("--help").stdout
    h = fdpo("rm", "--help").stdout
    for f in ("--model", "--data", "--out", "--center-rewards-coefficient", "--eval-fraction", "--batch-size", "--seed", "--threads"):
        assert f in h, f
    h = fdpo("kto", "--help").stdout
    for f in ("--model", "--data", "--out", "--beta", "--divergence", "--desirable-weight", "--undesirable-weight", "--ref"):
        assert f in h, f


def test_bad_reward_model_dirs_in_the_loops(rm_dir, tmp_path):
    """rm:DIR in fdpo online and fdpo rl: a language model, and a reward model whose tokenizer
    does not fit it (tokenizer files of another model: 257 byte tokens, vocab_size 100), are
    refused before anything is sampled or written, naming the directory."""
    tmp, _, _ = rm_dir
    lm = GPT2(**CFG, seed=3)
    lm.save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    small = GPT2(**dict(CFG, vocab_size=100), seed=4)
    small.save_hf(str(tmp_path / "rm100"), config_extra=dict(RM_CONFIG, pad_token_id=99),
                  extra={"score.weight": torch.zeros(1, CFG["n_embd"])})
    save_byte_tokenizer(str(tmp_path / "rm100"))
    (tmp_path / "p.txt").write_text("a\nb\n")
    cases = [(tmp_path / "lm", "a language model"),
             (tmp_path / "rm100", "its tokenizer has 257 tokens but the model's vocab_size is 100")]
    for d, needle in cases:
        r = harness("eval-reward", f"rm:{d}", tmp / "pairs.jsonl", check=False)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
        for cmd in (["online", "--rounds", 1], ["online", "--mode", "step", "--steps", 1], ["rl", "--steps", 1]):
            out = tmp_path / f"out_{d.name}_{cmd[-3]}_{cmd[-2]}"
            r = fdpo(*cmd, "--model", tmp_path / "lm", "--data", tmp_path / "p.txt", "--reward", f"rm:{d}",
                     "--out", out, "--n", 2, check=False)
            assert r.returncode != 0 and f"--reward rm:{d}" in r.stderr and needle in r.stderr, (cmd, r.stderr)
            assert not out.exists(), cmd


# ---- Llama-family reward models (LlamaForSequenceClassification / Qwen2ForSequenceClassification) ----

from fdpo_ref.llama import Llama  # noqa: E402

LLAMA = dict(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
SPACE = ord(" ")
# pad_token_id = the space byte: trailing spaces are padding to transformers' pooling (the
# rightmost token that is not pad), so these rows check where the reward is read
LLAMA_ROWS = ROWS + [{"prompt": "Pad:", "chosen": " ok.   ", "rejected": " no  "},
                     {"prompt": "x", "chosen": "   ", "rejected": " y"}]  # all-pad completion still has the prompt


def llama_rm(seed, model_type="llama", pad=SPACE):
    kw = dict(LLAMA, qkv_bias=True, model_type="qwen2", tie_word_embeddings=True) if model_type == "qwen2" else LLAMA
    m = Llama(**kw, seed=seed)
    m.p.pop("lm_head.weight", None)  # ...ForSequenceClassification has no LM head
    m.p["score.weight"] = (torch.randn(1, LLAMA["hidden_size"], generator=torch.Generator().manual_seed(seed + 1),
                                       dtype=torch.float64) * 0.5).float().double().requires_grad_(True)
    m.cfg["num_labels"] = 1
    m.cfg["pad_token_id"] = pad
    m.cfg["architectures"] = ["Qwen2ForSequenceClassification" if model_type == "qwen2" else "LlamaForSequenceClassification"]
    return m


def llama_reward(m, toks, pad=SPACE):
    """transformers' LlamaForSequenceClassification: score at the rightmost non-pad token"""
    ids = torch.tensor(toks)
    pool = int((torch.arange(len(toks)) * (ids != pad)).argmax())
    return m.hidden(toks)[pool] @ m.p["score.weight"][0]


@pytest.mark.parametrize("model_type,center,micro", [("llama", 0.0, 0), ("llama", 0.3, 2), ("qwen2", 0.1, 0)])
def test_llama_rewards_and_gradients_match_pytorch(tmp_path, model_type, center, micro):
    m = llama_rm(31, model_type)
    m.save_hf(str(tmp_path / "rm"))
    save_byte_tokenizer(str(tmp_path / "rm"))
    write_jsonl(tmp_path / "pairs.jsonl", LLAMA_ROWS)
    harness("rm-grad", "--model", tmp_path / "rm", "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "out",
            "--center", center, "--micro-batch", micro)
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    losses, rewards = [], []
    for row in LLAMA_ROWS:
        P, C, R = tokenize_pair(row)
        rc, rr = llama_reward(m, seq(P, C)), llama_reward(m, seq(P, R))
        losses.append(-F.logsigmoid(rc - rr - row.get("margin", 0.0)) + center * (rc + rr) ** 2)
        rewards.append([rc.item(), rr.item()])
    loss = torch.stack(losses).mean()
    loss.backward()
    assert np.max(np.abs(np.array(res["rewards"]) - np.array(rewards))) < 1e-5
    assert abs(res["loss"] - loss.item()) < 1e-5
    g, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    assert set(g) == set(m.p) and "lm_head.weight" not in g and g["score.weight"].shape == (1, LLAMA["hidden_size"])
    for name, p in m.p.items():
        assert rel(g[name], p.grad.numpy()) < 1e-5, name
    # fdpo's re-save is the same LlamaForSequenceClassification / Qwen2ForSequenceClassification
    harness("model-load", "--model", tmp_path / "rm", "--save", tmp_path / "rm2")
    cfg = json.loads((tmp_path / "rm2" / "config.json").read_text())
    assert cfg["architectures"] == m.cfg["architectures"] and cfg["model_type"] == model_type
    assert cfg["num_labels"] == 1 and cfg["pad_token_id"] == SPACE and cfg["id2label"] == {"0": "LABEL_0"}
    ta, tb = st.load(str(tmp_path / "rm" / "model.safetensors"))[0], st.load(str(tmp_path / "rm2" / "model.safetensors"))[0]
    assert set(ta) == set(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    # the pad rows pool before their trailing spaces (a last-token head would not match)
    P, C, _ = tokenize_pair(LLAMA_ROWS[-2])
    s = seq(P, C)
    with torch.no_grad():
        assert abs(llama_reward(m, s).item() - (m.hidden(s)[-1] @ m.p["score.weight"][0]).item()) > 1e-3


def test_llama_rm_file_with_a_leftover_lm_head_scores_like_transformers(tmp_path):
    """An untied LlamaForSequenceClassification file that still carries the LM's lm_head.weight
    (a converted checkpoint): transformers leaves the tensor unused, and so does fdpo. It was
    refused with "differs from the token embedding, but config.json ties them" (it says false)."""
    m = llama_rm(33)
    assert not m.cfg.get("tie_word_embeddings", False)
    m.save_hf(str(tmp_path / "rm"))
    save_byte_tokenizer(str(tmp_path / "rm"))
    tensors, meta = st.load(str(tmp_path / "rm" / "model.safetensors"))
    tensors["lm_head.weight"] = np.random.default_rng(0).standard_normal(
        (LLAMA["vocab_size"], LLAMA["hidden_size"])).astype(np.float32)
    st.save(str(tmp_path / "rm" / "model.safetensors"), tensors, meta)
    write_jsonl(tmp_path / "pairs.jsonl", LLAMA_ROWS)
    harness("rm-grad", "--model", tmp_path / "rm", "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "out")
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    with torch.no_grad():
        want = [[llama_reward(m, seq(P, C)).item(), llama_reward(m, seq(P, R)).item()]
                for P, C, R in map(tokenize_pair, LLAMA_ROWS)]
    assert np.max(np.abs(np.array(res["rewards"]) - np.array(want))) < 1e-5


def test_llama_rm_trains_saves_and_scores_like_transformers_layout(tmp_path):
    """fdpo rm on a Llama LM: the saved LlamaForSequenceClassification (score.weight, no
    lm_head, the LM's backbone trained on) loads in the reference, and rm:DIR gives the
    reference's rewards; a few steps of training lower the loss"""
    rng = random.Random(5)
    write_jsonl(tmp_path / "train.jsonl", length_rows(rng, 64))
    lm = Llama(**LLAMA, seed=4)
    lm.save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    out = tmp_path / "rm"
    fdpo("rm", "--model", tmp_path / "lm", "--data", tmp_path / "train.jsonl", "--out", out, "--lr", "3e-3",
         "--batch-size", "8", "--steps", "12", "--eval-every", "0", "--threads", "1", "--quiet", "--eval-fraction", "0")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["model_type"] == "llama"
    assert cfg["num_labels"] == 1 and cfg["pad_token_id"] == EOT
    t, _ = st.load(str(out / "model.safetensors"))
    assert t["score.weight"].shape == (1, 32) and "lm_head.weight" not in t
    assert set(t) == (set(lm.p) - {"lm_head.weight"}) | {"score.weight"}
    assert not np.array_equal(t["model.layers.0.mlp.up_proj.weight"], lm.p["model.layers.0.mlp.up_proj.weight"].detach().numpy())
    ref = Llama(**LLAMA)
    ref.p = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in t.items()}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert np.mean([x["loss"] for x in lines[-3:]]) < np.mean([x["loss"] for x in lines[:3]])
    comps = [{"prompt": "Say:", "completion": " apple blue cat"}, {"prompt": "Q:", "completion": " dog"},
             {"prompt": "Tell me:", "completion": " fig green hat egg"}]
    write_jsonl(tmp_path / "comps.jsonl", comps)
    got = [float(x) for x in harness("eval-reward", f"rm:{out}", tmp_path / "comps.jsonl").stdout.split()]
    with torch.no_grad():
        want = [llama_reward(ref, list(c["prompt"].encode()) + list(c["completion"].encode()), pad=EOT).item()
                for c in comps]
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-4
    assert "architecture: LlamaForSequenceClassification" in fdpo("info", out).stdout


def test_llama_rm_bad_inputs(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "completion": "b"}])
    m = llama_rm(3)
    d = tmp_path / "noscore"
    m.p.pop("score.weight")
    m.save_hf(str(d))
    save_byte_tokenizer(str(d))
    r = harness("eval-reward", f"rm:{d}", tmp_path / "c.jsonl", check=False)
    assert r.returncode != 0 and "missing tensor 'score.weight'" in r.stderr, r.stderr
    m = llama_rm(3)
    m.cfg["num_labels"] = 3
    m.save_hf(str(tmp_path / "three"))
    r = harness("eval-reward", f"rm:{tmp_path / 'three'}", tmp_path / "c.jsonl", check=False)
    assert r.returncode != 0 and "LlamaForSequenceClassification with 3 labels" in r.stderr, r.stderr
    m = llama_rm(3)
    m.p["score.weight"] = torch.zeros(1, 8, dtype=torch.float64)
    m.save_hf(str(tmp_path / "shape"))
    r = harness("eval-reward", f"rm:{tmp_path / 'shape'}", tmp_path / "c.jsonl", check=False)
    assert r.returncode != 0 and "score.weight" in r.stderr and "[1,8]" in r.stderr, r.stderr
    # a Llama reward model has no LM head: sampling from it or aligning it is refused, naming its class
    m = llama_rm(3, pad=EOT)
    m.save_hf(str(tmp_path / "rmok"))
    save_byte_tokenizer(str(tmp_path / "rmok"))
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}])
    r = fdpo("generate", "--model", tmp_path / "rmok", "--data", tmp_path / "prompts.jsonl", "--n", "1",
             "--max-new-tokens", "2", check=False)
    assert r.returncode != 0 and (f"--model {tmp_path / 'rmok'}: a reward model (LlamaForSequenceClassification), "
                                  "not a language model to sample or score with") in r.stderr, r.stderr
    write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    # every trainer of a language model refuses it up front, naming its class (fdpo_trainer_check_lm)
    r = fdpo("dpo", "--model", tmp_path / "rmok", "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "d",
             "--steps", "1", "--quiet", check=False)
    assert r.returncode != 0 and (f"--model {tmp_path / 'rmok'}: a reward model (LlamaForSequenceClassification), "
                                  "not a language model to align") in r.stderr, r.stderr


def test_llama_rm_resume_continues_the_same_run(tmp_path):
    """fdpo rm on a Llama LM, interrupted and resumed (in bf16, the precision given again):
    the same bytes as the straight run"""
    write_jsonl(tmp_path / "d.jsonl", length_rows(random.Random(6), 24))
    Llama(**LLAMA, seed=2).save_hf(str(tmp_path / "lm"))
    save_byte_tokenizer(str(tmp_path / "lm"))
    common = ["--model", tmp_path / "lm", "--data", tmp_path / "d.jsonl", "--steps", "4", "--batch-size", "4",
              "--threads", "1", "--quiet", "--eval-every", "2", "--precision", "bf16"]
    fdpo("rm", *common, "--out", tmp_path / "a")
    fdpo("rm", *common, "--out", tmp_path / "b", "--stop-at", "2")
    fdpo("rm", *common, "--out", tmp_path / "b", "--resume")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "b" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


@pytest.mark.parametrize("center", [0.0, 0.3])
def test_rm_run_logs_the_trl_metric_values(rm_dir, tmp_path, center):
    """The values `fdpo rm` logs at step 1 (before its update) against RewardTrainer's
    definitions computed here in PyTorch float64 on the starting weights, one step over all
    rows: loss (with the margins and the centering term), accuracy (r_chosen > r_rejected),
    margin (mean r_chosen - r_rejected), grad_norm (global norm before clipping). The run test
    above checks only that the names are there."""
    tmp, model, score = rm_dir
    fdpo("rm", "--model", tmp / "rm", "--data", tmp / "pairs.jsonl", "--out", tmp_path / "r", "--steps", 1,
         "--batch-size", len(ROWS), "--center-rewards-coefficient", center, "--eval-fraction", 0, "--lr", "1e-3",
         "--threads", 1, "--quiet")
    m = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["step"] == 1
    ref = GPT2(**CFG).double()
    ref.load_hf(str(tmp / "rm"))
    w = score.detach().double().clone().requires_grad_(True)
    losses, diffs = [], []
    for row in ROWS:
        P, C, R = tokenize_pair(row)
        rc, rr = reward(ref, w, seq(P, C)), reward(ref, w, seq(P, R))
        losses.append(-F.logsigmoid(rc - rr - row.get("margin", 0.0)) + center * (rc + rr) ** 2)
        diffs.append((rc - rr).item())
    loss = torch.stack(losses).mean()
    loss.backward()
    sq = (w.grad ** 2).sum() + sum((p.grad ** 2).sum() for p in ref.named().values())
    want = {"loss": loss.item(), "accuracy": tie_half_accuracy(diffs), "margin": float(np.mean(diffs)),
            "grad_norm": float(torch.sqrt(sq))}
    assert 0 < want["accuracy"] < 1, diffs   # both outcomes occur: the count is tested
    for k, v in want.items():
        assert abs(m[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, m[k], v)


def tie_half_accuracy(diffs):
    """docs/rm.md's accuracy: r_chosen > r_rejected counts 1, an exact tie 1/2"""
    return float(np.mean([1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs]))


def test_rm_accuracy_counts_an_exact_tie_as_half(rm_dir, tmp_path):
    """A score head of zeros scores every completion 0: each pair is an exact tie, which
    docs/rm.md counts 1/2 (no test had a tie: counting it 0 passed; mutation review)."""
    tmp, model, score = rm_dir
    save_rm(model, torch.zeros_like(score), tmp_path / "zero")
    fdpo("rm", "--model", tmp_path / "zero", "--data", tmp / "pairs.jsonl", "--out", tmp_path / "r", "--steps", 1,
         "--batch-size", len(ROWS), "--eval-fraction", 0, "--threads", 1, "--quiet")
    m = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["margin"] == 0.0 and m["accuracy"] == tie_half_accuracy([0.0] * len(ROWS)) == 0.5, m


def test_a_null_margin_is_no_margin(rm_dir, tmp_path):
    """"margin": null (what a dataset export writes for a row without one) trains as a pair
    without a margin; docs/rm.md said every non-number margin was an error"""
    tmp, _, _ = rm_dir
    runs = {}
    for name, margin in (("absent", ...), ("null", None), ("zero", 0.0)):
        rows = [dict(r) for r in ROWS]
        rows[0].pop("margin", None)
        if margin is not ...:
            rows[0]["margin"] = margin
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        fdpo("rm", "--model", tmp / "rm", "--data", tmp_path / f"{name}.jsonl", "--out", tmp_path / name, "--steps", 1,
             "--batch-size", len(ROWS), "--eval-fraction", 0, "--lr", 0, "--threads", 1, "--quiet")
        runs[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert runs["null"] == runs["absent"] == runs["zero"], runs
    write_jsonl(tmp_path / "half.jsonl", [dict(ROWS[0], margin=0.5)] + [dict(r) for r in ROWS[1:]])
    fdpo("rm", "--model", tmp / "rm", "--data", tmp_path / "half.jsonl", "--out", tmp_path / "half", "--steps", 1,
         "--batch-size", len(ROWS), "--eval-fraction", 0, "--lr", 0, "--threads", 1, "--quiet")
    assert json.loads((tmp_path / "half" / "metrics.jsonl").read_text().splitlines()[0])["loss"] != runs["zero"]


def test_rm_reward_keeps_the_end_of_a_long_prompt_and_scores_an_empty_one_as_eot(rm_dir, tmp_path):
    """rm:DIR over its n_positions: the prompt loses its FIRST tokens (the context next to the
    completion stays), and an empty prompt is <|endoftext|> as in the preference data
    (docs/rm.md). No rm: call reached n_positions or had an empty prompt: keeping the front
    of the prompt, or scoring the bare completion, passed (mutation review)."""
    tmp, model, score = rm_dir
    n_pos = CFG["n_positions"]
    long_prompt = "The quick brown fox jumps over the lazy dog; then it says: " * 2
    rows = [{"prompt": long_prompt, "completion": " a short answer."},
            {"prompt": "", "completion": " hello there"}]
    assert len(long_prompt) + len(rows[0]["completion"]) > n_pos
    write_jsonl(tmp_path / "c.jsonl", rows)
    got = [float(x) for x in harness("eval-reward", f"rm:{tmp / 'rm'}", tmp_path / "c.jsonl").stdout.split()]
    comp = list(rows[0]["completion"].encode())
    with torch.no_grad():
        want = [reward(model, score, list(long_prompt.encode())[-(n_pos - len(comp)):] + comp).item(),
                reward(model, score, [EOT] + list(rows[1]["completion"].encode())).item()]
        front = reward(model, score, list(long_prompt.encode())[:n_pos - len(comp)] + comp).item()
    assert abs(want[0] - front) > 1e-2   # the two ends score apart: the test can tell them
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-4, (got, want)


def test_rm_reward_scores_a_conversation_as_the_reward_model_trained_on_it(rm_dir, tmp_path):
    """A prompt kept as a conversation's JSON text (prompt files, samples) was scored by rm:DIR
    as that JSON text followed by the completion, while `fdpo rm` trains on the rendered
    conversation (docs/training.md): fdpo pairs then ranked against the model's own preference.
    Now the rendered prompt (plain template: <|ROLE|>\\nCONTENT\\n, then <|assistant|>\\n) and the
    completion as the reply (its end-of-turn \\n), as the reference scores that text."""
    tmp, model, score = rm_dir
    conv = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    comps = [{"prompt": conv, "completion": c} for c in ("Hello", "Bye", "")] + [{"prompt": "plain: ", "completion": "x"}]
    write_jsonl(tmp_path / "c.jsonl", comps)
    got = [float(x) for x in harness("eval-reward", f"rm:{tmp / 'rm'}", tmp_path / "c.jsonl").stdout.split()]
    rendered = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    texts = [rendered + c + "\n" for c in ("Hello", "Bye", "")] + ["plain: x"]
    with torch.no_grad():
        want = [reward(model, score, list(t.encode())).item() for t in texts]
    assert rel(got, want) < 1e-5, (got, want)
    # the training loader's reward of the same pair: the same numbers
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": conv, "chosen": "Hello", "rejected": "Bye"}])
    harness("rm-grad", "--model", tmp / "rm", "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "g")
    trained = json.loads((tmp_path / "g" / "result.json").read_text())["rewards"][0]
    assert rel(got[:2], trained) < 1e-6, (got, trained)


@pytest.mark.parametrize("num_labels,id2label,ok", [
    (2, {"0": "LABEL_0"}, True),                    # id2label decides: 1 label (num_labels overwritten)
    (1, {"0": "LABEL_0", "1": "LABEL_1"}, False),   # 2 labels, whatever num_labels says
    (1, None, True),                                # "id2label": null: num_labels
    ("absent", {"0": "LABEL_0"}, True),             # what transformers saves
    ("absent", "absent", False),                    # neither: 2 labels
    (1, ["LABEL_0"], False),                        # not a dictionary: transformers' ValueError
])
def test_id2label_decides_the_number_of_labels_as_in_transformers(tmp_path, num_labels, id2label, ok):
    """transformers' PretrainedConfig: when id2label is given, num_labels = len(id2label) (a
    num_labels beside it that disagrees is overwritten, with a warning); else num_labels,
    default 2. fdpo read num_labels first: it refused a config transformers loads as a 1-label
    reward model and scored one transformers builds with a 2-label head."""
    m = llama_rm(3, pad=EOT)
    d = tmp_path / "rm"
    m.save_hf(str(d))
    save_byte_tokenizer(str(d))
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("num_labels", None)
    cfg.pop("id2label", None)
    cfg.pop("label2id", None)
    if num_labels != "absent":
        cfg["num_labels"] = num_labels
    if id2label != "absent":
        cfg["id2label"] = id2label
    (d / "config.json").write_text(json.dumps(cfg))
    comps = [{"prompt": "Say:", "completion": " apple"}, {"prompt": "Q:", "completion": " dog cat"}]
    write_jsonl(tmp_path / "c.jsonl", comps)
    r = harness("eval-reward", f"rm:{d}", tmp_path / "c.jsonl", check=False)
    if not ok:
        assert r.returncode != 0 and "config.json" in r.stderr and "id2label" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    got = [float(x) for x in r.stdout.split()]
    with torch.no_grad():
        want = [llama_reward(m, list(c["prompt"].encode()) + list(c["completion"].encode()), pad=EOT).item()
                for c in comps]
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-4


@pytest.mark.parametrize("pad", [-1, None, "absent", EOT])
def test_rm_save_keeps_config_special_ids_as_read(rm_dir, tmp_path, pad):
    """A reward model read and saved again (fdpo rm --model RM) writes config.json's
    bos_token_id, eos_token_id and pad_token_id back as read, as the language-model path does:
    a pad_token_id of -1 (no pad token: transformers pools at the last token) or null was
    dropped, so the saved model read as transformers' default (None) instead. The reference is
    the read config.json itself, through Python's json."""
    tmp, model, score = rm_dir
    cfg = dict(RM_CONFIG, bos_token_id=EOT, eos_token_id=[EOT, 10])
    if pad == "absent":
        cfg.pop("pad_token_id")
    else:
        cfg["pad_token_id"] = pad
    d = tmp_path / "rm"
    model.save_hf(str(d), config_extra=cfg, extra={"score.weight": score.detach().float()})
    save_byte_tokenizer(str(d))
    read = json.loads((d / "config.json").read_text())
    out = tmp_path / "out"
    fdpo("rm", "--model", d, "--data", tmp / "pairs.jsonl", "--out", out, "--steps", "1", "--batch-size", "2",
         "--eval-every", "0", "--eval-fraction", "0", "--threads", "1", "--quiet")
    saved = json.loads((out / "config.json").read_text())
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert (k in saved) == (k in read), (k, read, saved)
        if k in read:
            assert saved[k] == read[k] and type(saved[k]) is type(read[k]), (k, read[k], saved[k])
    assert saved["architectures"] == ["GPT2ForSequenceClassification"] and saved["num_labels"] == 1
