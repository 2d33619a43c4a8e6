"""Llama-family models (LlamaForCausalLM, Qwen2) in fdpo against the float64 PyTorch
reference of tests/py/fdpo_ref/llama.py, one sequence at a time, on packed batches with
positions and branch masks: logits max|diff|/max|ref| <= 1e-5, every parameter gradient
<= 1e-4. Checkpoints written by Python (single file and sharded) load in fdpo, and fdpo's
re-saved checkpoint reads back in Python with the same config and tensors. Bad configs
and files are refused with a message naming the key, tensor or file."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st
from fdpo_ref.llama import Llama
from test_model_parity import harness, rel_err  # the same harness runner and error measure as GPT-2's

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))

CONFIGS = {
    # multi-head, tied embeddings
    "mha-tied": dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, tie_word_embeddings=True),
    # grouped-query attention, untied head, llama3 rope scaling, large theta
    "gqa-llama3": dict(vocab_size=53, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                       num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                       rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=16)),
    # Qwen2: q/k/v biases, GQA, tied
    "qwen2": dict(vocab_size=47, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, qkv_bias=True, tie_word_embeddings=True, model_type="qwen2", rope_theta=1e6),
    # every bias (attention_bias + mlp_bias), untied
    "all-bias": dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True),
    # a large RMSNorm eps, so eps's place in 1/sqrt(mean(x^2) + eps) shows: at 1e-5 on
    # unit-scale activations, eps outside the sqrt moved the logits by 9e-6, under the
    # tolerance (here: 8e-2; mutation review)
    "big-eps": dict(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, rms_norm_eps=0.1),
}


def batch(rng, V):
    """three sequences: plain, with shifted positions, and the shared-prompt branch layout"""
    seqs = []
    for b, T in enumerate([7, 5, 9]):
        toks = list(map(int, rng.integers(0, V, size=T)))
        targets = list(map(int, rng.integers(0, V, size=T)))
        targets[0] = -1
        seq = {"tokens": toks, "targets": targets}
        if b == 1:
            seq["pos"] = [3 + t for t in range(T)]
        if b == 2:  # prompt [0..3) branch 0, chosen [3..6) branch 1, rejected [6..9) branch 2 restarting at pos 3
            seq["branch"] = [0, 0, 0, 1, 1, 1, 2, 2, 2]
            seq["pos"] = [0, 1, 2, 3, 4, 5, 3, 4, 5]
        seqs.append(seq)
    for s in seqs:  # the harness needs every array on every sequence once any has it
        s.setdefault("pos", list(range(len(s["tokens"]))))
        s.setdefault("branch", [0] * len(s["tokens"]))
    return seqs


def weight_prompts(seqs):
    """weight 0 on the first half of each sequence (a prompt, as in DPO/SFT), 1 on the rest;
    returns the batch's weights and targets, concatenated"""
    for s in seqs:
        s["weights"] = [0.0 if t < len(s["tokens"]) // 2 else 1.0 for t in range(len(s["tokens"]))]
    return np.concatenate([s["weights"] for s in seqs]), np.concatenate([s["targets"] for s in seqs])


def prompt_masked(tmp_path, name, rng, seed):
    """a saved model and a batch whose first half of each sequence is a prompt (weight 0):
    (model, its directory, sequences, rows with a target and a weight)"""
    model = Llama(**CONFIGS[name], seed=seed)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    seqs = batch(rng, CONFIGS[name]["vocab_size"])
    weights, targets = weight_prompts(seqs)
    used = (weights != 0) & (targets >= 0)
    assert 0 < used.sum() < len(used)
    return model, d, seqs, used


def run_fdpo(tmp_path, model_dir, seqs, d):
    bp, out = tmp_path / "batch.json", tmp_path / "out.safetensors"
    bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in d]}))
    harness("model-fb", "--model", model_dir, "--batch", bp, "--out", out)
    return st.load(str(out))[0]


