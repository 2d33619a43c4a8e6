"""LoRA checkpoints read directly by every command, and LoRA on the loop commands (docs/lora.md).

- Decoding with adapters attached: an adapter directory written here as PEFT's save_pretrained
  does (large random B, so the adapters change the model), with base_model_name_or_path naming
  the base, is a model for generate / eval / score. Its samples (fp32, same seed) equal those
  of the merged model written by numpy (W + s B A in float64, rounded once), and differ from the
  base's; its log-probs equal a float64 PyTorch LoRA's (test_lora.LoraRef).
- Loop commands with --lora-r (rl, online --mode step/rounds, rm, sacpo): the base is
  bit-identical after the run, only adapter tensors are written, resume is bit-exact, and the
  adapter checkpoint evaluates as its merge does."""
import json
import os

import numpy as np
import pytest
import torch

from dpo_common import EOT, fdpo, rel_err, write_jsonl
from fdpo_ref import safetensors as st
from test_lora import LLAMA_ALL, LoraRef, make_gpt2, make_llama

torch.set_num_threads(1)

PROMPTS = ["the cat", "a dog ran", "hello there", "birds sing"]


def write_adapter(d, base, family, r=4, alpha=8, seed=5, tokenizer=False):
    """PEFT's adapter files for every linear layer of base; B ~ N(0, 0.3) so it matters. As
    PEFT's save_pretrained: no tokenizer files (the base's is the model's) unless asked."""
    d.mkdir()
    W = st.load(str(base / "model.safetensors"))[0]
    cfg = json.load(open(base / "config.json"))
    g = torch.Generator().manual_seed(seed)
    if family == "gpt2":
        mods, targets, prefix = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"], ["c_attn", "c_proj", "c_fc"], "transformer.h"
    else:
        mods = ["self_attn." + m for m in ("q_proj", "k_proj", "v_proj", "o_proj")] + ["mlp." + m for m in ("gate_proj", "up_proj", "down_proj")]
        targets, prefix = LLAMA_ALL.split(","), "model.layers"
    t = {}
    for i in range(cfg.get("n_layer", cfg.get("num_hidden_layers"))):
        for m in mods:
            w = W[f"{prefix}.{i}.{m}.weight"]
            fan_in, fan_out = w.shape if family == "gpt2" else w.shape[::-1]
            key = f"base_model.model.{prefix}.{i}.{m}"
            t[key + ".lora_A.weight"] = ((torch.rand(r, fan_in, generator=g) - 0.5) / fan_in ** 0.5).numpy()
            t[key + ".lora_B.weight"] = (torch.randn(fan_out, r, generator=g) * 0.3).numpy()
    st.save(str(d / "adapter_model.safetensors"), t, metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": family == "gpt2",
        "base_model_name_or_path": str(base.resolve()), "use_rslora": False, "use_dora": False}))
    for f in os.listdir(base) if tokenizer else []:
        if "token" in f:
            (d / f).write_bytes((base / f).read_bytes())
    return d


def numpy_merge(base, ad, out, family):
    """a full checkpoint with W + s B A (float64, rounded to float32 once): the independent merge"""
    out.mkdir()
    W, meta = st.load(str(base / "model.safetensors"))
    A = st.load(str(ad / "adapter_model.safetensors"))[0]
    c = json.load(open(ad / "adapter_config.json"))
    s = c["lora_alpha"] / c["r"]
    M = {}
    for k, w in W.items():
        a = A.get("base_model.model." + k.replace(".weight", ".lora_A.weight"))
        if a is None or not k.endswith(".weight"):
            M[k] = w
            continue
        delta = s * (A["base_model.model." + k.replace(".weight", ".lora_B.weight")].astype(np.float64) @ a.astype(np.float64))
        M[k] = (w.astype(np.float64) + (delta.T if family == "gpt2" else delta)).astype(np.float32)
    st.save(str(out / "model.safetensors"), M, metadata={"format": "pt"})
    for f in os.listdir(base):
        if f != "model.safetensors":
            (out / f).write_bytes((base / f).read_bytes())
    return out


def make_base(tmp_path, family):
    return make_gpt2(tmp_path / "base") if family == "gpt2" else make_llama(tmp_path / "base")


