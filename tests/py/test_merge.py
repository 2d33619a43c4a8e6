"""fdpo merge: weighted averaging and task arithmetic equal numpy's float64 sums rounded to
float32 (element-wise, exactly); mismatched architectures/tokenizers and bad weights are
refused with a message naming the checkpoint or flag."""
import json
import os
import subprocess

import numpy as np
import pytest

from fdpo_ref import safetensors as st
from tok_ref import B2U

HERE = os.path.dirname(os.path.abspath(__file__))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
CFG = dict(vocab_size=257, n_positions=16, n_embd=16, n_layer=2, n_head=2, model_type="gpt2")


def run(*args):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=120)


def make_model(tmp_path, name, seed, **over):
    cfgdir = tmp_path / f"cfg-{name}"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text(json.dumps(dict(CFG, **over)))
    out = tmp_path / name
    r = run(HARNESS, "model-init", "--config", cfgdir / "config.json", "--seed", seed, "--out", out)
    assert r.returncode == 0, r.stderr
    (out / "fdpo_tokenizer.json").write_text('{"type": "byte"}')
    return out


def tensors(d):
    return st.load(str(d / "model.safetensors"))[0]


def test_linear_average_is_exact(tmp_path):
    dirs = [make_model(tmp_path, f"m{i}", 11 + i) for i in range(3)]
    w = [0.2, 0.5, 0.3]
    r = run(FDPO, "merge", *sum([["--model", d] for d in dirs], []), "--weight", ",".join(map(str, w)),
            "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    got = tensors(tmp_path / "merged")
    ins = [tensors(d) for d in dirs]
    assert set(got) == set(ins[0])
    for k in got:
        ref = sum(wi * t[k].astype(np.float64) for wi, t in zip(w, ins)).astype(np.float32)
        assert np.array_equal(got[k], ref), k
    # the merged directory is a normal checkpoint: it loads and carries the tokenizer
    assert run(FDPO, "info", tmp_path / "merged").returncode == 0
    assert json.loads((tmp_path / "merged" / "fdpo_tokenizer.json").read_text())["type"] == "byte"


def test_tokenizers_are_compared_by_what_they_encode(tmp_path):
    """the tokenizer check is fdpo_tokenizer_same, not the files' text: a chat template (which
    does not change an id) no longer refuses a merge; the merged checkpoint keeps the first's"""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    (b / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257, "eos_token_id": 256,
                                                       "chat_template": "{{ messages }}"}))
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "chat_template" not in json.loads((tmp_path / "m" / "fdpo_tokenizer.json").read_text())


def test_default_weights_are_the_mean(tmp_path):
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    got, ta, tb = tensors(tmp_path / "m"), tensors(a), tensors(b)
    for k in got:
        ref = (0.5 * ta[k].astype(np.float64) + 0.5 * tb[k].astype(np.float64)).astype(np.float32)
        assert np.array_equal(got[k], ref), k


def test_every_model_goes_through_the_flag_parser(tmp_path):
    """--model is a repeatable flag of the table: its old spelling --policy, and model keys of a
    --config file, give every checkpoint (a hand-written scan of argv used to keep only the
    --model ones: --policy a --policy b merged one, a config file's keys only the last)"""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    assert run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "ref").returncode == 0
    want = (tmp_path / "ref" / "model.safetensors").read_bytes()
    r = run(FDPO, "merge", "--policy", a, "--policy", b, "--out", tmp_path / "alias")
    assert r.returncode == 0 and "of 2 checkpoints" in r.stderr, r.stderr
    assert (tmp_path / "alias" / "model.safetensors").read_bytes() == want
    (tmp_path / "m.ini").write_text(f"model = {a}\nmodel = {b}\n")
    r = run(FDPO, "merge", "--config", tmp_path / "m.ini", "--out", tmp_path / "ini")
    assert r.returncode == 0 and "of 2 checkpoints" in r.stderr, r.stderr
    assert (tmp_path / "ini" / "model.safetensors").read_bytes() == want