def reference(model, seqs, d, autocast=False):
    """logits [N,V], token_logp [N], {HF name: gradient} of sum_t d_t * token_logp_t"""
    all_logits, all_tlp, off, total = [], [], 0, 0
    for s in seqs:
        T = len(s["tokens"])
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model.forward(s["tokens"], s["pos"], s["branch"])
            logits = logits.float()
        else:
            logits = model.forward(s["tokens"], s["pos"], s["branch"])
        logp = torch.log_softmax(logits, -1)
        tgt = torch.tensor(s["targets"])
        valid = tgt >= 0
        tlp = torch.where(valid, logp.gather(1, tgt.clamp(min=0)[:, None])[:, 0], torch.zeros((), dtype=logp.dtype))
        total = total + (tlp * torch.tensor(d[off:off + T], dtype=tlp.dtype)).sum()
        all_logits.append(logits.detach().double().numpy())
        all_tlp.append(tlp.detach().double().numpy())
        off += T
    total.backward()
    return (np.concatenate(all_logits), np.concatenate(all_tlp),
            {k: v.grad.double().numpy() for k, v in model.p.items()})


def assert_matches_reference(tmp_path, model_dir, model, seqs, rng):
    """fdpo's forward/backward of sum_t d_t token_logp_t (d ~ N(0, 1) from rng) on seqs against
    the float64 reference: logits 1e-5, every gradient 1e-4. Returns fdpo's outputs and the
    reference gradients."""
    dtl = rng.normal(size=sum(len(s["tokens"]) for s in seqs))
    out = run_fdpo(tmp_path, model_dir, seqs, dtl)
    ref_logits, _, ref_grads = reference(model, seqs, dtl)
    assert rel_err(out["logits"], ref_logits) <= 1e-5
    for k, g in ref_grads.items():
        assert rel_err(out[k], g) <= 1e-4, k
    return out, ref_grads


@pytest.mark.parametrize("name,shards", [(n, 1) for n in CONFIGS] + [("gqa-llama3", 2), ("qwen2", 3)])
def test_forward_backward_match_pytorch(tmp_path, name, shards):
    rng = np.random.default_rng(7)
    model = Llama(**CONFIGS[name], seed=3)
    d = tmp_path / "ck"
    model.save_hf(str(d), shards=shards)
    seqs = batch(rng, CONFIGS[name]["vocab_size"])
    out, ref_grads = assert_matches_reference(tmp_path, d, model, seqs, rng)
    assert set(k for k in out if k not in ("logits", "token_logp", "seq_logp")) == set(ref_grads)