def generate(model, prompts_file, out, *extra):
    fdpo("generate", "--model", model, "--data", prompts_file, "--out", out, "--n", 3, "--max-new-tokens", 24,
         "--seed", 7, "--threads", 1, *extra)
    return [json.loads(l) for l in open(out)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapter_checkpoint_decodes_as_its_merge(tmp_path, family):
    base = make_base(tmp_path, family)
    ad = write_adapter(tmp_path / "ad", base, family)
    merged = numpy_merge(base, ad, tmp_path / "merged", family)
    info = json.loads(fdpo("info", "--json", ad).stdout)
    assert info["lora"]["r"] == 4 and info["lora"]["base_model_name_or_path"] == str(base.resolve())
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    got = generate(ad, tmp_path / "p.jsonl", tmp_path / "ad.jsonl")
    want = generate(merged, tmp_path / "p.jsonl", tmp_path / "m.jsonl")
    plain = generate(base, tmp_path / "p.jsonl", tmp_path / "b.jsonl")
    assert len(got) == 3 * len(PROMPTS)
    assert [r["completion"] for r in got] == [r["completion"] for r in want]
    assert [r["completion"] for r in got] != [r["completion"] for r in plain]   # the adapters act
    # batched decoding (several sequences per step, shared prefill) gives the same samples
    assert [r["completion"] for r in generate(ad, tmp_path / "p.jsonl", tmp_path / "ad1.jsonl", "--batch-size", 1)] == \
        [r["completion"] for r in got]

    # score: log-probs through the decoder with adapters = a float64 PyTorch LoRA's
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, [" sat on a mat", " far away", " you", " at dawn"])]
    write_jsonl(tmp_path / "s.jsonl", rows)
    fdpo("score", "--model", ad, "--ref", base, "--data", tmp_path / "s.jsonl", "--out", tmp_path / "sc.jsonl",
         "--threads", 1, "--eot")
    sc = [json.loads(l) for l in open(tmp_path / "sc.jsonl")]
    ref = LoraRef(base, ad)
    for row, out in zip(rows, sc):
        p, c = list(row["prompt"].encode()), list(row["completion"].encode()) + [EOT]
        seq = p + c
        with torch.no_grad():
            lg = ref.gpt2(seq[:-1]) if family == "gpt2" else ref.llama(seq[:-1])
            lp = torch.log_softmax(lg, -1)[len(p) - 1:].gather(1, torch.tensor(c)[:, None]).sum().item()
        assert abs(out["logp"] - lp) <= 1e-5 * max(1.0, abs(lp)), (out, lp)
        assert abs(out["logp"] - out["logp_ref"]) > 1e-2   # the reference is the plain base

    # eval: the adapter checkpoint's numbers are the merged model's (same samples, same scores)
    ev = {}
    for name, m in (("ad", ad), ("merged", merged)):
        fdpo("eval", "--model", m, "--ref", base, "--data", tmp_path / "p.jsonl", "--n", 2, "--max-new-tokens", 16,
             "--reward", "length", "--threads", 1, "--out", tmp_path / f"ev_{name}.json")
        ev[name] = json.load(open(tmp_path / f"ev_{name}.json"))
    fa, fb = ev["ad"]["policies"][0], ev["merged"]["policies"][0]
    nums = [k for k, v in fb.items() if isinstance(v, (int, float))]
    assert set(nums) <= set(fa) and len(nums) > 20 and fa["kl_tok_mean"] > 1e-3
    for k in nums:
        assert abs(fa[k] - fb[k]) <= 1e-4 * max(1.0, abs(fb[k])), (k, fa[k], fb[k])


def test_adapter_checkpoint_errors(tmp_path):
    base = make_gpt2(tmp_path / "base")
    ad = write_adapter(tmp_path / "ad", base, "gpt2")
    cfg = json.load(open(ad / "adapter_config.json"))
    cfg["base_model_name_or_path"] = None
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    r = fdpo("info", ad, check=False)
    assert r.returncode != 0 and "names no base model (base_model_name_or_path)" in r.stderr and "fdpo merge --lora" in r.stderr
    cfg["base_model_name_or_path"] = str(tmp_path / "nowhere")
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    r = fdpo("generate", "--model", ad, "--data", tmp_path / "p.jsonl", check=False)
    assert r.returncode != 0 and "base_model_name_or_path" in r.stderr and "nowhere" in r.stderr
    # an adapter whose base is itself an adapter directory: refused, naming the base to merge
    good = write_adapter(tmp_path / "good", base, "gpt2")
    chained = write_adapter(tmp_path / "chained", base, "gpt2")
    cfg = json.load(open(chained / "adapter_config.json"))
    cfg["base_model_name_or_path"] = str(good)
    (chained / "adapter_config.json").write_text(json.dumps(cfg))
    r = fdpo("generate", "--model", chained, "--data", tmp_path / "p.jsonl", check=False)
    assert r.returncode != 0 and "is itself a LoRA adapter directory" in r.stderr and f"fdpo merge --lora {good}" in r.stderr
    # continuing an adapter (--model ADAPTER --lora-r) with another rank or alpha
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    r = fdpo("rl", "--model", good, "--data", tmp_path / "prompts.txt", "--reward", "length", "--out", tmp_path / "o",
             "--steps", 1, "--lora-r", 8, "--lora-alpha", 8, check=False)
    assert r.returncode != 0 and "--lora-r/--lora-alpha: 8/8 differ from the adapter of --model" in r.stderr and "r=4" in r.stderr


def test_adapter_files_fdpo_cannot_read_exactly_are_refused(tmp_path):
    """PEFT's lora_bias (a bias on lora_B), a tensor no module reads and a NaN were read as if
    absent (wrong log-probs or null ones, exit 0); each is now refused naming it"""
    base = make_gpt2(tmp_path / "base")
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "hi", "completion": " there"}])

    def score(ad):
        return fdpo("score", "--model", ad, "--data", tmp_path / "s.jsonl", "--threads", 1, check=False)
    ad = write_adapter(tmp_path / "bias", base, "gpt2")
    cfg = json.load(open(ad / "adapter_config.json"))
    cfg["lora_bias"] = True
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    r = score(ad)
    assert r.returncode == 1 and f"{ad / 'adapter_config.json'}: lora_bias is not supported" in r.stderr, r.stderr
    ad = write_adapter(tmp_path / "extra", base, "gpt2")
    t = st.load(str(ad / "adapter_model.safetensors"))[0]
    name = "base_model.model.transformer.h.0.attn.c_attn.lora_B.bias"
    t[name] = np.full(t[name.replace(".bias", ".weight")].shape[0], 0.5, np.float32)
    st.save(str(ad / "adapter_model.safetensors"), t, metadata={"format": "pt"})
    r = score(ad)
    assert r.returncode == 1 and (f"{ad / 'adapter_model.safetensors'}: unexpected tensor '{name}' (not one this "
                                  "model reads: it would be ignored)") in r.stderr, r.stderr
    ad = write_adapter(tmp_path / "nan", base, "gpt2")
    t = st.load(str(ad / "adapter_model.safetensors"))[0]
    name = "base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"
    t[name][0, 0] = np.nan
    st.save(str(ad / "adapter_model.safetensors"), t, metadata={"format": "pt"})
    r = score(ad)
    assert r.returncode == 1 and (f"{ad / 'adapter_model.safetensors'}: tensor '{name}' has 1 non-finite value "
                                  "(NaN or Inf)") in r.stderr, r.stderr


