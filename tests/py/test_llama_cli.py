"""Llama models through the fdpo commands. `fdpo pretrain --arch llama` writes a checkpoint
that the float64 PyTorch reference (tests/py/fdpo_ref/llama.py) loads and evaluates to the
logits of `fdpo-harness model-fb` (max|diff|/max|ref| <= 1e-5); an interrupted run resumes
bit-exactly; --resume refuses another architecture. On a Llama checkpoint written by the
reference: the f-DPO step (loss and every parameter gradient) matches the same objective
written in PyTorch on the reference's log-probs, `fdpo score` reports the reference's
completion log-probs, and sft, dpo (cached reference), generate and eval run. Bad flags are
refused naming the flag."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from dpo_common import (EOT, completion_logps, fdpo, harness, pair_loss, rel_err, save_byte_tokenizer,
                        tokenize_pair, write_jsonl)
from fdpo_ref import safetensors as st
from fdpo_ref.llama import Llama

torch.set_num_threads(1)

ARCH = ["--arch", "llama", "--n-layer", 2, "--n-head", 4, "--n-kv-head", 2, "--n-embd", 32, "--n-positions", 64]
TEXT = "\n".join(" ".join(["the cat sat on the mat", "a dog ran", "birds sing at dawn"][(i + j) % 3] for j in range(4))
                 for i in range(30))


class Callable:
    """completion_logps calls model(tokens): the reference Llama's forward"""
    def __init__(self, m):
        self.m = m

    def __call__(self, toks):
        return self.m.forward(toks)


def load_reference(d):
    """the PyTorch reference Llama with the config and tensors of checkpoint dir d (float64)"""
    c = json.load(open(d / "config.json"))
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings"]
    m = Llama(**{k: c[k] for k in keys})
    tensors = st.load(str(d / "model.safetensors"))[0]
    assert set(tensors) == set(m.p), (sorted(tensors), sorted(m.p))
    m.p = {k: torch.tensor(np.asarray(v), dtype=torch.float64).requires_grad_(True) for k, v in tensors.items()}
    return m


def pretrain(tmp_path, out, *extra):
    (tmp_path / "t.txt").write_text(TEXT)
    return fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", out, *ARCH, "--seq-len", 24, "--batch-size", 2,
                "--steps", 4, "--threads", 1, "--eval-every", 0, "--quiet", "--lr", "3e-3", *extra)