def test_resave_reads_back_in_python(tmp_path):
    model = Llama(**CONFIGS["gqa-llama3"], seed=5)
    model.save_hf(str(tmp_path / "a"))
    harness("model-load", "--model", tmp_path / "a", "--save", tmp_path / "b")
    cfg_a = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    # with the types Python's json gives (rope_scaling's 8.0 came back as 8, an int, and
    # transformers' llama3 check, isinstance(factor, float), warned on every load)
    for k, v in cfg_a.items():
        if k == "rope_scaling":
            for kk, vv in v.items():
                assert cfg_b[k][kk] == vv and type(cfg_b[k][kk]) is type(vv), (kk, cfg_b[k][kk], vv)
        else:
            assert cfg_b[k] == v and type(cfg_b[k]) is type(v), (k, cfg_b[k], v)
    assert cfg_b["architectures"] == ["LlamaForCausalLM"]
    ta, tb = st.load(str(tmp_path / "a" / "model.safetensors"))[0], st.load(str(tmp_path / "b" / "model.safetensors"))[0]
    assert set(ta) == set(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k


def test_init_and_info(tmp_path):
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    c = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    (cfgdir / "config.json").write_text(json.dumps(c))
    harness("model-init", "--config", cfgdir / "config.json", "--seed", 1, "--out", tmp_path / "m")
    t = st.load(str(tmp_path / "m" / "model.safetensors"))[0]
    hd = 16
    assert t["model.layers.0.self_attn.k_proj.weight"].shape == (2 * hd, 64)
    assert "lm_head.weight" not in t
    n = sum(v.size for v in t.values())
    assert n == 100 * 64 + 64 + 3 * (2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96)
    w = t["model.layers.1.mlp.up_proj.weight"]
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002  # N(0, 0.02) as transformers initialises
    assert np.all(t["model.norm.weight"] == 1)


BAD = {
    "unknown_type": (lambda d: edit_config(d, model_type="mistral"), ["model_type 'mistral'", "not supported"]),
    # transformers' rotary init rotates head_dim * partial_rotary_factor dimensions; fdpo read it as 1
    "partial_rotary": (lambda d: edit_config(d, partial_rotary_factor=0.5),
                       ["config.json: partial_rotary_factor 0.5 is not supported (fdpo rotates every dimension"]),
    "partial_rotary_v5": (lambda d: edit_config(d, rope_scaling=None, rope_parameters={"rope_type": "default",
                                                                                        "partial_rotary_factor": 0.25}),
                          ["config.json: rope_parameters.partial_rotary_factor 0.25 is not supported"]),
    "rope_dynamic": (lambda d: edit_config(d, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                     ["rope_scaling type 'dynamic'"]),
    "rope_parameters_yarn": (lambda d: edit_config(d, rope_scaling=None, rope_parameters={"rope_type": "yarn", "factor": 2.0}),
                             ["rope_parameters type 'yarn' is not supported"]),
    "rope_parameters_dynamic_typed": (lambda d: edit_config(d, rope_scaling=None, rope_parameters={"type": "dynamic", "factor": 2.0}),
                                      ["rope_parameters type 'dynamic'"]),
    "rope_theta_twice": (lambda d: edit_config(d, rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
                         ["rope_theta 500000 and rope_parameters.rope_theta 10000 differ"]),
    # transformers requires it for llama3; a default of 8192 rescaled other frequencies silently
    "llama3_no_original": (lambda d: edit_config(d, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                  "high_freq_factor": 4.0}),
                           ["missing 'original_max_position_embeddings'"]),
    # transformers' _validate_llama3_parameters requires the two frequency factors too (KeyError):
    # defaults 1 and 4 were taken and written into saved configs
    "llama3_no_low": (lambda d: edit_config(d, rope_scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                                             "original_max_position_embeddings": 16}),
                      ["rope_scaling: missing 'low_freq_factor'"]),
    "llama3_no_high": (lambda d: edit_config(d, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                              "original_max_position_embeddings": 16}),
                       ["rope_scaling: missing 'high_freq_factor'"]),
    # the smoothing divides by high - low
    "llama3_equal_factors": (lambda d: edit_config(d, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                                                                    "high_freq_factor": 2.0, "original_max_position_embeddings": 16}),
                             ["high_freq_factor 2 must be greater than low_freq_factor 2"]),
    "llama3_fractional_context": (lambda d: edit_config(d, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16.5}),
                                  ["original_max_position_embeddings 16.5 must be a whole number"]),
    # read as Python's json (transformers) reads them, or refused: a key twice (json keeps the
    # last value, cJSON gave the first: rope_theta 10000 where transformers built 500000) and text
    # after the object (json: "Extra data") were read silently
    "config_key_twice": (lambda d: append_to(d, "config.json", lambda t: t[:-1] + ', "rope_theta": 10000.0}'),
                         ['config.json:1: key "rope_theta" appears twice in one object']),
    "config_text_after": (lambda d: append_to(d, "config.json", lambda t: t + '\n{"rope_theta": 10000.0}\n'),
                          ["config.json:2: unexpected text after the JSON object at column 1"]),
    "index_key_twice": (lambda d: append_to(d, "model.safetensors.index.json",
                                            lambda t: t.rstrip()[:-1] + ', "metadata": {}}'),
                        ['model.safetensors.index.json:1: key "metadata" appears twice in one object']),
    "gqa_not_dividing": (lambda d: edit_config(d, num_key_value_heads=4), ["num_key_value_heads 4"]),
    "act": (lambda d: edit_config(d, hidden_act="gelu"), ["hidden_act 'gelu'"]),
    "shape": (lambda d: edit_config(d, intermediate_size=50), ["mlp.gate_proj.weight", "[64,48]", "[50,48]"]),
    "missing_shard": (lambda d: os.remove(os.path.join(d, "model-00002-of-00002.safetensors")),
                      ["model-00002-of-00002.safetensors", "missing"]),
    "missing_tensor_in_shards": (lambda d: drop_from_index(d, "model.norm.weight"), ["missing tensor 'model.norm.weight'"]),
    # it said "unexpected tensor 'model.norm.weight' (not part of a llama model ...)"
    "tensor_in_two_shards": (lambda d: copy_to_other_shard(d, "model.norm.weight"),
                             ["tensor 'model.norm.weight' is also in", "(a tensor belongs in one shard)"]),
}


# published parameter counts of the real models (transformers' num_parameters(); the model
# cards' 6.74B and 7.62B): config.json of such a model beside a tiny model's weights
BIG_CONFIGS = {
    "llama-2-7b": (dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                        max_position_embeddings=4096, tie_word_embeddings=False), 6738415616),
    "qwen2-7b": (dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      max_position_embeddings=32768, tie_word_embeddings=False, rope_theta=1e6), 7615616512),
}