# ---- LoRA on the loop commands ----

def files_hash(d):
    import hashlib
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in sorted(os.listdir(d))}


LETTERS = """import json, sys
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(sum("a" <= ch <= "z" for ch in c))
"""


def loop_cmd(cmd, tmp_path, base, out, *extra, check=True):
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(6)))
    (tmp_path / "letters.py").write_text(LETTERS)
    args = {"rl": ["rl", "--algo", "rloo", "--divergence", "js", "--prompts-per-step", 2, "--n", 3, "--steps", 4],
            "online-step": ["online", "--mode", "step", "--divergence", "fkl", "--prompts-per-round", 2, "--n", 3,
                            "--steps", 4],
            "online-rounds": ["online", "--rounds", 2, "--prompts-per-round", 3, "--n", 3, "--batch-size", 2]}[cmd]
    return fdpo(*args, "--model", base, "--data", tmp_path / "prompts.txt", "--out", out,
                "--reward", f"cmd:/usr/bin/python3 {tmp_path / 'letters.py'}",
                "--max-new-tokens", 8, "--lr", "2e-2", "--threads", 1, "--seed", 5, "--lora-r", 4, "--lora-alpha", 16,
                *extra, check=check)


def check_adapter_dir(d, base):
    """a PEFT adapter on base: adapter files, no weights of its own, B trained"""
    assert (d / "adapter_config.json").exists() and not (d / "model.safetensors").exists()
    assert json.load(open(d / "adapter_config.json"))["base_model_name_or_path"] == str(base.resolve())
    t = st.load(str(d / "adapter_model.safetensors"))[0]
    assert t and all(".lora_A." in k or ".lora_B." in k for k in t)
    assert any(np.abs(v).max() > 0 for k, v in t.items() if ".lora_B." in k)   # it learned something


def check_evaluates_as_merge(tmp_path, d, base, family):
    merged = numpy_merge(base, d, tmp_path / (d.name + "_merged"), family)
    write_jsonl(tmp_path / "hp.jsonl", [{"prompt": p} for p in PROMPTS])
    a = generate(d, tmp_path / "hp.jsonl", tmp_path / "ga.jsonl")
    b = generate(merged, tmp_path / "hp.jsonl", tmp_path / "gb.jsonl")
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in a[:6]]
    write_jsonl(tmp_path / "sc.jsonl", rows)
    sa, sb = ([json.loads(l) for l in open(fdpo_out)] for fdpo_out in (
        (fdpo("score", "--model", m, "--data", tmp_path / "sc.jsonl", "--out", tmp_path / f"s_{i}.jsonl", "--threads", 1),
         tmp_path / f"s_{i}.jsonl")[1] for i, m in ((0, d), (1, merged))))
    for x, y in zip(sa, sb):
        assert abs(x["logp"] - y["logp"]) <= 1e-5 * max(1.0, abs(y["logp"]))


@pytest.mark.parametrize("cmd,family", [("rl", "gpt2"), ("online-step", "llama")])
def test_lora_step_loops_train_adapters_only_and_resume_exactly(tmp_path, cmd, family):
    base = make_base(tmp_path, family)
    before = files_hash(base)
    loop_cmd(cmd, tmp_path, base, tmp_path / "a")
    check_adapter_dir(tmp_path / "a", base)
    assert files_hash(base) == before   # the base is only read
    # the optimizer state holds the adapters' moments only
    state = st.load(str(tmp_path / "a" / "training_state.safetensors"))[0]
    assert state and all("lora_" in k for k in state)
    m = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    assert [x["step"] for x in m] == [1, 2, 3, 4] and abs(m[0]["objective/kl"]) < 1e-6   # step 1: B = 0, policy = reference
    assert max(abs(x["objective/kl"]) for x in m[1:]) > 1e-4
    # stopped after step 2 and resumed: byte-identical adapters and AdamW moments
    loop_cmd(cmd, tmp_path, base, tmp_path / "b", "--stop-at", 2)
    loop_cmd(cmd, tmp_path, base, tmp_path / "b", "--resume")
    for f in ("adapter_model.safetensors", "training_state.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # the reference is the base with the adapters off: the same run with --ref BASE (a second
    # copy of the weights) gives the same adapters
    loop_cmd(cmd, tmp_path, base, tmp_path / "c", "--ref", base)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "c" / "adapter_model.safetensors").read_bytes()
    check_evaluates_as_merge(tmp_path, tmp_path / "a", base, family)


def test_lora_online_rounds_continue_one_adapter_on_the_base(tmp_path):
    base = make_base(tmp_path, "gpt2")
    before = files_hash(base)
    loop_cmd("online-rounds", tmp_path, base, tmp_path / "a")
    assert files_hash(base) == before
    for k in (0, 1):   # every round is one PEFT adapter on the original base
        check_adapter_dir(tmp_path / "a" / f"round-{k}", base)
    r0 = st.load(str(tmp_path / "a" / "round-0" / "adapter_model.safetensors"))[0]
    r1 = st.load(str(tmp_path / "a" / "round-1" / "adapter_model.safetensors"))[0]
    assert r0.keys() == r1.keys() and any(not np.array_equal(r0[k], r1[k]) for k in r0)
    m = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    assert m[0]["objective/kl"] == 0 and abs(m[1]["objective/kl"]) > 1e-4   # reference: the base (adapters off)
    # resume after round 0 gives round 1 byte for byte
    loop_cmd("online-rounds", tmp_path, base, tmp_path / "b", "--rounds", 1)
    loop_cmd("online-rounds", tmp_path, base, tmp_path / "b", "--rounds", 2, "--resume")
    for k in (0, 1):
        assert (tmp_path / "a" / f"round-{k}" / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "b" / f"round-{k}" / "adapter_model.safetensors").read_bytes()
    check_evaluates_as_merge(tmp_path, tmp_path / "a" / "round-1", base, "gpt2")