def test_task_arithmetic_is_exact(tmp_path):
    base = make_model(tmp_path, "base", 5)
    a, b = make_model(tmp_path, "a", 6), make_model(tmp_path, "b", 7)
    w = [0.7, -0.25]
    r = run(FDPO, "merge", "--base", base, "--model", a, "--model", b, "--weight", "0.7,-0.25",
            "--out", tmp_path / "ta")
    assert r.returncode == 0, r.stderr
    got, tb0, ta, tb = tensors(tmp_path / "ta"), tensors(base), tensors(a), tensors(b)
    for k in got:
        b64 = tb0[k].astype(np.float64)
        ref = (b64 + w[0] * (ta[k].astype(np.float64) - b64) + w[1] * (tb[k].astype(np.float64) - b64)).astype(np.float32)
        assert np.array_equal(got[k], ref), k
    # one model with weight 1 on a base is that model
    r = run(FDPO, "merge", "--base", base, "--model", a, "--out", tmp_path / "same")
    assert r.returncode == 0, r.stderr
    for k, v in tensors(tmp_path / "same").items():
        ref = (tb0[k].astype(np.float64) + (ta[k].astype(np.float64) - tb0[k].astype(np.float64))).astype(np.float32)
        assert np.array_equal(v, ref), k
    # two models without --weight: each task vector at weight 1, summed (docs/merge.md), not
    # averaged (with one model the two read the same; mutation review)
    r = run(FDPO, "merge", "--base", base, "--model", a, "--model", b, "--out", tmp_path / "sum")
    assert r.returncode == 0, r.stderr
    for k, v in tensors(tmp_path / "sum").items():
        b64 = tb0[k].astype(np.float64)
        ref = (b64 + (ta[k].astype(np.float64) - b64) + (tb[k].astype(np.float64) - b64)).astype(np.float32)
        assert np.array_equal(v, ref), k


@pytest.mark.parametrize("case", ["shape", "tokenizer", "count", "nan", "empty-item", "one", "exists", "run", "sacpo", "rounds",
                                  "adapter", "missing"])
def test_bad_merges_are_refused(tmp_path, case):
    a = make_model(tmp_path, "a", 1)
    b = make_model(tmp_path, "b", 2, n_layer=3) if case == "shape" else make_model(tmp_path, "b", 2)
    args = ["--model", a, "--model", b]
    expect = None
    if case == "shape":
        expect = "architecture differs"
    elif case == "tokenizer":
        # a byte-level BPE of the same size (257, no merges): every byte a token, in GPT-2's
        # byte order, so the same text is other ids
        (b / "fdpo_tokenizer.json").unlink()
        vocab = {u: i for i, u in enumerate(B2U.values())}
        vocab["<|endoftext|>"] = 256
        (b / "vocab.json").write_text(json.dumps(vocab))
        (b / "merges.txt").write_text("#version: 0.2\n")
        expect = "tokenizer differs"
    elif case == "count":
        args += ["--weight", "0.5,0.25,0.25"]
        expect = "--weight: 3 weights for 2"
    elif case == "nan":
        args += ["--weight", "nan,0.5"]
        expect = "--weight"
    elif case == "empty-item":   # strtok skipped it: "0.5,,0.5" read as two weights
        args += ["--weight", "0.5,,0.5"]
        expect = "--weight: empty item in '0.5,,0.5'"
    elif case == "one":
        args = ["--model", a]
        expect = "--model"
    elif case == "exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "model.safetensors").write_bytes(b"x")
        expect = "already holds a checkpoint"
    elif case in ("run", "sacpo", "rounds", "adapter"):
        # another kind of run's output: merging over it would drop its files in the swap
        (tmp_path / "out").mkdir()
        held = {"run": "training_state.json", "sacpo": "sacpo.json", "rounds": "round-0",
                "adapter": "adapter_config.json"}[case]
        if case == "rounds":
            (tmp_path / "out" / held).mkdir()
        else:
            (tmp_path / "out" / held).write_text("{}")
        expect = f"already holds {'sacpo stages' if case == 'sacpo' else 'online rounds' if case == 'rounds' else 'a checkpoint'} ({held})"
    elif case == "missing":
        args = ["--model", a, "--model", tmp_path / "nope"]
        expect = "nope"
    r = run(FDPO, "merge", *args, "--out", tmp_path / "out")
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    assert r.stderr.count("fdpo merge") == 1


LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=16, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, vocab_size=257,
             max_position_embeddings=16, rms_norm_eps=1e-5, rope_theta=10000.0)
RM = dict(architectures=["GPT2ForSequenceClassification"], num_labels=1, pad_token_id=256)


def make_config_model(tmp_path, name, cfg):
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    r = run(HARNESS, "model-init", "--config", tmp_path / f"{name}.json", "--seed", 1, "--out", tmp_path / name)
    assert r.returncode == 0, r.stderr
    (tmp_path / name / "fdpo_tokenizer.json").write_text('{"type": "byte"}')
    return tmp_path / name