@pytest.mark.parametrize("name", list(BIG_CONFIGS))
def test_config_much_larger_than_the_weights_is_refused_before_allocating(tmp_path, name):
    """it allocated the config's whole parameter block first ("cannot allocate 25705 MiB"),
    never naming the mismatch that GPT-2's config check names"""
    Llama(**CONFIGS["gqa-llama3"], seed=1).save_hf(str(tmp_path))
    in_file = sum(np.asarray(v).size for v in st.load(str(tmp_path / "model.safetensors"))[0].values())
    cfg, n_params = BIG_CONFIGS[name]
    edit_config(str(tmp_path), rope_scaling=None, rope_theta=cfg.pop("rope_theta", 500000.0), **cfg)
    # under a 2 GB address-space limit, so the old allocation fails fast; ASan's shadow memory
    # cannot live in one (the sanitizer build runs it without: the refusal comes first anyway)
    limit = [] if os.environ.get("FDPO_SANITIZED") == "1" else ["prlimit", "--as=2000000000"]
    r = subprocess.run([*limit, FDPO, "info", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert (f"config.json: config.json implies {n_params} parameters but {tmp_path}/model.safetensors holds only "
            f"{in_file} values") in r.stderr, r.stderr


def test_absent_num_key_value_heads_takes_the_classs_default(tmp_path):
    """transformers builds an absent num_key_value_heads as the class's default: LlamaConfig's
    None (num_attention_heads), Qwen2Config's 32. fdpo took num_attention_heads for both, so
    a Qwen2 checkpoint that transformers loads (here 64 heads, 32 kv heads) was refused."""
    cfg = dict(vocab_size=40, hidden_size=128, intermediate_size=16, num_hidden_layers=1, num_attention_heads=64,
               qkv_bias=True, model_type="qwen2")
    for kv, model_type in ((32, "qwen2"), (64, "llama")):
        d = tmp_path / model_type
        Llama(**{**cfg, "model_type": model_type, "qkv_bias": model_type == "qwen2"}, num_key_value_heads=kv,
              seed=3).save_hf(str(d))
        c = json.load(open(d / "config.json"))
        del c["num_key_value_heads"]
        json.dump(c, open(d / "config.json", "w"))
        r = subprocess.run([FDPO, "info", "--json", str(d)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["n_kv_head"] == kv
    # a default that does not divide the heads is named as the default
    edit_config(str(tmp_path / "qwen2"), num_attention_heads=4)
    r = subprocess.run([FDPO, "info", str(tmp_path / "qwen2")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and ("config.json: num_key_value_heads is absent, and Qwen2Config's default for it, 32, "
                                  "does not divide num_attention_heads 4") in r.stderr, r.stderr


def test_qwen2_mlp_bias_key_is_not_read(tmp_path):
    """Qwen2Config has no mlp_bias: transformers' Qwen2MLP builds gate/up/down without biases
    whatever config.json says. fdpo read the key: "mlp_bias": true on a bias-free Qwen2
    checkpoint (which transformers loads) was refused as missing mlp.gate_proj.bias, and one
    that also held the biases ran them (transformers leaves them unused, with a warning; fdpo
    refuses them by name, as it refuses a Qwen2 o_proj.bias). A re-save writes no mlp_bias."""
    rng = np.random.default_rng(7)
    model = Llama(**CONFIGS["qwen2"], seed=3)   # the float64 reference: Qwen2's MLP, no biases
    d = tmp_path / "ck"
    model.save_hf(str(d))
    edit_config(str(d), mlp_bias=True)
    assert_matches_reference(tmp_path, d, model, batch(rng, CONFIGS["qwen2"]["vocab_size"]), rng)
    harness("model-load", "--model", d, "--save", tmp_path / "resaved")
    assert "mlp_bias" not in json.load(open(tmp_path / "resaved" / "config.json"))
    tensors, meta = st.load(str(d / "model.safetensors"))
    tensors["model.layers.0.mlp.gate_proj.bias"] = np.ones(CONFIGS["qwen2"]["intermediate_size"], np.float32)
    st.save(str(d / "model.safetensors"), tensors, meta)
    r = subprocess.run([FDPO, "info", str(d)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unexpected tensor 'model.layers.0.mlp.gate_proj.bias' (Qwen2's MLP has no biases" \
        in r.stderr, r.stderr


def copy_to_other_shard(d, name):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]
    src = idx[name]
    other = next(f for f in sorted(set(idx.values())) if f != src)
    value = st.load(os.path.join(d, src))[0][name]
    tensors, meta = st.load(os.path.join(d, other))
    tensors[name] = value
    st.save(os.path.join(d, other), tensors, meta)


def to_rope_parameters(d):
    """the config as transformers v5 writes it: rope_theta and rope_scaling in rope_parameters"""
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    rp = dict(c.pop("rope_scaling", None) or {"rope_type": "default"})
    rp["rope_theta"] = c.pop("rope_theta")
    c["rope_parameters"] = rp
    json.dump(c, open(p, "w"))


@pytest.mark.parametrize("name", ["gqa-llama3", "qwen2"])
def test_rope_parameters_of_transformers_v5_match_pytorch(tmp_path, name):
    """rope_parameters (rope_type, rope_theta and llama3's keys in one object) was ignored: theta
    fell back to 10000 without a word and the log-probs were off by 3e-2. Read as rope_theta +
    rope_scaling are, against the same float64 reference."""
    rng = np.random.default_rng(7)
    model = Llama(**CONFIGS[name], seed=3)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    to_rope_parameters(str(d))
    assert "rope_theta" not in json.load(open(d / "config.json"))
    assert_matches_reference(tmp_path, d, model, batch(rng, CONFIGS[name]["vocab_size"]), rng)


@pytest.mark.parametrize("name,edit", [
    # transformers reads rope_scaling {"rope_type": "default"} as no scaling; it was refused
    ("mha-tied", dict(rope_scaling={"rope_type": "default"})),
    # rope_parameters without rope_type, and rope_theta null beside it (Levanter's export)
    ("qwen2", dict(rope_theta=None, rope_parameters={"rope_theta": 1e6})),
    # rope_scaling and rope_parameters both given: rope_scaling replaces rope_parameters whole, as
    # in transformers v5 (a theta only rope_parameters holds is not read)
    ("gqa-llama3", dict(rope_parameters={"rope_type": "default", "rope_theta": 7.0})),
    # rope_scaling's own rope_theta (v5) with no top-level one
    ("gqa-llama3", dict(rope_theta=None, rope_scaling=dict(CONFIGS["gqa-llama3"]["rope_scaling"], rope_theta=500000.0))),
])
def test_rope_configs_transformers_reads_match_pytorch(tmp_path, name, edit):
    rng = np.random.default_rng(5)
    model = Llama(**CONFIGS[name], seed=3)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    edit_config(str(d), **edit)
    assert_matches_reference(tmp_path, d, model, batch(rng, CONFIGS[name]["vocab_size"]), rng)


def append_to(d, name, edit):
    """rewrite d/name's text as edit(text) (JSON that json.dump would not write)"""
    p = os.path.join(d, name)
    text = open(p).read()
    open(p, "w").write(edit(text))


def edit_config(d, **kv):
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    c.update(kv)
    json.dump(c, open(p, "w"))


def drop_from_index(d, name):
    p = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(p))
    f = idx["weight_map"].pop(name)
    tensors, meta = st.load(os.path.join(d, f))
    tensors.pop(name)
    st.save(os.path.join(d, f), tensors, meta)
    json.dump(idx, open(p, "w"))


def test_shards_whose_names_end_alike_are_both_read(tmp_path):
    """A shard was taken as opened when an opened shard's path ended with its name: with
    x-y.safetensors listed first, y.safetensors was never read (its tensors "missing", or a
    stale copy in the other shard read silently)."""
    model = Llama(**CONFIGS["gqa-llama3"], seed=3)
    d = tmp_path / "ck"
    model.save_hf(str(d), shards=2)
    p = d / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    names = {"model-00001-of-00002.safetensors": "x-y.safetensors", "model-00002-of-00002.safetensors": "y.safetensors"}
    for old, new in names.items():
        os.rename(d / old, d / new)
    wm = {k: names[v] for k, v in idx["weight_map"].items()}
    idx["weight_map"] = dict(sorted(wm.items(), key=lambda kv: kv[1] != "x-y.safetensors"))
    p.write_text(json.dumps(idx))
    rng = np.random.default_rng(7)
    assert_matches_reference(tmp_path, d, model, batch(rng, CONFIGS["gqa-llama3"]["vocab_size"]), rng)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_refused(tmp_path, case):
    model = Llama(**CONFIGS["gqa-llama3"], seed=1)
    d = str(tmp_path / "ck")
    model.save_hf(d, shards=2)
    fn, want = BAD[case]
    fn(d)
    r = subprocess.run([FDPO, "info", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    for w in want:
        assert w in r.stderr, (w, r.stderr)


@pytest.mark.parametrize("name", ["gqa-llama3", "qwen2"])
@pytest.mark.parametrize("mode", ["forward", "step", "prefill", "batched"])
def test_kv_cache_decoding_matches_pytorch(tmp_path, name, mode):
    """the KV-cache decoder (one token at a time, prefill, several slots) gives the
    reference logits; rotary angles and GQA head sharing are what this checks"""
    model = Llama(**CONFIGS[name], seed=9)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    rng = np.random.default_rng(2)
    ids = list(map(int, rng.integers(0, CONFIGS[name]["vocab_size"], size=20)))
    out = tmp_path / "logits.bin"
    harness("eval-logits", d, mode, out, " ".join(map(str, ids)))
    got = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)
    with torch.no_grad():
        ref = model.forward(ids).numpy()
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("name", ["gqa-llama3", "qwen2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_skip_unweighted_lm_head_rows(tmp_path, name, precision):
    """skip_unweighted (what DPO, SFT and rm batches set): the LM head runs only over tokens
    with a target and a non-zero weight. Their token log-probs, the logits rows and every
    gradient equal the full computation's (the same kernels on fewer rows: <= 1e-6), and
    PyTorch's in fp32 (the parity tolerances); skipped tokens get token_logp 0 and zero
    logits; a non-zero upstream gradient on a skipped token is an error naming d_token_logp."""
    rng = np.random.default_rng(8)
    model, d, seqs, used = prompt_masked(tmp_path, name, rng, 4)
    dtl = np.where(used, rng.normal(size=len(used)), 0.0)
    outs = {}
    for skip in (False, True):
        bp, out = tmp_path / f"b{skip}.json", tmp_path / f"o{skip}.safetensors"
        bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in dtl], "skip_unweighted": skip}))
        harness("model-fb", "--model", d, "--batch", bp, "--out", out, "--precision", precision)
        outs[skip] = st.load(str(out))[0]
    full, sk = outs[False], outs[True]
    assert rel_err(sk["token_logp"][used], full["token_logp"][used]) <= 1e-6
    assert np.all(sk["token_logp"][~used] == 0) and np.all(sk["logits"][~used] == 0)
    assert rel_err(sk["logits"][used], full["logits"][used]) <= 1e-6
    assert rel_err(sk["seq_logp"], full["seq_logp"]) <= 1e-6
    grads = [k for k in full if k not in ("logits", "token_logp", "seq_logp")]
    # the skipped rows change the GEMMs' shapes (K x V instead of N x V), so oneDNN's blocking
    # and summation order differ: gradients agree to fp32 rounding of those sums (measured
    # 1.1e-6 on the Qwen2 k_proj bias), well inside the 1e-4 bound of the PyTorch parity below
    for k in grads:
        assert rel_err(sk[k], full[k]) <= 1e-5, k
    if precision == "fp32":
        ref_logits, _, ref_grads = reference(model, seqs, dtl)
        assert rel_err(sk["logits"][used], ref_logits[used]) <= 1e-5
        for k, g in ref_grads.items():
            assert rel_err(sk[k], g) <= 1e-4, k
    bp = tmp_path / "bad.json"
    bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in np.where(used, dtl, 1.0)],
                              "skip_unweighted": True}))
    r = harness("model-fb", "--model", d, "--batch", bp, "--out", tmp_path / "bad.safetensors", check=False)
    assert r.returncode != 0 and "d_token_logp" in r.stderr and "skip_unweighted" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["gqa-llama3", "qwen2"])
def test_streaming_attention_across_tiles_matches_pytorch(tmp_path, name):
    """attention keeps only each row's log-sum-exp and recomputes the probabilities in
    backward, by blocks of 64 query rows and runs of 64-key tiles: sequences of 1, 64, 65 and 150 tokens and a shared-prompt
    branch layout of 70 + 60 + 60 tokens cross every tile boundary case; logits 1e-5 and
    every gradient 1e-4 against the float64 reference, as on the short batches"""
    rng = np.random.default_rng(11)
    model = Llama(**CONFIGS[name], max_position_embeddings=256, seed=6)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    V = CONFIGS[name]["vocab_size"]
    seqs = []
    for T in (1, 64, 65, 150):
        seqs.append({"tokens": list(map(int, rng.integers(0, V, size=T))), "targets": list(map(int, rng.integers(0, V, size=T))),
                     "pos": list(range(T)), "branch": [0] * T})
    P, Cc = 70, 60
    seqs.append({"tokens": list(map(int, rng.integers(0, V, size=P + 2 * Cc))),
                 "targets": list(map(int, rng.integers(0, V, size=P + 2 * Cc))),
                 "pos": list(range(P + Cc)) + list(range(P, P + Cc)), "branch": [0] * P + [1] * Cc + [2] * Cc})
    assert_matches_reference(tmp_path, d, model, seqs, rng)


@pytest.mark.parametrize("name", ["mha-tied", "gqa-llama3", "qwen2"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("chunk", ["1", "7", "default"])
def test_fused_lm_head_matches_materialised_and_pytorch(tmp_path, name, skip, chunk):
    """fused_head (what DPO, SFT and pretraining batches set): the LM head, log-softmax and
    target gather run over vocabulary chunks (online log-sum-exp; backward recomputes each
    chunk's logits), never holding [N, V], with a tied (mha-tied, qwen2) or untied
    (gqa-llama3) head. Chunks of 1 and 7 put boundaries inside V = 61 / 53 / 47, "default"
    is one chunk. Against the materialised path: token log-probs, sequence log-probs and
    logit row sums 1e-6, gradients 1e-5 (the same fp32 products; d model.norm sums its
    chunks in another order); against float64 PyTorch: logit row sums and log-probs 1e-5,
    every gradient 1e-4. Rows without a target (with skip, rows of weight 0 too) get 0."""
    rng = np.random.default_rng(13)
    model = Llama(**CONFIGS[name], seed=2)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    seqs = batch(rng, CONFIGS[name]["vocab_size"])
    weights, targets = weight_prompts(seqs)
    used = (targets >= 0) & ((weights != 0) if skip else True)
    assert 0 < used.sum() < len(used)
    dtl = np.where(used, rng.normal(size=len(used)), 0.0)
    env = {**os.environ, **({} if chunk == "default" else {"FDPO_LMHEAD_CHUNK": chunk})}
    outs = {}
    for fused in (False, True):
        bp, out = tmp_path / f"b{fused}.json", tmp_path / f"o{fused}.safetensors"
        bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in dtl], "skip_unweighted": skip,
                                  "fused_head": fused}))
        r = subprocess.run([HARNESS, "model-fb", "--model", str(d), "--batch", str(bp), "--out", str(out)],
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        outs[fused] = st.load(str(out))[0]
    full, fu = outs[False], outs[True]
    assert np.all(fu["logits"] == 0)  # never materialised
    assert np.all(fu["token_logp"][~used] == 0) and np.all(fu["logit_sums"][~used] == 0)
    assert rel_err(fu["token_logp"][used], full["token_logp"][used]) <= 1e-6
    assert rel_err(fu["seq_logp"], full["seq_logp"]) <= 1e-6
    assert rel_err(fu["logit_sums"][used], full["logit_sums"][used]) <= 1e-6
    ref_logits, _, ref_grads = reference(model, seqs, dtl)
    ref_lp = torch.log_softmax(torch.tensor(ref_logits), -1).numpy()
    ref_tlp = np.where(targets >= 0, ref_lp[np.arange(len(targets)), np.maximum(targets, 0)], 0.0)
    assert rel_err(fu["token_logp"][used], ref_tlp[used]) <= 1e-5
    assert rel_err(fu["logit_sums"][used], ref_logits.sum(-1)[used]) <= 1e-5
    for k, g in ref_grads.items():
        assert rel_err(fu[k], full[k]) <= 1e-5, k
        assert rel_err(fu[k], g) <= 1e-4, k
    if skip:  # a gradient on a token the head skipped is an error naming it
        bp = tmp_path / "bad.json"
        bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in np.where(used, dtl, 1.0)],
                                  "skip_unweighted": True, "fused_head": True}))
        r = harness("model-fb", "--model", d, "--batch", bp, "--out", tmp_path / "bad.safetensors", check=False)
        assert r.returncode != 0 and "d_token_logp" in r.stderr and "skip_unweighted" in r.stderr, r.stderr