def test_lora_sacpo_stages_are_adapters_on_the_base(tmp_path):
    """file stages with --lora-r: every stage is one PEFT adapter on the original base; the
    safety stage continues the reward stage's adapter with the reward model as its reference
    (its first loss is log 2: policy = reference); a P-SACPO merge is numpy's interpolation of
    the two merged models; the base is only read"""
    from test_sacpo import pairs
    base = make_base(tmp_path, "gpt2")
    before = files_hash(base)
    write_jsonl(tmp_path / "reward.jsonl", pairs(32, 0, "aeiou", "xyzqw"))
    write_jsonl(tmp_path / "safety.jsonl", pairs(32, 1, "mnlr ", "!#$%&"))
    s = tmp_path / "s"
    fdpo("sacpo", "--model", base, "--reward-data", tmp_path / "reward.jsonl", "--safety-data", tmp_path / "safety.jsonl",
         "--beta", "0.2", "--out", s, "--threads", 1, "--batch-size", 8, "--steps", 3, "--lr", "2e-2",
         "--eval-fraction", 0, "--quiet", "--lambda", "1,3", "--merge", "0.5", "--lora-r", 4, "--lora-alpha", 16)
    assert files_hash(base) == before
    for d in ("reward", "lambda-1", "lambda-3"):
        check_adapter_dir(s / d, base)
    for lam in (1, 3):
        m = [json.loads(l) for l in open(s / f"lambda-{lam}" / "metrics.jsonl")]
        assert abs(m[0]["loss"] - np.log(2)) < 1e-6, m[0]   # reference = the reward stage's model
        assert abs(m[-1]["loss"] - np.log(2)) > 1e-4
    ma = numpy_merge(base, s / "lambda-1", tmp_path / "ma", "gpt2")
    mb = numpy_merge(base, s / "lambda-3", tmp_path / "mb", "gpt2")
    a, b = st.load(str(ma / "model.safetensors"))[0], st.load(str(mb / "model.safetensors"))[0]
    got = st.load(str(s / "merge-1-3-w0.5" / "model.safetensors"))[0]
    assert got.keys() == a.keys()
    for k in got:
        want = 0.5 * a[k].astype(np.float64) + 0.5 * b[k].astype(np.float64)
        assert np.abs(got[k] - want).max() <= 1e-6 * max(1.0, np.abs(want).max()), k
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    # a rerun with other LoRA settings is another plan
    r = fdpo("sacpo", "--model", base, "--reward-data", tmp_path / "reward.jsonl", "--safety-data", tmp_path / "safety.jsonl",
             "--beta", "0.2", "--out", s, "--lambda", "1,3", "--lora-r", 8, "--lora-alpha", 16, check=False)
    assert r.returncode != 0 and f"--lora-r: 8 differs from 4 in {s / 'sacpo.json'}, which its stages trained with" in r.stderr, r.stderr
    # online stages: every round and stage an adapter on the base, also a round without pairs
    # (all completions of --max-new-tokens 8 have the same length: the policy carries over)
    (tmp_path / "prompts.txt").write_text("p1:\np2:\n")
    fdpo("sacpo", "--model", base, "--reward", "length", "--safety", "length:words", "--data", tmp_path / "prompts.txt",
         "--rounds", 2, "--prompts-per-round", 2, "--n", 3, "--max-new-tokens", 8, "--lambda", 1, "--beta", 0.2,
         "--out", tmp_path / "on", "--threads", 1, "--steps", 2, "--batch-size", 2, "--lora-r", 4, "--quiet")
    for d in ("reward", "reward.online/round-0", "reward.online/round-1", "lambda-1", "lambda-1.online/round-1"):
        assert json.load(open(tmp_path / "on" / d / "adapter_config.json"))["base_model_name_or_path"] == str(base.resolve()), d


def test_rl_lora_peak_memory_below_full_rl(tmp_path):
    """peak RSS of fdpo rl: full fine-tuning holds the policy, its gradients, two AdamW moments
    and a second copy of the weights as the reference (5 copies); LoRA holds the base once (the
    reference is the base with the adapters off) plus the small adapter state. Structural, not
    timing: at least 2.5 fp32 copies apart."""
    from test_lora import peak_rss_mib
    base = make_gpt2(tmp_path / "base", C=256, L=6)
    copy_mib = sum(v.size for v in st.load(str(base / "model.safetensors"))[0].values()) * 4 / 2 ** 20
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(4)))
    common = ["rl", "--model", base, "--data", tmp_path / "p.txt", "--reward", "length", "--steps", 2,
              "--prompts-per-step", 2, "--n", 2, "--max-new-tokens", 8, "--threads", 1, "--quiet"]
    full = peak_rss_mib([*common, "--out", tmp_path / "full"])
    lora = peak_rss_mib([*common, "--out", tmp_path / "lora", "--lora-r", 16, "--lora-alpha", 32,
                         "--lora-targets", "c_attn,c_proj,c_fc"])
    print(f"peak RSS: full rl {full:.1f} MiB, LoRA rl {lora:.1f} MiB ({copy_mib:.1f} MiB per fp32 copy)")
    assert full - lora >= 2.5 * copy_mib, (full, lora, copy_mib)