@pytest.mark.parametrize("tie", [1, 0])
def test_pretrain_llama_matches_pytorch_and_resumes_exactly(tmp_path, tie):
    pretrain(tmp_path, tmp_path / "full", f"--tie-word-embeddings={tie}", "--rope-theta", 500)
    cfg = json.load(open(tmp_path / "full" / "config.json"))
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == \
        (32, 2, 4, 2)
    assert cfg["intermediate_size"] == 96  # 8/3 * 32 = 85.3, rounded up to a multiple of 32
    assert cfg["rope_theta"] == 500 and cfg["tie_word_embeddings"] == bool(tie) and cfg["vocab_size"] == 257
    ref = load_reference(tmp_path / "full")
    assert ("lm_head.weight" in ref.p) == (not tie)
    toks = [int(b) for b in b"the cat sat on the mat"]
    bp = tmp_path / "batch.json"
    bp.write_text(json.dumps({"sequences": [{"tokens": toks, "targets": toks[1:] + [EOT]}], "d_token_logp": [0.0] * len(toks)}))
    harness("model-fb", "--model", tmp_path / "full", "--batch", bp, "--out", tmp_path / "fb.safetensors")
    got = st.load(str(tmp_path / "fb.safetensors"))[0]["logits"]
    with torch.no_grad():
        want = ref.forward(toks).numpy()
    assert rel_err(got, want) <= 1e-5
    # interrupted after step 2, resumed without repeating the architecture flags: same bytes
    pretrain(tmp_path, tmp_path / "split", f"--tie-word-embeddings={tie}", "--rope-theta", 500, "--stop-at", 2)
    fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", tmp_path / "split", "--resume", "--quiet")
    a = (tmp_path / "full" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "split" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("extra,msg", [
    (["--arch", "gpt2"], "--arch: gpt2 differs from the saved run's llama"),
    (["--n-kv-head", 4], "--n-kv-head: 4 differs from the saved run's 2"),
    (["--rope-theta", 20000], "--rope-theta"),
])
def test_resume_refuses_another_architecture(tmp_path, extra, msg):
    pretrain(tmp_path, tmp_path / "ck", "--stop-at", 1)
    r = fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", tmp_path / "ck", "--resume", "--quiet", *extra,
             check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr


@pytest.mark.parametrize("extra,msg", [
    (["--arch", "mistral"], "--arch: 'mistral' is not a model family"),
    (["--arch", "llama", "--n-head", 4, "--n-kv-head", 3], "--n-kv-head: 3 must divide --n-head 4"),
    (["--arch", "llama", "--n-head", 4, "--n-embd", 12], "--n-embd: --arch llama needs an even head size"),
    (["--arch", "llama", "--rope-theta", 0], "--rope-theta: 0 must be a positive number"),
    (["--arch", "llama", "--intermediate-size", -1], "--intermediate-size: -1"),
])
def test_bad_architecture_flags_are_refused(tmp_path, extra, msg):
    (tmp_path / "t.txt").write_text(TEXT)
    r = fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", tmp_path / "ck", "--steps", 1, "--seq-len", 8,
             *extra, check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert not (tmp_path / "ck" / "model.safetensors").exists()


# ---- a Llama checkpoint written by the reference ----

CFG = dict(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=False)
ROWS = [
    {"prompt": "The cat", "chosen": " sat on the mat.", "rejected": " ran."},
    {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " five, I think"},
    {"chosen": "Hello there, friend!", "rejected": "Hello there, enemy."},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
]
MAX_LEN, MAX_PROMPT = 40, 16


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama_cli")
    for name, seed in (("policy", 21), ("ref", 22)):
        Llama(**CFG, seed=seed).save_hf(str(tmp / name))
        save_byte_tokenizer(str(tmp / name))
    write_jsonl(tmp / "pairs.jsonl", ROWS)
    return tmp


def test_dpo_step_on_llama_matches_pytorch(llama):
    policy, ref = load_reference(llama / "policy"), load_reference(llama / "ref")
    pairs = [tokenize_pair(r, MAX_LEN, MAX_PROMPT) for r in ROWS]
    cases = [("rkl", "sigmoid", 0.1, 0.0, 0.0, 0.0), ("alpha:0.5", "sigmoid", 0.5, 0.2, 0.0, 0.7), ("js", "ipo", 0.4, 0.0, 0.0, 0.0)]
    with torch.no_grad():
        ref_lp = [(completion_logps(Callable(ref), P, C)[0].sum().item(), completion_logps(Callable(ref), P, R)[0].sum().item())
                  for P, C, R in pairs]
    side = [(completion_logps(Callable(policy), P, C)[0], completion_logps(Callable(policy), P, R)[0]) for P, C, R in pairs]
    out = llama / "dpo_grad"
    args = ["dpo-grad", "--threads", 1, "--policy", llama / "policy", "--ref", llama / "ref", "--data",
            llama / "pairs.jsonl", "--out", out, "--max-length", MAX_LEN, "--max-prompt-length", MAX_PROMPT]
    for c in cases:
        args += ["--case", " ".join(map(str, c))]
    harness(*args)
    res = json.load(open(out / "result.json"))["cases"]
    names = list(policy.p)
    for i, (div, loss, beta, eps, gamma, sft) in enumerate(cases):
        mean = loss == "ipo"
        total, nll, n_chosen = 0.0, 0.0, 0
        for (tw, tl), (rw, rl) in zip(side, ref_lp):
            nw, nl = (len(tw), len(tl)) if mean else (1, 1)
            total = total + pair_loss(div, loss, beta, eps, gamma, (tw.sum() - rw) / nw, (tl.sum() - rl) / nl)
            nll = nll - tw.sum()
            n_chosen += len(tw)
        objective = total / len(pairs) + sft * nll / n_chosen
        grads = torch.autograd.grad(objective, [policy.p[k] for k in names], retain_graph=True)
        assert abs(res[i]["loss"] - objective.item()) <= 1e-5 * max(abs(objective.item()), 1e-3), (cases[i], res[i]["loss"])
        got = st.load(str(out / f"grads_{i}.safetensors"))[0]
        assert set(got) == set(names)
        for k, g in zip(names, grads):
            assert rel_err(got[k], g.numpy()) < 1e-4, (cases[i], k)


def test_score_reports_the_reference_logps(llama):
    policy = load_reference(llama / "policy")
    rows = [{"prompt": "The cat", "completion": " sat."}, {"prompt": "Hi", "completion": " there, friend"}]
    write_jsonl(llama / "comp.jsonl", rows)
    r = fdpo("score", "--model", llama / "policy", "--ref", llama / "ref", "--data", llama / "comp.jsonl", "--threads", 1)
    got = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert len(got) == len(rows)
    with torch.no_grad():
        for g, row in zip(got, rows):
            want = completion_logps(Callable(policy), list(row["prompt"].encode()), list(row["completion"].encode()))[0].sum().item()
            assert abs(g["logp"] - want) <= 1e-5 * max(1.0, abs(want)), (g, want)


def test_sft_dpo_generate_eval_run_on_llama(llama):
    sft_rows = [{"prompt": "Q: %d+%d=" % (i, i), "completion": " %d" % (2 * i)} for i in range(20)]
    write_jsonl(llama / "sft.jsonl", sft_rows)
    fdpo("sft", "--model", llama / "policy", "--data", llama / "sft.jsonl", "--out", llama / "sft", "--steps", 3,
         "--batch-size", 4, "--seq-len", 32, "--threads", 1, "--quiet", "--eval-every", 0)
    assert json.load(open(llama / "sft" / "config.json"))["architectures"] == ["LlamaForCausalLM"]
    assert len(open(llama / "sft" / "metrics.jsonl").readlines()) == 3
    fdpo("dpo", "--model", llama / "sft", "--ref", llama / "ref", "--data", llama / "pairs.jsonl", "--out", llama / "dpo",
         "--steps", 2, "--batch-size", 2, "--threads", 1, "--quiet", "--eval-every", 0)
    summary = json.load(open(llama / "dpo" / "data_summary.json"))
    assert summary["reference"]["mode"] == "cache"
    m = [json.loads(l) for l in open(llama / "dpo" / "metrics.jsonl")]
    assert len(m) == 2 and all(math.isfinite(x["loss"]) for x in m)
    write_jsonl(llama / "prompts.jsonl", [{"prompt": "The cat"}, {"prompt": "Q: 3+3="}])
    r = fdpo("generate", "--model", llama / "dpo", "--data", llama / "prompts.jsonl", "--n", 2, "--max-new-tokens", 6,
             "--threads", 1)
    gen = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert len(gen) == 4
    fdpo("eval", "--model", llama / "dpo", "--ref", llama / "ref", "--data", llama / "prompts.jsonl", "--n", 2,
         "--max-new-tokens", 6, "--threads", 1, "--out", llama / "eval.json", "--pairs", llama / "pairs.jsonl")
    ev = json.load(open(llama / "eval.json"))["policies"][0]
    assert ev["n_samples"] == 4 and math.isfinite(ev["kl_seq_mean"]) and ev["pref_n"] == len(ROWS), ev


def test_info_names_the_llama_family(llama):
    r = fdpo("info", "--json", llama / "policy")
    info = json.loads(r.stdout)
    want = {"model_type": "llama", "architecture": "LlamaForCausalLM", "activation_function": "silu",
            "n_kv_head": CFG["num_key_value_heads"], "intermediate_size": CFG["intermediate_size"],
            "rope_theta": CFG["rope_theta"], "tie_word_embeddings": CFG["tie_word_embeddings"],
            "vocab_size": CFG["vocab_size"], "n_embd": CFG["hidden_size"]}
    for k, v in want.items():
        assert info[k] == v, (k, info[k], v)
    tensors = st.load(str(llama / "policy" / "model.safetensors"))[0]
    assert info["parameters"] == sum(np.asarray(t).size for t in tensors.values())
    # the fields the parameter count depends on (they were left out: a head_dim other than
    # hidden/heads explained nothing), from the tensors' own shapes
    hd = tensors["model.layers.0.self_attn.k_proj.weight"].shape[0] // CFG["num_key_value_heads"]
    assert info["head_dim"] == hd and info["rope_scaling"] is None
    assert (info["qkv_bias"], info["o_bias"], info["mlp_bias"]) == (
        "model.layers.0.self_attn.q_proj.bias" in tensors, "model.layers.0.self_attn.o_proj.bias" in tensors,
        "model.layers.0.mlp.up_proj.bias" in tensors)
    text = fdpo("info", llama / "policy").stdout
    assert f"head_dim: {hd}\n" in text and "rope_scaling: none\n" in text and "biases: q/k/v no, o no, mlp no\n" in text


def test_sft_from_a_llama_model_resumes_without_recording_an_architecture(llama):
    write_jsonl(llama / "sft2.jsonl", [{"prompt": "Q%d" % i, "completion": " a%d" % i} for i in range(16)])
    common = ["--data", llama / "sft2.jsonl", "--out", llama / "sft2", "--quiet", "--threads", 1]
    fdpo("sft", "--model", llama / "policy", *common, "--steps", 4, "--stop-at", 2, "--batch-size", 2, "--seq-len", 16,
         "--eval-every", 0)
    fdpo("sft", *common, "--resume")
    state = json.load(open(llama / "sft2" / "training_state.json"))
    assert "arch" not in json.dumps(state)
    assert len(open(llama / "sft2" / "metrics.jsonl").readlines()) == 4


def test_greedy_generate_and_eval_logps_match_pytorch(llama):
    """greedy decoding is the reference's argmax chain; eval's per-sample logp under the
    policy and the reference are the reference models' sums over the sampled tokens"""
    policy, ref = load_reference(llama / "policy"), load_reference(llama / "ref")
    prompts = ["The cat", "Hi"]
    write_jsonl(llama / "p2.jsonl", [{"prompt": p} for p in prompts])
    r = fdpo("generate", "--model", llama / "policy", "--data", llama / "p2.jsonl", "--temperature", 0,
             "--max-new-tokens", 6, "--threads", 1)
    gen = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert len(gen) == 2
    with torch.no_grad():
        for g, p in zip(gen, prompts):
            toks = list(p.encode())
            for _ in range(6):
                nxt = int(torch.argmax(policy.forward(toks)[-1]))
                toks.append(nxt)
                if nxt == EOT:
                    break
            assert g["tokens"] == toks[len(p.encode()):], (g["tokens"], toks)
    fdpo("eval", "--model", llama / "policy", "--ref", llama / "ref", "--data", llama / "p2.jsonl", "--n", 2,
         "--max-new-tokens", 5, "--threads", 1, "--out", llama / "ev2.json", "--samples-out", llama / "s2.jsonl")
    # the implicit reward on --pairs (docs/eval.md, calibration): B * (l_w - l_l) for rkl
    fdpo("eval", "--model", llama / "policy", "--ref", llama / "ref", "--data", llama / "p2.jsonl", "--n", 1,
         "--max-new-tokens", 2, "--threads", 1, "--out", llama / "ev3.json", "--pairs", llama / "pairs.jsonl",
         "--beta", 0.3)
    ev = json.load(open(llama / "ev3.json"))["policies"][0]
    with torch.no_grad():
        margins = []
        for row in ROWS:
            P, C, R = tokenize_pair(row)
            lw = completion_logps(Callable(policy), P, C)[0].sum() - completion_logps(Callable(ref), P, C)[0].sum()
            ll = completion_logps(Callable(policy), P, R)[0].sum() - completion_logps(Callable(ref), P, R)[0].sum()
            margins.append(0.3 * (lw - ll).item())
    assert abs(ev["pref_margin_mean"] - np.mean(margins)) <= 1e-5 * max(1.0, abs(np.mean(margins))), (ev, margins)
    assert ev["pref_accuracy"] == np.mean(np.array(margins) > 0)
    samples = [json.loads(l) for l in open(llama / "s2.jsonl")]
    assert len(samples) == 4
    with torch.no_grad():
        for s in samples:
            P = list(prompts[s["prompt_index"]].encode())
            for model, key in ((policy, "logp"), (ref, "logp_ref")):
                want = completion_logps(Callable(model), P, s["tokens"])[0].sum().item()
                assert abs(s[key] - want) <= 1e-5 * max(1.0, abs(want)), (key, s[key], want)


def test_written_checkpoints_keep_the_special_token_ids(llama, tmp_path):
    """bos/eos/pad_token_id of config.json were dropped from every checkpoint fdpo wrote
    (sft, merge, merge --lora): transformers' generate() then ends on LlamaConfig's default
    eos 2, another token. They are kept as read, an eos list (Llama 3) included; a model
    fdpo creates gets its tokenizer's end token (GPT-2 and Llama: transformers' defaults
    50256 / 2 are not the byte tokenizer's 256)."""
    ids = {"bos_token_id": 257, "eos_token_id": [256, 258], "pad_token_id": 0}
    src = tmp_path / "src"
    Llama(**CFG, seed=23).save_hf(str(src))
    save_byte_tokenizer(str(src))
    c = json.load(open(src / "config.json"))
    json.dump({**c, **ids}, open(src / "config.json", "w"))
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q: %d=" % i, "completion": " %d" % i} for i in range(8)])
    common = ["--data", tmp_path / "sft.jsonl", "--steps", 1, "--batch-size", 2, "--seq-len", 16, "--threads", 1,
              "--quiet", "--eval-every", 0]
    fdpo("sft", "--model", src, "--out", tmp_path / "sft", *common)
    fdpo("sft", "--model", src, "--out", tmp_path / "lora", "--lora-r", 2, *common)
    fdpo("merge", "--model", src, "--model", tmp_path / "sft", "--out", tmp_path / "avg")
    fdpo("merge", "--lora", tmp_path / "lora", "--out", tmp_path / "folded")
    for d in ("sft", "avg", "folded"):
        got = json.load(open(tmp_path / d / "config.json"))
        assert {k: got.get(k) for k in ids} == ids, (d, got)
    for arch in ([], ARCH):
        out = tmp_path / ("new_llama" if arch else "new_gpt2")
        (tmp_path / "t.txt").write_text(TEXT)
        fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", out, *(arch or ["--n-layer", 1, "--n-head", 2,
             "--n-embd", 16, "--n-positions", 32]), "--seq-len", 16, "--batch-size", 2, "--steps", 1, "--threads", 1,
             "--eval-every", 0, "--quiet")
        got = json.load(open(out / "config.json"))
        assert (got["bos_token_id"], got["eos_token_id"], "pad_token_id" in got) == (EOT, EOT, False), got