@pytest.mark.parametrize("name,precision", [("gqa-llama3", "fp32"), ("qwen2", "fp32"), ("gqa-llama3", "bf16")])
def test_last_layer_runs_on_the_head_rows_only(tmp_path, name, precision):
    """With the fused head the last layer after its attention (o_proj, the MLP, both norms)
    runs on the LM head's rows only, as GPT-2's last block (docs/model.md, "The last block on
    the head's rows"): the same log-probs and gradients as the whole layer
    (FDPO_HEAD_ROWS_ONLY=0; fp32 1e-6 / 1e-5, bf16 1e-5 / 1e-4), with d = 0 on some head
    rows; no hidden states afterwards and backward_hidden refused. Against PyTorch this path
    is what test_fused_lm_head_matches_materialised_and_pytorch runs (its batches have rows
    without a target)."""
    rng = np.random.default_rng(23)
    _, d, seqs, used = prompt_masked(tmp_path, name, rng, 5)
    dtl = np.where(used, rng.normal(size=len(used)), 0.0)
    dtl[np.flatnonzero(used)[::4]] = 0.0
    bp = tmp_path / "b.json"
    bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in dtl], "skip_unweighted": True,
                              "fused_head": True}))
    outs = {}
    for rows_only in ("1", "0"):
        out = tmp_path / f"o{rows_only}.safetensors"
        r = subprocess.run([HARNESS, "model-fb", "--model", str(d), "--batch", str(bp), "--out", str(out),
                            "--precision", precision, "--report-hidden", "1"], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "FDPO_HEAD_ROWS_ONLY": rows_only})
        assert r.returncode == 0, r.stderr
        outs[rows_only] = st.load(str(out))[0]
    rows, whole = outs["1"], outs["0"]
    assert rows["hidden_available"][0] == 0 and whole["hidden_available"][0] == 1
    tol_lp, tol_g = (1e-5, 1e-4) if precision == "bf16" else (1e-6, 1e-5)
    assert np.all(rows["token_logp"][~used] == 0)
    assert rel_err(rows["token_logp"], whole["token_logp"]) <= tol_lp
    grads = [k for k in whole if k.startswith(("model.", "lm_head."))]
    assert len(grads) >= 9 * CONFIGS[name]["num_hidden_layers"]
    for k in grads:
        assert rel_err(rows[k], whole[k]) <= tol_g, k
    r = harness("model-fb", "--model", d, "--batch", bp, "--out", tmp_path / "h.st", "--backward-hidden", 1,
                "--precision", precision, check=False)
    assert r.returncode != 0 and "backward_hidden" in r.stderr and "head's rows only" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["mha-tied", "gqa-llama3"])
