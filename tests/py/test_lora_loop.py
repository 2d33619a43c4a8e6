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


def write_adapter(d, base, family, r=4, alpha=8, seed=5):
    """PEFT's adapter files for every linear layer of base; B ~ N(0, 0.3) so it matters"""
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
    for f in os.listdir(base):
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