@pytest.mark.parametrize("ids", [{"bos_token_id": None, "eos_token_id": None, "pad_token_id": None},
                                 {"bos_token_id": 1, "eos_token_id": [], "pad_token_id": -1},
                                 {"bos_token_id": 128000, "eos_token_id": list(range(128000, 128256)), "pad_token_id": 128004}],
                         ids=["null", "empty-negative", "llama3-size-list"])
def test_written_checkpoints_keep_special_token_ids_as_read(tmp_path, ids):
    """An explicit "bos_token_id": null / "eos_token_id": null (what save_pretrained writes for
    LlamaConfig(bos_token_id=None, eos_token_id=None): None differs from the class defaults),
    "eos_token_id": [] (a model with no end token) and "pad_token_id": -1 (the early LLaMA
    conversions' config) were dropped from the saved config.json, and transformers fills an
    absent key with the class's default (LlamaConfig bos 1 / eos 2, GPT2Config 50256; pad None,
    so nn.Embedding's padding_idx -1 is lost): the saved model stopped at token 2 where the one
    read had no end token. They are written back as read, and so is a list of Llama 3's 256
    special ids (1.8 KB of JSON; all three keys were dropped once the ids took 192 characters)."""
    from fdpo_ref.gpt2 import GPT2
    for name, make in (("llama", lambda d: Llama(**CFG, seed=23).save_hf(d)),
                       ("gpt2", lambda d: GPT2(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2).save_hf(d))):
        src = tmp_path / name
        make(str(src))
        save_byte_tokenizer(str(src))
        c = json.load(open(src / "config.json"))
        json.dump({**c, **ids}, open(src / "config.json", "w"))
        fdpo("merge", "--model", src, "--model", src, "--out", tmp_path / (name + "_avg"))
        harness("model-load", "--model", src, "--save", tmp_path / (name + "_saved"))
        for out in (name + "_avg", name + "_saved"):
            got = json.load(open(tmp_path / out / "config.json"))
            assert {k: got.get(k, "absent") for k in ids} == ids, (out, got)