def test_fused_lm_head_bf16_matches_materialised_bf16(tmp_path, name):
    """bf16: the fused head rounds the same operands (model.norm rows and the head's bf16
    copy) to bf16 and accumulates in fp32 as the materialised bf16 head does, so log-probs
    and gradients agree to fp32 summation order (chunks of 7; 1e-5 log-probs, 1e-4
    gradients relative to the largest entry)"""
    rng = np.random.default_rng(17)
    model = Llama(**CONFIGS[name], seed=8)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    seqs = batch(rng, CONFIGS[name]["vocab_size"])
    N = sum(len(s["tokens"]) for s in seqs)
    targets = np.concatenate([s["targets"] for s in seqs])
    dtl = np.where(targets >= 0, rng.normal(size=N), 0.0)
    outs = {}
    for fused in (False, True):
        bp, out = tmp_path / f"b{fused}.json", tmp_path / f"o{fused}.safetensors"
        bp.write_text(json.dumps({"sequences": seqs, "d_token_logp": [float(x) for x in dtl], "fused_head": fused}))
        r = subprocess.run([HARNESS, "model-fb", "--model", str(d), "--batch", str(bp), "--out", str(out),
                            "--precision", "bf16"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "FDPO_LMHEAD_CHUNK": "7"})
        assert r.returncode == 0, r.stderr
        outs[fused] = st.load(str(out))[0]
    full, fu = outs[False], outs[True]
    assert np.all(fu["logits"] == 0)
    assert rel_err(fu["token_logp"], full["token_logp"]) <= 1e-5
    for k in full:
        if k not in ("logits", "token_logp", "seq_logp", "logit_sums"):
            assert rel_err(fu[k], full[k]) <= 1e-4, k
