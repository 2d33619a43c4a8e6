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
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", out)
    assert r.returncode == 1 and r.stderr == (f"fdpo merge: --out: {out} already holds a checkpoint "
                                              "(model.safetensors.index.json) (use --overwrite to replace it)\n"), r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = run(FDPO, "merge", "--model", a, "--model", b, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "fdpo_tokenizer.json", "model.safetensors", "notes.txt"]
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