def test_special_token_ids_too_long_to_keep_are_refused(tmp_path):
    """Ids whose JSON is longer than fdpo keeps (4095 characters) were dropped from the saved
    config.json silently (the saved model then ends on LlamaConfig's eos 2); the config is
    refused, naming the file and the keys, and nothing is written."""
    src = tmp_path / "src"
    Llama(**CFG, seed=23).save_hf(str(src))
    save_byte_tokenizer(str(src))
    c = json.load(open(src / "config.json"))
    json.dump({**c, "eos_token_id": list(range(100000, 100700))}, open(src / "config.json", "w"))
    r = fdpo("merge", "--model", src, "--model", src, "--out", tmp_path / "avg", check=False)
    assert r.returncode != 0 and "config.json" in r.stderr and "eos_token_id" in r.stderr, r.stderr
    assert not (tmp_path / "avg").exists()


def test_written_checkpoints_keep_generation_config(llama, tmp_path):
    """generation_config.json (transformers' generate() defaults: an instruct model's
    end-of-turn ids among eos_token_id, its sampling settings) was left out of every
    checkpoint fdpo wrote from a model that had one: a fine-tuned Llama-3-Instruct then
    generated past its end of turn. Every save now writes the file as read (sft, its resume,
    merge, merge --lora's base); a reward model (which does not generate) and a model fdpo
    creates get none, and an --overwrite does not carry the replaced model's. One that is
    not a JSON object is said and left out, as transformers falls back without it."""
    gen = ('{\n  "bos_token_id": 257,\n  "do_sample": true,\n  "eos_token_id": [256, 258],\n  "temperature": 0.6,\n'
           '  "top_p": 0.9,\n  "transformers_version": "4.40.0"\n}\n')
    src = tmp_path / "src"
    shutil.copytree(llama / "policy", src)
    (src / "generation_config.json").write_text(gen)
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q: %d=" % i, "completion": " %d" % i} for i in range(8)])
    common = ["--data", tmp_path / "sft.jsonl", "--batch-size", 2, "--seq-len", 16, "--threads", 1, "--quiet",
              "--eval-every", 0]
    fdpo("sft", "--model", src, "--out", tmp_path / "sft", "--steps", 2, "--stop-at", 1, *common)
    assert (tmp_path / "sft" / "generation_config.json").read_text() == gen
    fdpo("sft", "--out", tmp_path / "sft", "--resume", "--quiet", "--data", tmp_path / "sft.jsonl")
    assert json.load(open(tmp_path / "sft" / "training_state.json"))["step"] == 2
    fdpo("sft", "--model", src, "--out", tmp_path / "lora", "--lora-r", 2, "--steps", 2, "--stop-at", 1, *common)
    # a LoRA save writes the adapter's files only: one the user put there stays
    (tmp_path / "lora" / "generation_config.json").write_text('{"eos_token_id": 256}')
    fdpo("sft", "--out", tmp_path / "lora", "--resume", "--quiet", "--data", tmp_path / "sft.jsonl")
    assert (tmp_path / "lora" / "generation_config.json").read_text() == '{"eos_token_id": 256}'
    (tmp_path / "lora" / "generation_config.json").unlink()
    fdpo("merge", "--model", tmp_path / "sft", "--model", src, "--out", tmp_path / "avg")
    fdpo("merge", "--lora", tmp_path / "lora", "--out", tmp_path / "folded")
    for d in ("sft", "avg", "folded"):
        assert (tmp_path / d / "generation_config.json").read_text() == gen, d
    fdpo("rm", "--model", src, "--data", llama / "pairs.jsonl", "--out", tmp_path / "rm", "--steps", 1,
         "--batch-size", 2, "--threads", 1, "--eval-fraction", 0, "--quiet")
    assert not (tmp_path / "rm" / "generation_config.json").exists()
    (tmp_path / "t.txt").write_text(TEXT)
    fdpo("pretrain", "--data", tmp_path / "t.txt", "--out", tmp_path / "sft", "--overwrite", *ARCH, "--seq-len", 16,
         "--batch-size", 2, "--steps", 1, "--threads", 1, "--eval-every", 0, "--quiet")
    assert not (tmp_path / "sft" / "generation_config.json").exists()
    for k, (bad, why) in enumerate([('["not", "an", "object"]', "1: expected a JSON object, got an array"),
                                    ('{"eos_token_id": 256} trailing', "1: unexpected text after the JSON object at column 23")]):
        (src / "generation_config.json").write_text(bad)
        r = fdpo("sft", "--model", src, "--out", tmp_path / f"bad{k}", "--steps", 1, *common)
        assert f"{src}/generation_config.json:{why}; left out of the checkpoints written from this model" \
            in r.stderr, r.stderr
        assert not (tmp_path / f"bad{k}" / "generation_config.json").exists()