@pytest.mark.parametrize("first,second,what", [
    # a reward model and its language model: every shape is equal; the message listed only shapes
    (dict(CFG), dict(CFG, **RM), "architectures GPT2ForSequenceClassification vs GPT2LMHeadModel, num_labels 1 vs 0"),
    (dict(CFG), dict(CFG, n_layer=3, n_head=4), "n_layer 3 vs 2, n_head 4 vs 2"),
    (dict(CFG), dict(CFG, layer_norm_epsilon=1e-6), "layer_norm_epsilon 1e-06 vs 1e-05"),
    (dict(CFG), dict(LLAMA), "architectures LlamaForCausalLM vs GPT2LMHeadModel"),
    # a Llama's own fields (fdpo_gpt2_config_equal compares them too)
    (dict(LLAMA), dict(LLAMA, rope_theta=500000.0), "rope_theta 500000 vs 10000"),
    (dict(LLAMA), dict(LLAMA, num_key_value_heads=2, intermediate_size=48),
     "num_key_value_heads 2 vs 1, intermediate_size 48 vs 32"),
])
def test_an_architecture_mismatch_names_the_fields_that_differ(tmp_path, first, second, what):
    """`merge --model base --model r1` said `architecture differs from base (n_layer 2 vs 2,
    n_embd 16 vs 16, ...)`, every value equal: the message listed five shapes whatever differed.
    It now names exactly the fields fdpo_gpt2_config_equal found different."""
    a, b = make_config_model(tmp_path, "a", first), make_config_model(tmp_path, "b", second)
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == f"fdpo merge: {b}: architecture differs from {a} ({what})\n", r.stderr
    r = run(FDPO, "merge", "--base", a, "--model", b, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == f"fdpo merge: {b}: architecture differs from {a} ({what})\n", r.stderr
    assert not (tmp_path / "out").exists()


def test_an_explicit_head_dim_equal_to_hidden_over_heads_is_the_same_architecture(tmp_path):
    """transformers writes head_dim, fdpo pretrain --arch llama leaves it out: the two were
    "architecture differs (head_dim 8 vs 0)" for the same shapes. The merge is the mean."""
    a = make_config_model(tmp_path, "a", dict(LLAMA))
    b = make_config_model(tmp_path, "b", dict(LLAMA, head_dim=LLAMA["hidden_size"] // LLAMA["num_attention_heads"]))
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    ta, tb, tm = tensors(a), tensors(b), tensors(tmp_path / "out")
    for k in ta:
        assert np.allclose(tm[k], (ta[k].astype(np.float64) + tb[k]) / 2, rtol=0, atol=1e-7), k
    c = make_config_model(tmp_path, "c", dict(LLAMA, head_dim=2 * LLAMA["hidden_size"] // LLAMA["num_attention_heads"]))
    r = run(FDPO, "merge", "--model", a, "--model", c, "--out", tmp_path / "out2")
    assert r.returncode == 1 and "head_dim 16 vs 8" in r.stderr, r.stderr


def refused_then_replaced(a, b, out, holds):
    """merge a + b into out, which holds `holds` and a user's notes.txt: refused without
    --overwrite, out byte for byte as it was; with it, the merged checkpoint beside notes.txt"""
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", out)
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: --out: {out} already holds {holds} "
                                              "(use --overwrite to replace it)\n"), r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "fdpo_tokenizer.json", "model.safetensors", "notes.txt"]


def test_an_out_holding_a_sharded_checkpoint_is_kept_or_replaced_whole(tmp_path):
    """a sharded checkpoint (index + model-0000k-of-0000n.safetensors) in --out was replaced
    without --overwrite; with it, the old shards and index stayed beside the new
    model.safetensors"""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    out = tmp_path / "out"
    out.mkdir()
    t = tensors(a)
    names = sorted(t)
    weight_map = {k: "model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors"
                  for i, k in enumerate(names)}
    for shard in sorted(set(weight_map.values())):
        st.save(str(out / shard), {k: t[k] for k in names if weight_map[k] == shard}, {"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text((a / "config.json").read_text())
    (out / "notes.txt").write_text("mine")
    refused_then_replaced(a, b, out, "a checkpoint (model.safetensors.index.json)")
    got = tensors(out)
    for k, v in tensors(a).items():
        np.testing.assert_array_equal(got[k], ((v.astype(np.float64) + tensors(b)[k]) / 2).astype(np.float32))


def test_a_users_names_holding_dot_tmp_dot_are_carried_over(tmp_path):
    """Every name holding ".tmp." was skipped by the save's carry-over, so notes.tmp.md and a
    folder exp.tmp.v2 vanished from --out, exit 0. Only a writer's NAME.tmp.PID is skipped."""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    out = tmp_path / "out"
    assert run(FDPO, "merge", "--model", a, "--model", b, "--out", out).returncode == 0
    (out / "notes.tmp.md").write_text("mine")
    (out / "exp.tmp.v2").mkdir()
    (out / "exp.tmp.v2" / "results.txt").write_text("data")
    (out / "exp.tmp.v2" / "a.tmp.b.tmp.7").write_text("half")   # a writer's temp name: never carried
    (out / "log.tmp.12x").write_text("also mine")
    r = run(FDPO, "merge", "--model", a, "--model", b, "--weight", "0.2,0.8", "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.tmp.md").read_text() == "mine" and (out / "log.tmp.12x").read_text() == "also mine"
    assert sorted(p.name for p in (out / "exp.tmp.v2").iterdir()) == ["results.txt"]


def overflowing_elements(ins, weights, base=None):
    """every element whose merge (numpy float64, rounded to float32) is not finite, named as
    the safetensors file names the tensor: "NAME[i,j]" (2-D) or "NAME[i]" (1-D)"""
    bad = []
    with np.errstate(over="ignore"):
        for name in sorted(ins[0]):
            if base is None:
                acc = sum(w * t[name].astype(np.float64) for w, t in zip(weights, ins))
            else:
                b64 = base[name].astype(np.float64)
                acc = b64 + sum(w * (t[name].astype(np.float64) - b64) for w, t in zip(weights, ins))
            for idx in zip(*np.nonzero(~np.isfinite(acc.astype(np.float32)))):
                bad.append((f"{name}[{','.join(map(str, idx))}]", acc[idx]))
    return bad


def test_an_overflow_names_the_tensor_element_and_the_inputs(tmp_path):
    """3e38 + 3e38 overflows float32: the refusal said "--weight: ... (parameter 7893 is not
    finite)", an index into fdpo's own parameter buffer (whose order is not the file's), and
    blamed --weight whatever the cause. It now names the element as the file names it and the
    sum of the inputs that overflowed."""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    ta, tb = tensors(a), tensors(b)
    ta["transformer.h.1.mlp.c_fc.weight"][3, 5] = tb["transformer.h.1.mlp.c_fc.weight"][3, 5] = 3e38
    st.save(str(a / "model.safetensors"), ta, {"format": "pt"})
    st.save(str(b / "model.safetensors"), tb, {"format": "pt"})
    (where, value), = overflowing_elements([ta, tb], [1, 1])
    r = run(FDPO, "merge", "--model", a, "--model", b, "--weight", "1,1", "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: the merge overflows float32 at {where}: 1 * {a} + 1 * {b} "
                                              f"= {value:g} is beyond 3.40282e+38\n"), r.stderr
    assert not (tmp_path / "out").exists()
    # task arithmetic, a 1-D tensor of layer 0: base + 2 (a - base) with a = 3e38, base = -1e38
    base = make_model(tmp_path, "base", 3)
    tb0, ta = tensors(base), tensors(a)
    tb0["transformer.h.0.ln_2.bias"][7], ta["transformer.h.0.ln_2.bias"][7] = -1e38, 3e38
    st.save(str(base / "model.safetensors"), tb0, {"format": "pt"})
    st.save(str(a / "model.safetensors"), ta, {"format": "pt"})
    bad = overflowing_elements([ta], [2], base=tb0)
    assert [w for w, _ in bad] == ["transformer.h.0.ln_2.bias[7]", "transformer.h.1.mlp.c_fc.weight[3,5]"]
    r = run(FDPO, "merge", "--base", base, "--model", a, "--weight", "2", "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    # fdpo reports one element of the two (its own order), each named as the file names it
    assert any(r.stderr == f"fdpo merge: the merge overflows float32 at {w}: {base} + 2 * ({a} - {base}) = {v:g} "
               "is beyond 3.40282e+38\n" for w, v in bad), r.stderr


def test_a_lora_fold_overflow_names_the_base_tensor_element(tmp_path):
    """the LoRA fold's overflow said "(parameter 5303 is not finite)": the element is
    c_attn.weight[in, out] += s (B A)^T of layer 1, in = 2 (lora_A's column), out = 7 (lora_B's row)"""
    m = make_model(tmp_path, "m", 1)
    ad = tmp_path / "ad"
    ad.mkdir()
    C = CFG["n_embd"]
    lora = {f"base_model.model.transformer.h.{l}.attn.c_attn.lora_{ab}.weight": np.zeros(s, np.float32)
            for l in (0, 1) for ab, s in (("A", (1, C)), ("B", (3 * C, 1)))}
    lora["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"][0, 2] = 3e38
    lora["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"][7, 0] = 2.0
    st.save(str(ad / "adapter_model.safetensors"), lora, {"format": "pt"})
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["c_attn"],
                                                       "fan_in_fan_out": True, "base_model_name_or_path": str(m)}))
    # the reference: W + (alpha/r) (B A)^T in float64, the non-finite elements after rounding
    W = tensors(m)
    bad = []
    with np.errstate(over="ignore"):
        for l in (0, 1):
            name = f"transformer.h.{l}.attn.c_attn.weight"
            A = lora[f"base_model.model.{name[:-len('.weight')]}.lora_A.weight"].astype(np.float64)
            B = lora[f"base_model.model.{name[:-len('.weight')]}.lora_B.weight"].astype(np.float64)
            folded = (W[name].astype(np.float64) + (B @ A).T).astype(np.float32)
            bad += [f"{name}[{i},{j}]" for i, j in zip(*np.nonzero(~np.isfinite(folded)))]
    assert bad == ["transformer.h.1.attn.c_attn.weight[2,7]"]
    r = run(FDPO, "merge", "--lora", ad, "--model", m, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: --lora {ad}: folding it into {m} overflows float32 at {bad[0]} "
                                              "(W + (alpha/r) B A is beyond 3.40282e+38)\n"), r.stderr


@pytest.mark.parametrize("run_file", ["metrics.jsonl", "data_summary.json", "eval_summary.json"])
def test_a_never_saved_runs_files_in_out_are_kept_unless_overwrite(tmp_path, run_file):
    """docs/merge.md: another run's output in --out is kept unless --overwrite. The metrics and
    summaries of a run killed before its first save were deleted by a merge without
    --overwrite, exit 0. Now refused (the merged model is not the run they describe); with
    --overwrite they go, a user's file stays."""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / run_file).write_text('{"step": 1, "loss": 2.5}\n')
    (out / "notes.txt").write_text("mine")
    refused_then_replaced(a, b, out, f"another run's output ({run_file})")


def test_out_is_claimed_before_the_inputs_are_loaded(tmp_path):
    """merge checked --out at its start but locked it only at the save: a checkpoint another run
    wrote there meanwhile was replaced without --overwrite. OUT is now locked first: with
    another process holding OUT.lock the merge stops before reading any input (the missing
    input was reported: the lock was taken only after the merge)."""
    import fcntl
    a = make_model(tmp_path, "a", 1)
    out = tmp_path / "out"
    with open(tmp_path / "out.lock", "w") as lock:
        lock.write(str(os.getpid()))
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run(FDPO, "merge", "--model", a, "--model", tmp_path / "missing", "--out", out)
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: --out {out}: in use by another run (pid {os.getpid()} holds "
                                              f"{out}.lock); wait for it or choose another --out\n"), r.stderr


def test_a_checkpoint_restored_from_out_old_is_kept_without_overwrite(tmp_path):
    """a save interrupted between its two renames leaves only OUT.old; merge's claim renames it
    back, and then finds the checkpoint (it restored it at the save and replaced it, exit 0)"""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    out = tmp_path / "out"
    assert run(FDPO, "merge", "--model", a, "--model", b, "--out", out).returncode == 0
    (out / "training_state.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.rename(tmp_path / "out.old")
    (tmp_path / "out.tmp").mkdir()   # the new checkpoint, marked by the save as having begun the swap
    (tmp_path / "out.tmp" / ".fdpo-swap").write_bytes(b"")
    r = run(FDPO, "merge", "--model", a, "--model", b, "--weight", "0.2,0.8", "--out", out)
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: warning: {out} restored from {out}.old (a save was interrupted)\n"
                                              f"fdpo merge: warning: removed {out}.tmp (left by an interrupted save)\n"
                                              f"fdpo merge: --out: {out} already holds a checkpoint (training_state.json) "
                                              "(use --overwrite to replace it)\n"), r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "out.old").exists() and not (tmp_path / "out.tmp").exists()


BPE_MERGES = [("t", "h"), ("h", "e"), ("th", "e"), ("a", "b"), ("Ġ", "t")]


def write_bpe(d, merges=BPE_MERGES, made=BPE_MERGES, swap=None, eos=None):
    """a GPT-2 style BPE: the 256 byte symbols in byte order, the tokens the pairs of `made`
    make, then <|endoftext|>; the merges `merges` in that order; swap exchanges two tokens'
    ids, eos names tokenizer_config.json's eos_token"""
    (d / "fdpo_tokenizer.json").unlink(missing_ok=True)
    tokens = list(B2U.values()) + ["".join(m) for m in made] + ["<|endoftext|>"]
    if swap:
        i, j = swap
        tokens[i], tokens[j] = tokens[j], tokens[i]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{x} {y}\n" for x, y in merges), encoding="utf-8")
    if eos:
        (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}, ensure_ascii=False))
    return tokens