@pytest.mark.parametrize("cmd", ["online-step", "rl"])
def test_lora_step_loops_take_a_ref_naming_the_base_as_the_adapters_off_policy(tmp_path, cmd):
    """--lora-r with --ref naming --model (here spelt BASE/): online's rounds score that
    reference as the policy with its adapters off (one model in memory); --mode step (and rl)
    loaded a second copy of the weights and scored that from step 2 on. They now take the
    policy with its adapters off, as without --ref: the same adapters and metrics byte for byte
    as the run without --ref (whose reference is documented as the adapters-off base), a state
    that records the base's hash and no second reference (as that run's), and no second copy in
    memory: peak RSS within half a copy of the run without --ref (it was a whole copy above)."""
    from test_lora import peak_rss_mib
    base = make_gpt2(tmp_path / "base", C=256, L=6)
    copy_mib = sum(v.size for v in st.load(str(base / "model.safetensors"))[0].values()) * 4 / 2 ** 20
    loop_cmd(cmd, tmp_path, base, tmp_path / "a")
    loop_cmd(cmd, tmp_path, base, tmp_path / "c", "--ref", f"{base}/")
    for f in ("adapter_model.safetensors", "training_state.safetensors", "metrics.jsonl"):
        if f == "metrics.jsonl":
            strip = lambda d: [{k: v for k, v in json.loads(l).items() if not k.startswith("time/") and k != "tokens_per_sec"}
                               for l in open(d / f)]
            assert strip(tmp_path / "a") == strip(tmp_path / "c")
        else:
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes(), f
    sa, sc = (json.loads((tmp_path / d / "training_state.json").read_text()) for d in ("a", "c"))
    assert "ref_hash" not in sa and "ref_hash" not in sc, (sa.get("ref_hash"), sc.get("ref_hash"))
    assert sc["lora_base_hash"] == sa["lora_base_hash"]
    # no second copy of the weights (the loop's own flags, peak RSS of the whole run)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(6)))
    args = ["--model", base, "--data", tmp_path / "prompts.txt", "--reward", "length", "--max-new-tokens", 8,
            "--threads", 1, "--quiet", "--lora-r", 4, "--steps", 2, "--n", 2]
    args = (["rl", "--prompts-per-step", 2] if cmd == "rl" else ["online", "--mode", "step", "--prompts-per-round", 2]) + args
    without = peak_rss_mib([*args, "--out", tmp_path / "m1"])
    with_ref = peak_rss_mib([*args, "--out", tmp_path / "m2", "--ref", base])
    print(f"peak RSS: {cmd} without --ref {without:.1f} MiB, --ref BASE {with_ref:.1f} MiB ({copy_mib:.1f} MiB a copy)")
    assert with_ref - without <= 0.5 * copy_mib, (with_ref, without, copy_mib)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_reward_model(tmp_path, family):
    """fdpo rm --lora-r on a language model: adapters + the score head trained in full (PEFT's
    task_type SEQ_CLS, modules_to_save ["score"], key base_model.model.score.weight); the base
    only read; resume bit-exact; rm:OUT scores as a float64 PyTorch LoRA with that score head
    reads the final hidden state of the last token; fdpo merge --lora gives a reward model that
    scores the same"""
    from test_lora import pair_rows
    base = make_base(tmp_path, family)
    before = files_hash(base)
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(16))
    rm = lambda out, *x: fdpo("rm", "--model", base, "--data", tmp_path / "pairs.jsonl", "--out", out, "--steps", 4,
                              "--batch-size", 4, "--lr", "2e-2", "--threads", 1, "--eval-fraction", 0, "--quiet",
                              "--lora-r", 4, "--lora-alpha", 8, "--lora-dropout", 0.1, *x)
    rm(tmp_path / "a")
    assert files_hash(base) == before
    a = tmp_path / "a"
    cfg = json.load(open(a / "adapter_config.json"))
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"] and not (a / "model.safetensors").exists()
    t = st.load(str(a / "adapter_model.safetensors"))[0]
    C = json.load(open(base / "config.json")).get("n_embd") or json.load(open(base / "config.json"))["hidden_size"]
    assert t["base_model.model.score.weight"].shape == (1, C)
    assert all(".lora_" in k for k in t if k != "base_model.model.score.weight")
    assert any(np.abs(v).max() > 0 for k, v in t.items() if ".lora_B." in k)
    rm(tmp_path / "b", "--stop-at", 2)
    fdpo("rm", "--out", tmp_path / "b", "--resume", "--model", base, "--data", tmp_path / "pairs.jsonl", "--quiet")
    for f in ("adapter_model.safetensors", "training_state.safetensors"):
        assert (a / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f

    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, [" yes good", " no bad", " fine day", " grim"])]
    write_jsonl(tmp_path / "s.jsonl", rows)
    got = [json.loads(l)["reward"] for l in fdpo("score", "--model", base, "--data", tmp_path / "s.jsonl",
                                                  "--reward", f"rm:{a}", "--threads", 1).stdout.splitlines()]
    ref = LoraRef(base, a)
    score = torch.tensor(t["base_model.model.score.weight"], dtype=torch.float64)
    head = "transformer.wte.weight" if family == "gpt2" else "lm_head.weight"
    ref.base[head] = torch.cat([ref.base[head], score])   # logits[:, V] = hidden . score
    V = json.load(open(base / "config.json"))["vocab_size"]
    for row, g in zip(rows, got):
        seq = list((row["prompt"] + row["completion"]).encode())
        with torch.no_grad():
            want = (ref.gpt2(seq) if family == "gpt2" else ref.llama(seq))[-1, V].item()
        assert abs(g - want) <= 1e-5 * max(1.0, abs(want)), (g, want)
    fdpo("merge", "--lora", a, "--out", tmp_path / "merged")
    merged = [json.loads(l)["reward"] for l in fdpo("score", "--model", base, "--data", tmp_path / "s.jsonl", "--reward",
                                                    f"rm:{tmp_path / 'merged'}", "--threads", 1).stdout.splitlines()]
    assert np.allclose(merged, got, rtol=1e-5, atol=1e-6)