@pytest.mark.parametrize("bad", ['{"do_sample": true,\n  "note": "a\\uZZZZ b",\n  "eos_token_id": 256}',
                                 '{"do_sample": true, "note": "tab\there"}'])
def test_generation_config_that_python_json_refuses_is_left_out(tmp_path, bad):
    """generation_config.json was checked with a bare cJSON parse, which reads \\uZZZZ as U+0000
    and keeps a raw control character: the file passed as "a JSON object" and was copied into
    every checkpoint, which transformers (Python's json) then could not load. It is now read as
    config.json is, and left out with a warning naming FILE:LINE and the column Python's json
    names."""
    from test_generate import make_model
    make_model(tmp_path / "gm", 257, seed=3, n_positions=64, byte_tokenizer=True)
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q%d" % i, "completion": " answer"} for i in range(4)])
    (tmp_path / "gm" / "generation_config.json").write_text(bad)
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(bad)
    r = fdpo("sft", "--model", tmp_path / "gm", "--data", tmp_path / "sft.jsonl", "--out", tmp_path / "g1", "--steps", 1,
             "--batch-size", 2, "--seq-len", 32, "--eval-fraction", 0, "--threads", 1, "--quiet")
    assert f"{tmp_path / 'gm'}/generation_config.json:{e.value.lineno}: invalid JSON: " in r.stderr, r.stderr
    assert f" at column {e.value.colno}" in r.stderr and "; left out of the checkpoints written from this model" \
        in r.stderr, r.stderr
    assert (tmp_path / "g1" / "model.safetensors").exists() and not (tmp_path / "g1" / "generation_config.json").exists()