def bpe_cases():
    n = 256 + len(BPE_MERGES) + 1
    swapped = list(BPE_MERGES)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    return n, [
        # (how the second differs, the first difference as the documented order finds it)
        ("merges", dict(merges=swapped), "merges[1] 'th e' vs 'h e'"),
        ("eos", dict(eos="the"), f"eos id {256 + 2} vs {n - 1}"),
        ("token", dict(swap=(259, 260)), "token 259 'Ġt' vs 'ab'"),
        ("vocab", dict(merges=BPE_MERGES[:-1], made=BPE_MERGES[:-1]), f"vocab_size {n - 1} vs {n}"),
        ("kind", None, "kind byte vs gpt2-bpe"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in bpe_cases()[1]])
def test_a_tokenizer_mismatch_names_the_first_difference(tmp_path, case):
    """three different tokenizer differences read the same "tokenizer differs from m1's";
    the message now names the first difference (fdpo_tokenizer_diff), as the architecture
    check names its fields. The expected text is built from the files the test writes."""
    n, cases = bpe_cases()
    _, change, what = next(c for c in cases if c[0] == case)
    a, b = make_model(tmp_path, "a", 1, vocab_size=n), make_model(tmp_path, "b", 2, vocab_size=n)
    tokens = write_bpe(a)
    assert tokens[259] == "ab" and tokens[260] == "Ġt" and tokens[258] == "the"
    if change is not None:
        write_bpe(b, **change)
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: {b}: tokenizer differs from {a}'s ({what}): merged weights "
                                              "would mean different tokens\n"), r.stderr
    # the same tokenizer saved again merges (fdpo_tokenizer_same's semantics kept)
    if change is not None:
        write_bpe(b)
        (b / "tokenizer_config.json").unlink(missing_ok=True)
        r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "out")
        assert r.returncode == 0, r.stderr