def score_logps(model, rows_file):
    return [json.loads(l)["logp"] for l in fdpo("score", "--model", model, "--data", rows_file, "--threads", 1).stdout.splitlines()]


def ref_logps(base, ad, rows, scale=None):
    """float64 PyTorch LoRA (GPT-2): sum of log p of each row's completion bytes after its prompt"""
    ref = LoraRef(base, ad)
    if scale is not None:
        ref.scale = scale
    out = []
    for row in rows:
        p, c = list(row["prompt"].encode()), list(row["completion"].encode())
        toks = p + c
        with torch.no_grad():
            lp = torch.log_softmax(ref.gpt2(toks), -1)
        out.append(sum(float(lp[t - 1, toks[t]]) for t in range(len(p), len(toks))))
    return out


def edit_config(src, dst, **changes):
    """a copy of adapter directory src with adapter_config.json keys changed"""
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    cfg = json.load(open(src / "adapter_config.json"))
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_rslora_and_activated_lora_are_refused_for_any_value_peft_takes_as_true(tmp_path):
    """PEFT tests use_rslora with Python's `if` (LoraLayer.update_layer: scaling = alpha / sqrt(r)),
    so 1 or "yes" select rsLoRA: fdpo refused only the literal true and scored them with
    alpha/r, exit 0. An Activated-LoRA adapter (alora_invocation_tokens, PEFT >= 0.17: the
    adapter acts only from its invocation tokens on, and PEFT refuses to merge it) was applied
    to every token and merged. Both are now refused by name in score, generate and merge
    --lora; the values PEFT takes as false (0, "", null; alora: null only) read as plain LoRA,
    whose log-probs equal a float64 PyTorch LoRA's with alpha/r."""
    base = make_gpt2(tmp_path / "base")
    ad = write_adapter(tmp_path / "ad", base, "gpt2", r=4, alpha=8)
    rows = [{"prompt": "q0 say", "completion": " the cat sat"}, {"prompt": "hello", "completion": " world again"}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    cases = [("use_rslora", v) for v in (1, 2.5, "yes", "true", [0], {"a": 1})] + \
            [("alora_invocation_tokens", v) for v in ([35, 36], [32, 116], [])]   # PEFT: `is not None`
    for i, (key, value) in enumerate(cases):
        d = edit_config(ad, tmp_path / f"bad{i}", **{key: value})
        cfg = d / "adapter_config.json"
        what = ("use_rslora is not supported" if key == "use_rslora" else
                "alora_invocation_tokens is not supported (Activated LoRA, an adapter that acts only after its "
                "invocation tokens; fdpo applies an adapter to every token)")
        r = fdpo("score", "--model", d, "--data", tmp_path / "s.jsonl", "--threads", 1, check=False)
        assert r.returncode == 1 and r.stderr == f"fdpo score: --model {d}: {cfg}: {what}\n", (key, value, r.stderr)
        r = fdpo("generate", "--model", d, "--data", tmp_path / "p.jsonl", "--out", tmp_path / f"g{i}.jsonl", check=False)
        assert r.returncode == 1 and f"{cfg}: {what}" in r.stderr and not (tmp_path / f"g{i}.jsonl").exists(), r.stderr
        r = fdpo("merge", "--lora", d, "--out", tmp_path / f"m{i}", check=False)
        assert r.returncode == 1 and f"{cfg}: {what}" in r.stderr and not (tmp_path / f"m{i}").exists(), r.stderr
    want = ref_logps(base, ad, rows, scale=8 / 4)
    for i, changes in enumerate([{"use_rslora": 0}, {"use_rslora": ""}, {"use_rslora": None},
                                 {"alora_invocation_tokens": None}]):
        got = score_logps(edit_config(ad, tmp_path / f"ok{i}", **changes), tmp_path / "s.jsonl")
        assert np.allclose(got, want, rtol=1e-6, atol=0), (changes, got, want)
    # and what rsLoRA would have been: another model (alpha/sqrt(r) = 4 != alpha/r = 2)
    assert not np.allclose(ref_logps(base, ad, rows, scale=8 / 4 ** 0.5), want, rtol=1e-3)


def test_peft_seq_cls_modules_to_save_lists_are_read_as_peft_reads_them(tmp_path):
    """PEFT's PeftModelForSequenceClassification adds ["classifier", "score"] to modules_to_save
    before save_pretrained, so every reward adapter it writes says ["classifier", "score"] (or
    ["score", "classifier", "score"]): fdpo refused all but ["score"]. PEFT ignores a name that
    matches no module (no "classifier" in these models) and [] saves nothing: both read now
    (rewards equal a float64 PyTorch LoRA's with that score head); a name of a module of the
    model (trained in full, which fdpo does not do) is still refused by name."""
    from test_lora import pair_rows
    base = make_gpt2(tmp_path / "base")
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    fdpo("rm", "--model", base, "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "rm", "--steps", 2,
         "--batch-size", 2, "--lr", "2e-2", "--threads", 1, "--eval-every", 0, "--quiet", "--lora-r", 2)
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, [" yes good", " no bad", " fine day", " grim"])]
    write_jsonl(tmp_path / "s.jsonl", rows)
    t = st.load(str(tmp_path / "rm" / "adapter_model.safetensors"))[0]
    ref = LoraRef(base, tmp_path / "rm")
    ref.base["transformer.wte.weight"] = torch.cat([ref.base["transformer.wte.weight"],
                                                    torch.tensor(t["base_model.model.score.weight"], dtype=torch.float64)])
    V = json.load(open(base / "config.json"))["vocab_size"]
    with torch.no_grad():
        want = [ref.gpt2(list((r["prompt"] + r["completion"]).encode()))[-1, V].item() for r in rows]
    for i, mts in enumerate([["classifier", "score"], ["score", "classifier", "score"]]):
        d = edit_config(tmp_path / "rm", tmp_path / f"peft{i}", modules_to_save=mts)
        got = [json.loads(l)["reward"] for l in fdpo("score", "--model", base, "--data", tmp_path / "s.jsonl",
                                                      "--reward", f"rm:{d}", "--threads", 1).stdout.splitlines()]
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6), (mts, got, want)
        fdpo("merge", "--lora", d, "--out", tmp_path / f"merged{i}")
        fdpo("info", "--model", d)
    for i, (mts, entry) in enumerate([(["score", "ln_f"], "ln_f"), (["classifier", "score", "mlp.c_fc"], "mlp.c_fc")]):
        d = edit_config(tmp_path / "rm", tmp_path / f"bad{i}", modules_to_save=mts)
        r = fdpo("merge", "--lora", d, "--out", tmp_path / f"mb{i}", check=False)
        assert r.returncode == 1 and (f"{d / 'adapter_config.json'}: modules_to_save entry '{entry}' is not supported "
                                      "(a module trained in full; only \"score\", the score head of a reward model)"
                                      ) in r.stderr, r.stderr
    d = edit_config(tmp_path / "rm", tmp_path / "noscore", modules_to_save=["classifier"])
    r = fdpo("merge", "--lora", d, "--out", tmp_path / "mn", check=False)   # no "score": a language model's adapter
    assert r.returncode == 1 and (f"{d / 'adapter_model.safetensors'}: unexpected tensor 'base_model.model.score.weight'"
                                  ) in r.stderr, r.stderr
    # a causal-LM adapter: [] (a no-op in PEFT) and a name that matches nothing read; lm_head refused
    ad = write_adapter(tmp_path / "ad", base, "gpt2")
    write_jsonl(tmp_path / "c.jsonl", rows)
    want = ref_logps(base, ad, rows)
    for i, mts in enumerate([[], ["classifier"]]):
        got = score_logps(edit_config(ad, tmp_path / f"lm{i}", modules_to_save=mts), tmp_path / "c.jsonl")
        assert np.allclose(got, want, rtol=1e-6, atol=0), (mts, got, want)
    d = edit_config(ad, tmp_path / "lm_head", modules_to_save=["lm_head"])
    r = fdpo("score", "--model", d, "--data", tmp_path / "c.jsonl", "--threads", 1, check=False)
    assert r.returncode == 1 and (f"{d / 'adapter_config.json'}: modules_to_save entry 'lm_head' is not supported"
                                  ) in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["rl", "online-step"])