def test_generation_config_with_a_key_twice_is_carried(tmp_path):
    """A key twice is JSON Python's json reads (the last copy counts), so transformers loads
    the file; fdpo carries it without reading its values. The first version of the check above
    read it with config.json's checks and left it out of every checkpoint."""
    from test_generate import make_model
    make_model(tmp_path / "gm", 257, seed=3, n_positions=64, byte_tokenizer=True)
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q%d" % i, "completion": " answer"} for i in range(4)])
    text = '{"eos_token_id": 1,\n "eos_token_id": 256, "do_sample": true}\n'
    assert json.loads(text)["eos_token_id"] == 256
    (tmp_path / "gm" / "generation_config.json").write_text(text)
    r = fdpo("sft", "--model", tmp_path / "gm", "--data", tmp_path / "sft.jsonl", "--out", tmp_path / "g1", "--steps", 1,
             "--batch-size", 2, "--seq-len", 32, "--eval-fraction", 0, "--threads", 1, "--quiet")
    assert "generation_config" not in r.stderr, r.stderr
    assert (tmp_path / "g1" / "generation_config.json").read_text() == text


# generation_config.json texts around Python's json's extensions to RFC 8259 (NaN, Infinity,
# -Infinity, a lone surrogate escape) and what transformers refuses before json.loads (a file
# that is not UTF-8; a byte order mark, which json.loads refuses)
PY_JSON_CASES = [b'{"eos_token_id": 256, "temperature": Infinity}',
                 b'{"eos_token_id": 256, "x": NaN,\n "y": [-Infinity, 1e400]}',
                 b'{"eos_token_id": 256, "note": "\\ud800 \\udfff \\ud83d\\ude00 \\ud800\\ud800 \\u0000"}',
                 b'{"eos_token_id": 256, "x": 1NaN}', b'{"eos_token_id": 256, "x": -NaN}', b'{"eos_token_id": nan}',
                 b'{NaN: 256}', b'{"eos_token_id": 256, "x": "\\ud800\\u12"}',
                 b'\xef\xbb\xbf{"eos_token_id": 256}', b'{"eos_token_id": 256, "x": "\xed\xa0\x80"}',
                 b'{"eos_token_id": 256, "x": "a\x00"}']