def f64_weights(d, seed):
    """d's weights rewritten as F64, each times (1 + N(0, 1e-9)): values float32 cannot hold,
    so summing their float32 roundings (two roundings) differs from summing them"""
    rng = np.random.default_rng(seed)
    t = {k: v.astype(np.float64) * (1 + 1e-9 * rng.standard_normal(v.shape)) for k, v in tensors(d).items()}
    st.save(str(d / "model.safetensors"), t, {"format": "pt"})
    return t


def test_f64_inputs_are_summed_as_the_files_hold_them_and_rounded_once(tmp_path):
    """an F64 weight was rounded to float32 when read and the merge summed those roundings, so
    27% of the elements of a 0.5/0.5 merge were 1 ulp off numpy's float64 sum rounded once"""
    a, b, base = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2), make_model(tmp_path, "base", 3)
    ta, tb, tbase = tensors(a), f64_weights(b, 0), f64_weights(base, 1)
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "lin")
    assert r.returncode == 0, r.stderr
    got, rounded_twice = tensors(tmp_path / "lin"), 0
    for k in got:
        ref = (0.5 * ta[k].astype(np.float64) + 0.5 * tb[k]).astype(np.float32)
        assert np.array_equal(got[k], ref), k
        rounded_twice += int((ref != (0.5 * ta[k] + 0.5 * tb[k].astype(np.float32).astype(np.float64)).astype(np.float32)).sum())
    assert rounded_twice > 100   # the test tells the two apart
    r = run(FDPO, "merge", "--base", base, "--model", b, "--weight", "0.7", "--out", tmp_path / "task")
    assert r.returncode == 0, r.stderr
    got = tensors(tmp_path / "task")
    for k in got:
        assert np.array_equal(got[k], (tbase[k] + 0.7 * (tb[k] - tbase[k])).astype(np.float32)), k