def test_lora_step_loops_continuing_an_adapter_take_it_as_the_reference(tmp_path, cmd):
    """--model ADAPTER --lora-r without --ref: the reference is --model (docs/online.md, rl.md),
    as in dpo, kto and online rounds; rl and online --mode step took the adapter's base (the
    adapters off), so step 1 measured KL to another model (-0.068 here) and regularised towards
    it. Step 1 samples come from --model itself: KL 0 (online's f-DPO loss log 2), and the run
    equals the one with --ref ADAPTER."""
    base = make_base(tmp_path, "gpt2")
    ad = write_adapter(tmp_path / "ad", base, "gpt2", r=4, alpha=16)
    loop_cmd(cmd, tmp_path, ad, tmp_path / "a")
    m = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    assert m[0]["objective/kl"] == 0, m[0]
    if cmd == "online-step":
        assert abs(m[0]["loss"] - np.log(2)) < 1e-6, m[0]
    loop_cmd(cmd, tmp_path, ad, tmp_path / "c", "--ref", ad)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "c" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("cmd", ["rl", "online-step"])
def test_a_state_trained_against_the_adapters_off_base_is_not_resumed_against_the_adapter(tmp_path, cmd):
    """a run of an earlier fdpo continuing an adapter without --ref trained against the base with
    the adapters off; its state records the LoRA base's hash and no reference (written here by
    dropping ref_hash from a state of today's). Resumed, today's rule (the adapter as the
    reference) would switch references mid-run with exit 0 (a review measured objective/kl
    -0.000732, -1e-05, 0.020129: neither run's); refused, saying why."""
    base = make_base(tmp_path, "gpt2")
    ad = write_adapter(tmp_path / "ad", base, "gpt2", r=4, alpha=16)
    out = tmp_path / "a"
    loop_cmd(cmd, tmp_path, ad, out, "--stop-at", 1)
    state = json.loads((out / "training_state.json").read_text())
    assert "ref_hash" in state and "lora_base_hash" in state
    del state["ref_hash"]
    (out / "training_state.json").write_text(json.dumps(state))
    before = (out / "adapter_model.safetensors").read_bytes()
    r = loop_cmd(cmd, tmp_path, ad, out, "--resume", check=False)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].endswith(
        "--resume: the saved run trained against its LoRA base with the adapters off (an earlier fdpo's reference for "
        f"a continued adapter without --ref), and this run's reference is --model {ad}: resumed, the loss would change "
        "references mid-run; finish it with the fdpo that saved it, or start it anew"), r.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_continuing_an_adapter_refuses_other_lora_targets(tmp_path):
    """--model ADAPTER --lora-r R continues the adapter's targets: another --lora-targets (a real
    module, or one matching nothing) was dropped without a word and recorded in the training
    state; refused now naming both lists, as a differing r/alpha is (docs/lora.md). A list
    selecting the same modules ("attn.c_attn" for "c_attn") is the same targets and runs."""
    from test_lora import sft_rows
    base = make_gpt2(tmp_path / "base")
    write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    sft = lambda model, out, *x, check=True: fdpo(
        "sft", "--model", model, "--data", tmp_path / "sft.jsonl", "--out", out, "--steps", 1, "--batch-size", 4,
        "--seq-len", 32, "--threads", 1, "--eval-every", 0, "--quiet", "--lora-r", 2, *x, check=check)
    a1 = tmp_path / "a1"
    sft(base, a1, "--lora-targets", "c_attn")
    r = sft(a1, tmp_path / "a2", "--lora-targets", "c_fc", check=False)
    assert r.returncode == 1 and r.stderr == (f"fdpo sft: --lora-targets: c_fc differs from the target modules of the "
                                              f"adapter of --model {a1} (c_attn), which this run continues\n"), r.stderr
    assert not (tmp_path / "a2").exists()
    r = sft(a1, tmp_path / "a3", "--lora-targets", "bogus", check=False)
    assert r.returncode == 1 and r.stderr.startswith("fdpo sft: --lora-targets: 'bogus' matches no linear layer of "
                                                     "this gpt2 model"), r.stderr
    assert not (tmp_path / "a3").exists()
    sft(a1, tmp_path / "a4", "--lora-targets", "attn.c_attn")
    assert json.load(open(tmp_path / "a4" / "adapter_config.json"))["target_modules"] == ["c_attn"]