def test_generation_config_is_carried_exactly_where_python_json_reads_it(tmp_path):
    """transformers reads generation_config.json as UTF-8 text with Python's json.loads, which
    takes NaN, Infinity and -Infinity (json.dumps writes them for a float nan or inf) and lone
    surrogate escapes: fdpo's strict reader left such a file out of every checkpoint, and
    carried a file with a byte order mark, a raw NUL or bytes that are not UTF-8, which
    transformers refuses. Each text here is carried byte for byte exactly where Python reads
    it, else left out with a warning naming FILE:LINE."""
    from test_generate import make_model
    make_model(tmp_path / "gm", 257, seed=3, n_positions=64, byte_tokenizer=True)
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q%d" % i, "completion": " answer"} for i in range(4)])
    gen = tmp_path / "gm" / "generation_config.json"
    for k, text in enumerate(PY_JSON_CASES):
        gen.write_bytes(text)
        try:
            with open(gen, encoding="utf-8") as f:   # as transformers' GenerationConfig._dict_from_json_file
                reads = isinstance(json.loads(f.read()), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            reads = False
        out = tmp_path / f"g{k}"
        r = fdpo("sft", "--model", tmp_path / "gm", "--data", tmp_path / "sft.jsonl", "--out", out, "--steps", 1,
                 "--batch-size", 2, "--seq-len", 32, "--eval-fraction", 0, "--threads", 1, "--quiet")
        assert (out / "model.safetensors").exists(), r.stderr
        if reads:
            assert "generation_config" not in r.stderr, (text, r.stderr)
            assert (out / "generation_config.json").read_bytes() == text
        else:
            assert f"{gen}:1: " in r.stderr and "; left out of the checkpoints written from this model" in r.stderr, \
                (text, r.stderr)
            assert not (out / "generation_config.json").exists(), text