def test_an_f64_value_beyond_float32_is_refused_as_out_of_range(tmp_path):
    """a finite 1e39 became +Inf when rounded and was refused as "has 1 non-finite value (NaN
    or Inf)", a value the file does not hold"""
    a, b = make_model(tmp_path, "a", 1), make_model(tmp_path, "b", 2)
    tb = f64_weights(b, 0)
    tb["transformer.h.1.mlp.c_fc.weight"][2, 3] = -1e39
    st.save(str(b / "model.safetensors"), tb, {"format": "pt"})
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: {b}/model.safetensors: tensor 'transformer.h.1.mlp.c_fc.weight': "
                                              "element [2,3] = -1e+39 (F64) is beyond float32's range (+-3.40282e+38)\n"), r.stderr
    assert not (tmp_path / "out").exists()


def lora_adapter(ad, base, rng, score=False, dtype=np.float32, family="gpt2"):
    """a PEFT adapter on GPT-2's c_attn / Llama's q_proj (r 2, alpha 4: s = 2), B != 0; score:
    a reward model's (modules_to_save ["score"])"""
    ad.mkdir()
    C, module = CFG["n_embd"], ADAPTED[family]
    out = 3 * C if family == "gpt2" else LLAMA["hidden_size"]
    # B small: s B A of the size of W (0.02), whose last bits then decide the rounding
    t = {f"base_model.model.{module.format(l)}.lora_{ab}.weight": (rng.standard_normal(s) * sd).astype(dtype)
         for l in (0, 1) for ab, s, sd in (("A", (2, C), 1.0), ("B", (out, 2), 0.01))}
    if score:
        t["base_model.model.score.weight"] = rng.standard_normal((1, C)).astype(dtype)
    st.save(str(ad / "adapter_model.safetensors"), t, {"format": "pt"})
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": [module.split(".")[-1]],
           "fan_in_fan_out": family == "gpt2", "base_model_name_or_path": str(base),
           "task_type": "SEQ_CLS" if score else "CAUSAL_LM"}
    if score:
        cfg["modules_to_save"] = ["score"]
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    return t