def test_online_rounds_continuing_an_adapter_refuses_other_lora_targets(tmp_path):
    """online rounds set their adapter up apart from the trainers: another --lora-targets on a
    continued adapter was dropped (the c_attn adapter trained) and written into online.json
    (a review's find after the trainers' fix)"""
    base = make_base(tmp_path, "gpt2")
    ad = write_adapter(tmp_path / "ad", base, "gpt2", r=4, alpha=16)
    targets = json.load(open(ad / "adapter_config.json"))["target_modules"]
    other = "c_fc" if "c_fc" not in targets else "c_proj"
    r = loop_cmd("online-rounds", tmp_path, ad, tmp_path / "o", "--lora-targets", other, check=False)
    assert r.returncode == 1 and r.stderr == (
        f"fdpo online: --lora-targets: {other} differs from the target modules of the adapter of --model {ad} "
        f"({','.join(targets)}), which this run continues\n"), r.stderr
    assert not (tmp_path / "o").exists()


def test_a_broken_adapter_config_is_reported_with_its_line(tmp_path):
    """a syntax error or a key twice in adapter_config.json was reported as "names no base model
    (base_model_name_or_path)" (and the merge --lora fix it gave failed again); every caller
    now reports the JSON error at the line Python's json names"""
    base = make_gpt2(tmp_path / "base")
    ad = write_adapter(tmp_path / "ad", base, "gpt2")
    good = json.dumps(json.load(open(ad / "adapter_config.json")), indent=1)
    bad, dup = tmp_path / "bad", tmp_path / "dup"
    for d, text in [(bad, good.replace('"r": 4,', '"r": 4,,')), (dup, good[:-2] + ',\n "r": 4\n}')]:
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes((ad / "adapter_model.safetensors").read_bytes())
        (d / "adapter_config.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads((bad / "adapter_config.json").read_text())
    bad_line = e.value.lineno
    dup_line = [i for i, l in enumerate((dup / "adapter_config.json").read_text().splitlines(), 1)
                if l.strip().startswith('"r"')][-1]   # the key's second occurrence
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "hi", "completion": " there"}])
    (tmp_path / "p.txt").write_text("hi\n")
    for d, msg in [(bad, f"{bad / 'adapter_config.json'}:{bad_line}: invalid JSON near column"),
                   (dup, f'{dup / "adapter_config.json"}:{dup_line}: key "r" appears twice in one object')]:
        runs = [("score", ["score", "--model", d, "--data", tmp_path / "s.jsonl"], f"--model {d}: "),
                ("info", ["info", "--model", d], ""),
                ("merge", ["merge", "--lora", d, "--out", tmp_path / "m"], f"--lora {d}: "),
                ("eval", ["eval", "--model", base, "--ref", base, "--data", tmp_path / "p.txt", "--n", 1,
                          "--max-new-tokens", 2, "--reward", f"rm:{d}"], f"--reward rm:{d}: reward model {d}: "),
                ("sft", ["sft", "--model", d, "--data", tmp_path / "s.jsonl", "--out", tmp_path / "o", "--lora-r", 4,
                         "--steps", 1], f"--model {d}: ")]
        for cmd, args, where in runs:
            r = fdpo(*args, "--threads", 1, check=False) if cmd != "info" else fdpo(*args, check=False)
            assert r.returncode == 1 and r.stderr.startswith(f"fdpo {cmd}: {where}{msg}"), (cmd, r.stderr)
        assert not (tmp_path / "m").exists() and not (tmp_path / "o").exists()