ADAPTED = {"gpt2": "transformer.h.{}.attn.c_attn", "llama": "model.layers.{}.self_attn.q_proj"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("score", [False, True])
def test_a_lora_fold_onto_an_f64_base_rounds_once(tmp_path, score, family):
    """W + s B A (transposed for GPT-2) from the F64 base's own values (they were rounded to
    float32 first); the reward-model case adds a score head, which moves every tensor after
    GPT-2's wte and takes Llama's lm_head's place"""
    m = make_model(tmp_path, "m", 1) if family == "gpt2" else make_config_model(tmp_path, "m", LLAMA)
    W = f64_weights(m, 0)
    lora = lora_adapter(tmp_path / "ad", m, np.random.default_rng(1), score, family=family)
    r = run(FDPO, "merge", "--lora", tmp_path / "ad", "--model", m, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    got, rounded_twice = tensors(tmp_path / "out"), 0
    assert set(got) == (set(W) - ({"lm_head.weight"} if score else set())) | ({"score.weight"} if score else set())
    adapted = [ADAPTED[family].format(l) for l in (0, 1)]
    for k in got.keys() - {"score.weight"}:
        ref = W[k]
        if k[:-len(".weight")] in adapted:
            pre = "base_model.model." + k[:-len(".weight")]
            ba = lora[pre + ".lora_B.weight"].astype(np.float64) @ lora[pre + ".lora_A.weight"].astype(np.float64)
            ba = ba.T if family == "gpt2" else ba
            ref = W[k] + 2.0 * ba
            rounded_twice += int((ref.astype(np.float32) != (W[k].astype(np.float32) + 2.0 * ba).astype(np.float32)).sum())
        assert np.array_equal(got[k], ref.astype(np.float32)), k
    assert rounded_twice > 10
    if score:
        assert np.array_equal(got["score.weight"], lora["base_model.model.score.weight"])


def test_an_f64_adapter_is_refused(tmp_path):
    """docs/lora.md: adapter tensors are F32, F16 or BF16; F64 ones were read (rounded to float32
    before the fold's sum)"""
    m = make_model(tmp_path, "m", 1)
    lora_adapter(tmp_path / "ad", m, np.random.default_rng(1), dtype=np.float64)
    r = run(FDPO, "merge", "--lora", tmp_path / "ad", "--model", m, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr.endswith(
        "adapter_model.safetensors: tensor 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight': dtype F64 "
        "(adapter tensors are F32, F16 or BF16)\n"), r.stderr
    assert not (tmp_path / "out").exists()


def test_a_lora_fold_onto_an_adapter_directory_is_refused(tmp_path):
    """docs/lora.md: the base must be a full checkpoint, a chain of adapter directories refused
    naming the base to merge first. merge --lora read an adapter directory given as --model (or
    named by base_model_name_or_path) as base + its adapter and folded the second on top, exit
    0: a continued adapter (which holds its predecessor's training) counted it twice."""
    g = make_model(tmp_path, "g", 1)
    lora_adapter(tmp_path / "ad1", g, np.random.default_rng(1))
    lora_adapter(tmp_path / "ad2", g, np.random.default_rng(2))
    ad1, ad2 = tmp_path / "ad1", tmp_path / "ad2"
    r = run(FDPO, "merge", "--lora", ad2, "--model", ad1, "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (
        f"fdpo merge: --model {ad1} is itself a LoRA adapter directory (a base + its adapter), not a full checkpoint; "
        f"give the base --lora {ad2} adapts, or merge it first (fdpo merge --lora {ad1} --out DIR)\n"), r.stderr
    lora_adapter(tmp_path / "chain", ad1, np.random.default_rng(3))
    r = run(FDPO, "merge", "--lora", tmp_path / "chain", "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr == (
        f"fdpo merge: --lora {tmp_path / 'chain'}: base_model_name_or_path {ad1} is itself a LoRA adapter directory; "
        f"merge it first (fdpo merge --lora {ad1} --out DIR)\n"), r.stderr
    assert not (tmp_path / "out").exists()
    # what the messages point to: onto a full checkpoint, the fold is g + s (B A)^T of that adapter alone
    r = run(FDPO, "merge", "--lora", ad2, "--model", g, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    lora, W, got = st.load(str(ad2 / "adapter_model.safetensors"))[0], tensors(g), tensors(tmp_path / "out")
    for l in (0, 1):
        k, pre = f"transformer.h.{l}.attn.c_attn.weight", f"base_model.model.transformer.h.{l}.attn.c_attn"
        ba = lora[pre + ".lora_B.weight"].astype(np.float64) @ lora[pre + ".lora_A.weight"].astype(np.float64)
        assert np.array_equal(got[k], (W[k].astype(np.float64) + 2.0 * ba.T).astype(np.float32)), k


@pytest.mark.parametrize("named_base", [None, "gpt2"])
def test_a_peft_reward_adapter_without_tokenizer_folds_onto_model_base(tmp_path, named_base):
    """a SEQ_CLS adapter as PEFT's save_pretrained leaves it (no tokenizer files;
    base_model_name_or_path null, or a hub id): the score head's pad was looked up in the
    adapter or its base_model_name_or_path only, never in --model BASE, so the fold `fdpo info`
    suggests was refused. docs/lora.md: such an adapter takes BASE's tokenizer, and the pad is
    its end of text (256 for the byte tokenizer)."""
    g = make_model(tmp_path, "g", 1)
    ad = tmp_path / "ad"
    lora = lora_adapter(ad, g, np.random.default_rng(1), score=True)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = named_base
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    if named_base is None:
        info = run(FDPO, "info", ad)
        assert info.returncode == 1 and f"fdpo merge --lora {ad} --model BASE --out DIR" in info.stderr, info.stderr
    r = run(FDPO, "merge", "--lora", ad, "--model", g, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == 256, config
    got, W = tensors(tmp_path / "out"), tensors(g)
    assert np.array_equal(got["score.weight"], lora["base_model.model.score.weight"])
    for l in (0, 1):
        k, pre = f"transformer.h.{l}.attn.c_attn.weight", f"base_model.model.transformer.h.{l}.attn.c_attn"
        ba = lora[pre + ".lora_B.weight"].astype(np.float64) @ lora[pre + ".lora_A.weight"].astype(np.float64)
        assert np.array_equal(got[k], (W[k].astype(np.float64) + 2.0 * ba.T).astype(np.float32)), k
