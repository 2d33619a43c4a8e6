"""Checkpoint IO: Hugging Face GPT-2 directories (config.json + model.safetensors) written
by fdpo load into the PyTorch reference and vice versa; every malformed input is refused
with a message that names the file, tensor or key at fault."""
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

HERE = os.path.dirname(os.path.abspath(__file__))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
CFG = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)


def run(*args, timeout=120):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=timeout)


def rel_err(got, ref):
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


BATCH_TOKENS = [[5, 17, 3, 96, 0, 44, 12, 9, 9, 31], [70, 2, 2, 8]]


def fdpo_logits(tmp_path, model_dir):
    seqs = [{"tokens": t, "targets": t[1:] + [-1]} for t in BATCH_TOKENS]
    (tmp_path / "batch.json").write_text(json.dumps({"sequences": seqs}))
    out = tmp_path / "fb.safetensors"
    r = run(HARNESS, "model-fb", "--model", model_dir, "--batch", tmp_path / "batch.json", "--out", out)
    assert r.returncode == 0, r.stderr
    return st.load(str(out))[0]["logits"]


def ref_logits(model):
    with torch.no_grad():
        m = model.double()
        return np.concatenate([m.forward(torch.tensor(t)).numpy() for t in BATCH_TOKENS])


def test_fdpo_checkpoint_loads_into_pytorch(tmp_path):
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text(json.dumps(dict(CFG, model_type="gpt2")))
    r = run(HARNESS, "model-init", "--config", cfgdir / "config.json", "--seed", 3, "--out", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    for k, v in CFG.items():
        assert cfg[k] == v, k
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["layer_norm_epsilon"] == 1e-5
    raw = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    assert hlen % 8 == 0  # data section 8-byte aligned
    header = json.loads(raw[8:8 + hlen])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["transformer.h.1.attn.c_attn.weight"]["shape"] == [32, 96]  # Conv1D [in, out]
    assert header["transformer.h.0.mlp.c_proj.weight"]["shape"] == [128, 32]
    assert len(header) - 1 == 2 + 2 * 12 + 2
    model = GPT2(**CFG)
    model.load_hf(str(tmp_path / "ck"))
    assert rel_err(fdpo_logits(tmp_path, tmp_path / "ck"), ref_logits(model)) <= 1e-5


def special_values(model):
    """Put f16 subnormals, the largest f16, -0 and bf16-exact values into wte so that the
    conversions are exercised beyond the ordinary range."""
    with torch.no_grad():
        w = model.param("wte.weight")
        w[0, :6] = torch.tensor([6e-8, -3e-6, 6.0e-5, 65504.0 / 1e3, -0.0, 1e-30])


@pytest.mark.parametrize("variant", ["prefixed", "bare_with_buffers", "f16", "bf16", "n_ctx_only", "explicit_defaults"])
def test_pytorch_checkpoint_loads_into_fdpo(tmp_path, variant):
    model = GPT2(**CFG, seed=7)
    special_values(model)
    d = tmp_path / "ck"
    T = CFG["n_positions"]
    if variant == "bare_with_buffers":
        extra = {}
        for i in range(CFG["n_layer"]):
            extra[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            extra[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        extra["lm_head.weight"] = model.param("wte.weight").detach().clone()
        model.save_hf(str(d), prefix="", extra=extra)
    elif variant in ("f16", "bf16"):
        model.save_hf(str(d), dtype=variant.upper())
    else:
        model.save_hf(str(d))
    if variant == "n_ctx_only":
        cfg = json.loads((d / "config.json").read_text())
        del cfg["n_positions"]
        (d / "config.json").write_text(json.dumps(cfg))
    else:
        assert "n_positions" in json.loads((d / "config.json").read_text())
    if variant == "explicit_defaults":   # Cerebras-GPT style: n_inner written out, the tanh GELU's other name
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(n_inner=4 * CFG["n_embd"], activation_function="gelu_pytorch_tanh")
        (d / "config.json").write_text(json.dumps(cfg))
    # the reference sees exactly the weights the file holds (rounded for f16/bf16)
    rounded = GPT2(**CFG)
    rounded.load_hf(str(d))
    if variant == "f16":
        assert not torch.equal(rounded.param("wte.weight"), model.param("wte.weight"))
    # loading converts exactly: re-saved F32 weights equal numpy's own conversion
    r = run(HARNESS, "model-load", "--model", d, "--save", tmp_path / "resaved")
    assert r.returncode == 0, r.stderr
    resaved, _ = st.load(str(tmp_path / "resaved" / "model.safetensors"))
    for name, p in rounded.named().items():
        assert np.array_equal(resaved[name], p.detach().numpy()), name
    assert np.signbit(resaved["transformer.wte.weight"][0, 4])  # -0 stays -0
    # Tolerance: the same 1e-5 as fp32, because fdpo and the reference start from the very
    # same (rounded) weights; the rounding itself is checked exactly above.
    assert rel_err(fdpo_logits(tmp_path, d), ref_logits(rounded)) <= 1e-5


def test_info_prints_config(tmp_path):
    GPT2(**CFG).save_hf(str(tmp_path / "ck"))
    r = run(FDPO, "info", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    for line in ["vocab_size: 97", "n_positions: 32", "n_embd: 32", "n_layer: 2", "n_head: 4",
                 "layer_norm_epsilon: 1e-05", "tokenizer: none", "training_state: no"]:
        assert line in r.stdout
    n_params = sum(p.numel() for p in GPT2(**CFG).named().values())
    assert f"parameters: {n_params} " in r.stdout
    # a byte-level tokenizer needs vocab_size >= 257 (a smaller one is refused: see BAD below)
    byte_cfg = dict(CFG, vocab_size=257)
    GPT2(**byte_cfg).save_hf(str(tmp_path / "ck"))
    n_params = sum(p.numel() for p in GPT2(**byte_cfg).named().values())
    (tmp_path / "ck" / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte"}))
    r = run(FDPO, "info", tmp_path / "ck")
    assert "tokenizer: byte (257 tokens)" in r.stdout, r.stdout
    (tmp_path / "ck" / "training_state.json").write_text(json.dumps({"step": 42}))
    j = json.loads(run(FDPO, "info", "--json", tmp_path / "ck").stdout)
    assert j["parameters"] == n_params and j["training_state"] is True and j["step"] == 42
    assert j["tokenizer"] == "byte"
    assert "training_state: yes (step 42)" in run(FDPO, "info", tmp_path / "ck").stdout
    assert j["layer_norm_epsilon"] == 1e-5 and j["n_head"] == 4
    assert run(FDPO, "info", "--help").returncode == 0
    r = run(FDPO, "info")
    assert r.returncode != 0 and "checkpoint directory" in r.stderr


def test_info_refuses_a_bad_training_state_naming_the_file(tmp_path):
    """info reads training_state.json with the trainer's reader: a truncated file or a
    wrong-typed "step" is an error naming the file (it used to print "training_state: yes")."""
    GPT2(**CFG).save_hf(str(tmp_path / "ck"))
    state = tmp_path / "ck" / "training_state.json"
    for text, field in [('{"format": "fdpo-training-state", "step": 4', None), ('{"step": "4"}', "step"),
                        ('{"step": -1}', "step"), ('[4]', None)]:
        state.write_text(text)
        for extra in [], ["--json"]:
            r = run(FDPO, "info", *extra, tmp_path / "ck")
            assert r.returncode != 0 and r.stdout == "", (text, r.stdout)
            assert f"{state}: " in r.stderr, r.stderr
            if field:
                assert f"field '{field}'" in r.stderr, r.stderr
            else:
                assert "not a JSON object" in r.stderr, r.stderr
    state.write_text('{"step": 7}')   # a state the info command reads: only its step
    assert "training_state: yes (step 7)" in run(FDPO, "info", tmp_path / "ck").stdout


def test_gpt2_config_under_transformers_names_matches_pytorch(tmp_path):
    """GPT2Config's attribute_map reads num_attention_heads, num_hidden_layers, hidden_size and
    max_position_embeddings as n_head, n_layer, n_embd and n_positions: a config.json that
    gives only those names (or both, alike) is the same model (it was refused as missing
    n_head, or the alias ignored)."""
    model = GPT2(**CFG, seed=4)
    alias = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_embd": "hidden_size",
             "n_positions": "max_position_embeddings"}
    for name, drop in (("only_aliases", True), ("both_alike", False)):
        d = tmp_path / name
        model.save_hf(str(d))
        edit_config(d, lambda c: [c.update({a: c.pop(k) if drop else c[k]}) for k, a in alias.items()] +
                    [c.pop("n_ctx", None) if drop else None])
        cfg = json.loads((d / "config.json").read_text())
        assert not drop or not set(alias) & set(cfg), cfg
        assert rel_err(fdpo_logits(tmp_path, d), ref_logits(model)) <= 1e-5, name


# ---- bad input: each case edits a valid checkpoint and names what the message must say ----

def write_header(path, header, body=b"", hlen=None):
    h = json.dumps(header).encode() if isinstance(header, dict) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if hlen is None else hlen))
        f.write(h)
        f.write(body)


def edit_tensors(d, fn):
    """Rewrite model.safetensors after fn(tensors dict) edits it."""
    t, meta = st.load(str(d / "model.safetensors"))
    fn(t)
    st.save(str(d / "model.safetensors"), t, metadata=meta)


def edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def raw_header(d):
    raw = (d / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def corrupt_offsets(d, name, offsets):
    h, body = raw_header(d)
    h[name]["data_offsets"] = offsets
    write_header(d / "model.safetensors", h, body)


QKV = "transformer.h.1.attn.c_attn.weight"
BAD = {
    "missing_file": (lambda d: os.remove(d / "model.safetensors"), ["model.safetensors", "missing"]),
    "missing_dir": (lambda d: shutil.rmtree(d), ["config.json"]),
    "truncated_5_bytes": (lambda d: (d / "model.safetensors").write_bytes(b"\x10\0\0\0\0"),
                          ["model.safetensors", "5 bytes", "too short"]),
    "truncated_data": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
                       ["model.safetensors", "transformer.", "outside the data section"]),
    "header_past_eof": (lambda d: write_header(d / "model.safetensors", b"{}", hlen=10 ** 6),
                        ["model.safetensors", "header length 1000000", "past the end"]),
    "malformed_json": (lambda d: write_header(d / "model.safetensors", b'{"a": {"dtype": '),
                       ["model.safetensors", "malformed header JSON"]),
    # text after the header's object (inside its declared length) was ignored; the padding
    # the format allows (spaces) is still read
    "header_trailing_text": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                 json.dumps(h).encode() + b"garbage!", body))(*raw_header(d))),
                             ["model.safetensors", "malformed header: text after its JSON object at byte"]),
    "header_not_object": (lambda d: write_header(d / "model.safetensors", b'[1, 2]'),
                          ["model.safetensors", "not an object"]),
    "unknown_dtype": (lambda d: write_header(d / "model.safetensors",
                                             {"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      ["model.safetensors", "'x'", "unknown dtype 'Q4'"]),
    "duplicate_name": (lambda d: write_header(d / "model.safetensors",
                                              b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                              b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8),
                       ["model.safetensors", "'x' appears twice"]),
    "offsets_mismatch_shape": (lambda d: corrupt_offsets(d, QKV, [0, 12]),
                               ["model.safetensors", QKV, "12 bytes", "needs 12288"]),
    "offsets_outside": (lambda d: corrupt_offsets(d, QKV, [10 ** 9, 10 ** 9 + 12288]),
                        ["model.safetensors", QKV, "outside the data section"]),
    "overlap": (lambda d: corrupt_offsets(d, QKV, [0, 12288]), ["model.safetensors", "overlaps"]),
    # the format's own rules (the safetensors crate's read_metadata / Metadata::validate, which
    # transformers and PEFT load through): sorted by offset, the tensors tile the data section
    # from byte 0 to the end of the file, and shape / data_offsets are unsigned integers
    "bytes_after_last_tensor": (lambda d: (d / "model.safetensors").write_bytes(
                                    (d / "model.safetensors").read_bytes() + b"\0" * 64),
                                ["model.safetensors", "64 bytes after the last tensor '"]),
    "hole_before_first_tensor": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                     {k: v if k == "__metadata__" else dict(v, data_offsets=[o + 64 for o in v["data_offsets"]])
                                      for k, v in h.items()}, b"\xaa" * 64 + body))(*raw_header(d))),
                                 ["model.safetensors", "data_offsets [64, ", "leave bytes [0, 64)"]),
    "hole_between_tensors": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                 {k: v if k == "__metadata__" or v["data_offsets"][0] == 0
                                  else dict(v, data_offsets=[o + 8 for o in v["data_offsets"]]) for k, v in h.items()},
                                 (lambda first: body[:first] + b"\0" * 8 + body[first:])(
                                     next(v["data_offsets"][1] for k, v in h.items()
                                          if k != "__metadata__" and v["data_offsets"][0] == 0))))(*raw_header(d))),
                             ["model.safetensors", "of the data section to no tensor"]),
    "offsets_written_as_floats": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                      {k: v if k == "__metadata__" else dict(v, data_offsets=[float(o) for o in v["data_offsets"]])
                                       for k, v in h.items()}, body))(*raw_header(d))),
                                  ["model.safetensors", "tensor '", "must be written as integers"]),
    "shape_written_as_float": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                   dict(h, **{QKV: dict(h[QKV], shape=[32, 96.0])}), body))(*raw_header(d))),
                               ["model.safetensors", f"tensor '{QKV}'", "must be written as integers"]),
    # the same with the key written with a JSON escape: Python's json and serde_json decode
    # "sh\u0061pe" to shape (the float was accepted when the raw key text was compared)
    "escaped_shape_key_written_as_float": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                               json.dumps(dict(h, **{QKV: dict(h[QKV], shape=[32, 96.0])})).encode()
                                               .replace(b'"shape": [32, 96.0]', b'"sh\\u0061pe": [32, 96.0]'),
                                               body))(*raw_header(d))),
                                           ["model.safetensors", f"tensor '{QKV}'", "must be written as integers"]),
    "escaped_offsets_key_written_as_floats": (lambda d: write_header(d / "model.safetensors", *(lambda h, body: (
                                                  json.dumps({k: v if k == "__metadata__" else
                                                              dict(v, data_offsets=[float(o) for o in v["data_offsets"]])
                                                              for k, v in h.items()}).encode()
                                                  .replace(b'"data_offsets"', b'"data_\\u006fffsets"'),
                                                  body))(*raw_header(d))),
                                              ["model.safetensors", "tensor '", "must be written as integers"]),
    "wrong_dtype": (lambda d: edit_tensors(d, lambda t: t.__setitem__(QKV, t[QKV].astype(np.int32))),
                    ["model.safetensors", QKV, "I32", "not a floating-point"]),
    "wrong_shape": (lambda d: edit_tensors(d, lambda t: t.__setitem__(QKV, t[QKV][:, :64].copy())),
                    ["model.safetensors", QKV, "[32,64]", "[32,96]"]),
    "missing_tensor": (lambda d: edit_tensors(d, lambda t: t.pop("transformer.h.0.ln_2.bias")),
                       ["model.safetensors", "missing tensor 'transformer.h.0.ln_2.bias'"]),
    "unexpected_tensor": (lambda d: edit_tensors(d, lambda t: t.__setitem__("score.weight", np.zeros(3, np.float32))),
                          ["model.safetensors", "unexpected tensor 'score.weight'"]),
    "untied_head": (lambda d: edit_tensors(d, lambda t: t.__setitem__("lm_head.weight", t["transformer.wte.weight"] + 1)),
                    ["model.safetensors", "lm_head.weight", "differs from the token embedding"]),
    "n_embd_disagrees": (lambda d: edit_config(d, lambda c: c.update(n_embd=48, n_head=4)),
                         ["model.safetensors", "transformer.wte.weight", "[97,32]", "[97,48]", "config.json"]),
    "n_layer_disagrees": (lambda d: edit_config(d, lambda c: c.update(n_layer=3)),
                          ["missing tensor 'transformer.h.2.ln_1.weight'"]),
    "huge_config": (lambda d: edit_config(d, lambda c: c.update(n_embd=65536, n_head=1, vocab_size=2 ** 24)),
                    ["config.json", "parameters is more than fdpo supports"]),
    "config_larger_than_file": (lambda d: edit_config(d, lambda c: c.update(n_embd=4096, n_head=1, vocab_size=50000)),
                                ["config.json", "implies", "holds only 29600 values"]),
    "unknown_model_type": (lambda d: edit_config(d, lambda c: c.update(model_type="mistral")),
                           ["config.json", "model_type 'mistral'", "not supported"]),
    "missing_model_type": (lambda d: edit_config(d, lambda c: c.pop("model_type")),
                           ["config.json", "'model_type'"]),
    "missing_key": (lambda d: edit_config(d, lambda c: c.pop("n_head")), ["config.json", "missing key 'n_head'"]),
    # transformers' GPT2Config.attribute_map reads these names as n_head / n_layer / n_embd /
    # n_positions and sets them after the GPT-2 keys: a disagreeing alias is the value there
    # (4 heads, a layer more), while fdpo read the GPT-2 key alone; refused, both named
    "heads_alias_disagrees": (lambda d: edit_config(d, lambda c: c.update(num_attention_heads=2)),
                              ["config.json", "n_head 4 and num_attention_heads 2 disagree", "builds 2"]),
    "layers_alias_disagrees": (lambda d: edit_config(d, lambda c: c.update(num_hidden_layers=3)),
                               ["config.json", "n_layer 2 and num_hidden_layers 3 disagree"]),
    "width_alias_disagrees": (lambda d: edit_config(d, lambda c: c.update(hidden_size=16)),
                              ["config.json", "n_embd 32 and hidden_size 16 disagree"]),
    "positions_alias_disagrees": (lambda d: edit_config(d, lambda c: c.update(max_position_embeddings=64)),
                                  ["config.json", "n_positions 32 and max_position_embeddings 64 disagree"]),
    "missing_positions": (lambda d: edit_config(d, lambda c: (c.pop("n_positions"), c.pop("n_ctx"))),
                          ["config.json", "'n_positions'", "'n_ctx'"]),
    "bad_activation": (lambda d: edit_config(d, lambda c: c.update(activation_function="relu")),
                       ["config.json", "activation_function 'relu'"]),
    "other_n_inner": (lambda d: edit_config(d, lambda c: c.update(n_inner=3 * c["n_embd"])),
                      ["config.json", "n_inner must be null or 4 * n_embd"]),
    "heads_do_not_divide": (lambda d: edit_config(d, lambda c: c.update(n_head=5)),
                            ["config.json", "n_head 5", "divide n_embd 32"]),
    "key_not_integer": (lambda d: edit_config(d, lambda c: c.update(vocab_size="97")),
                        ["config.json", "'vocab_size'", "positive integer"]),
    "config_not_json": (lambda d: (d / "config.json").write_text("{nope"), ["config.json:1: invalid JSON near column"]),
    # NaN/Inf weights loaded silently before (generate printed empty completions, dpo blamed --lr)
    "non_finite_weights": (lambda d: edit_tensors(d, lambda t: t[QKV].reshape(-1).__setitem__(
                               [3, 50, 700], [np.nan, np.inf, -np.inf])),
                           ["model.safetensors", f"tensor '{QKV}' has 3 non-finite values"]),
    "non_finite_f16": (lambda d: edit_tensors(d, lambda t: t.__setitem__(
                           "transformer.h.0.ln_1.bias", np.full(32, np.inf, np.float16))),
                       ["model.safetensors", "tensor 'transformer.h.0.ln_1.bias' has 32 non-finite values"]),
    # a byte-level tokenizer (257 tokens) beside a vocab_size 97 model passed info, then failed inside dpo
    "tokenizer_larger_than_vocab": (lambda d: (d / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte"})),
                                    ["the tokenizer has 257 tokens but config.json vocab_size is 97"]),
    # a FIFO blocked fdpo info forever; a directory is refused as well
    "fifo_weights": (lambda d: (os.remove(d / "model.safetensors"), os.mkfifo(d / "model.safetensors")),
                     ["model.safetensors", "not a regular file"]),
    "fifo_config": (lambda d: (os.remove(d / "config.json"), os.mkfifo(d / "config.json")),
                    ["config.json", "not a regular file (a FIFO)"]),
    "directory_weights": (lambda d: (os.remove(d / "model.safetensors"), os.mkdir(d / "model.safetensors")),
                          ["model.safetensors", "not a regular file"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_refused(tmp_path, case):
    d = tmp_path / "ck"
    GPT2(**CFG).save_hf(str(d))
    edit, words = BAD[case]
    edit(d)
    r = run(FDPO, "info", d, timeout=30)  # a FIFO must be refused, not waited on
    assert r.returncode == 1, r.stderr  # an error, not a crash or a sanitizer exit
    assert r.stderr.startswith("fdpo info: "), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr


# ---- header strings and fields that cJSON reads differently from serde and Python's json ----

ST_FIELDS = ("dtype", "shape", "data_offsets")   # the safetensors crate's TensorInfo fields


def st_header_fault(text):
    """The reference: Python's json, every object read as its list of pairs. The first header
    member (name, what) whose name or any string in it holds a NUL ("nul"), whose entry writes
    one of the format's fields twice (serde's derive refuses a duplicate field; an unknown key
    is ignored, twice or not), or whose __metadata__ writes a key twice (field name / "key");
    a name written twice at the top level ("twice"); None when the header is clean on these counts."""
    pairs = json.loads(text, object_pairs_hook=lambda p: p)

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            for x in v:
                yield from (strings(x) if not isinstance(x, tuple) else (*strings(x[0]), *strings(x[1])))
    seen = set()
    for name, entry in pairs:
        if name in seen:
            return name, "twice"
        seen.add(name)
        if "\0" in name or any("\0" in x for x in strings(entry)):
            return name, "nul"
        keys = [k for k, _ in entry]
        if name == "__metadata__":
            if len(set(keys)) < len(keys):
                return name, "key"
            continue
        for f in ST_FIELDS:
            if keys.count(f) > 1:
                return name, f
    return None


def st_edit(d, fn):
    """Rewrite model.safetensors's header text with fn(text) (bytes), the data kept."""
    h, body = raw_header(d)
    text = json.dumps(h).encode()
    assert fn(text) != text
    write_header(d / "model.safetensors", fn(text), body)


BIAS0 = "transformer.h.0.attn.c_attn.bias"
QKV_SHAPE = b'"shape": [32, 96]'
ST_TEXT_EDITS = {
    # the hunt of wave 46: fdpo used the first shape, Python's json the last; swapped, fdpo
    # refused the file for the shape while Python loaded it
    "shape_twice": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b', "shape": [96, 32]'),
    "shape_twice_swapped": lambda t: t.replace(QKV_SHAPE, b'"shape": [96, 32], ' + QKV_SHAPE),
    "shape_twice_alike": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b", " + QKV_SHAPE),
    "shape_twice_one_escaped": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b', "sh\\u0061pe": [32, 96]'),
    "dtype_twice": lambda t: t.replace(b'"dtype": "F32", "shape": [32, 96]', b'"dtype": "F32", "dtype": "F32", "shape": [32, 96]'),
    "data_offsets_twice": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b', "data_offsets": [0, 0]'),
    # cJSON cut a string at \u0000: the bias was loaded, where transformers would find it missing
    "nul_in_tensor_name": lambda t: t.replace(f'"{BIAS0}"'.encode(), f'"{BIAS0}\\u0000junk"'.encode()),
    "nul_in_field_key": lambda t: t.replace(QKV_SHAPE, b'"shape\\u0000x": [32, 96]'),
    "nul_in_dtype": lambda t: t.replace(b'"dtype": "F32", "shape": [32, 96]', b'"dtype": "F32\\u0000", "shape": [32, 96]'),
    "nul_in_metadata": lambda t: t.replace(b'"format": "pt"', b'"format": "pt\\u0000x"'),
    "metadata_key_twice": lambda t: t.replace(b'"format": "pt"', b'"format": "pt", "format": "tf"'),
    "metadata_twice": lambda t: t.replace(b'"__metadata__": {', b'"__metadata__": {}, "__metadata__": {'),
    "tensor_name_twice_one_escaped": lambda t: t.replace(
        b"{", b'{"transformer.wt\\u0065.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ', 1),
    # clean by the reference: loaded as before
    "escaped_backslash_u0000_in_unknown_key": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b', "x\\\\u0000": 1'),
    "unknown_key_twice": lambda t: t.replace(QKV_SHAPE, QKV_SHAPE + b', "note": 1, "note": 2'),
}


@pytest.mark.parametrize("case", list(ST_TEXT_EDITS))
def test_header_nul_and_duplicate_fields_follow_python_json(tmp_path, case):
    """A header member whose strings hold a NUL, or whose entry writes a field twice, is refused
    naming the file and the member (as the header writes it); a header that Python's json and
    the format's field rule find clean loads. Which member is at fault comes from Python's json."""
    d = tmp_path / "ck"
    GPT2(**CFG).save_hf(str(d))
    st_edit(d, ST_TEXT_EDITS[case])
    text = (lambda raw: raw[8:8 + struct.unpack("<Q", raw[:8])[0]])((d / "model.safetensors").read_bytes())
    fault = st_header_fault(text)
    r = run(FDPO, "info", d)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
    if fault is None:
        assert case.startswith(("escaped_backslash", "unknown_key")), case
        assert r.returncode == 0, r.stderr
        return
    name, what = fault
    assert r.returncode == 1, (fault, r.stdout, r.stderr)
    assert r.stderr.startswith(f"fdpo info: {d / 'model.safetensors'}: "), r.stderr
    shown = json.dumps(name)[1:-1]   # \u0000 as the header writes it
    if what == "nul":
        assert (f"tensor '{shown}'" if name != "__metadata__" else "__metadata__:") in r.stderr, r.stderr
        assert "NUL character" in r.stderr, r.stderr
    elif what == "twice":
        assert (f"'{shown}' appears" if name != "__metadata__" else ": __metadata__ appears") + " twice" in r.stderr, r.stderr
    elif what == "key":
        assert "__metadata__ key 'format' appears twice" in r.stderr, r.stderr
    else:
        assert f"tensor '{shown}': its header entry writes \"{what}\" twice" in r.stderr, r.stderr


def test_dpo_checks_tokenizer_before_the_reference_cache(tmp_path):
    """A tokenizer larger than vocab_size used to pass until after the reference log-probs
    were computed and cached; now dpo stops at load, naming both sizes, and caches nothing."""
    ck = tmp_path / "ck"
    GPT2(**CFG).save_hf(str(ck))
    (ck / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte"}))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n")
    cache = tmp_path / "cache"
    r = run(FDPO, "dpo", "--policy", ck, "--data", data, "--out", tmp_path / "out", "--ref-cache-dir", cache,
            "--steps", 1, "--batch-size", 1)
    assert r.returncode == 1, r.stderr
    assert "the tokenizer has 257 tokens but config.json vocab_size is 97" in r.stderr, r.stderr
    assert not cache.exists() or not any(cache.iterdir())


# ---- bytes between the header's tokens: JSON's four whitespace bytes only ----

ST_CONTROL_EDITS = {
    # cJSON skips any byte <= 32 between tokens: a form feed or vertical tab before the ':'
    # hid "shape" from the integer-size scan, and the float shape loaded
    "form_feed_hides_float_shape": lambda t: t.replace(QKV_SHAPE, b'"shape"\x0c: [32, 96.0]'),
    "vertical_tab_hides_float_shape": lambda t: t.replace(QKV_SHAPE, b'"shape"\x0b: [32, 96.0]'),
    "form_feed_before_value": lambda t: t.replace(QKV_SHAPE, b'"shape":\x0c[32, 96]'),
    "unit_separator_after_comma": lambda t: t.replace(QKV_SHAPE, b'"shape": [32,\x1f96]'),
    "raw_control_in_a_tensor_name": lambda t: t.replace(f'"{BIAS0}"'.encode(), f'"{BIAS0}\x01"'.encode()),
    # JSON's own whitespace: loads as before
    "json_whitespace": lambda t: t.replace(QKV_SHAPE, b'"shape" \t\r\n: \n[32,\r 96\t]'),
}


@pytest.mark.parametrize("case", list(ST_CONTROL_EDITS))
def test_header_control_bytes_follow_json(tmp_path, case):
    """A header byte below 0x20 other than tab, LF and CR (between tokens, or raw inside a
    string) is refused naming the file and its byte offset in the header; the reference is
    Python's json (as the safetensors crate's serde_json, it refuses exactly these)."""
    d = tmp_path / "ck"
    GPT2(**CFG).save_hf(str(d))
    st_edit(d, ST_CONTROL_EDITS[case])
    text = (lambda raw: raw[8:8 + struct.unpack("<Q", raw[:8])[0]])((d / "model.safetensors").read_bytes())
    try:
        json.loads(text)
        bad = None
    except json.JSONDecodeError:
        bad = next(i for i, b in enumerate(text) if b < 0x20 and b not in b"\t\r\n")
    r = run(FDPO, "info", d)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
    if bad is None:
        assert case == "json_whitespace"
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"fdpo info: {d / 'model.safetensors'}: "), r.stderr
    assert f"raw control character (0x{text[bad]:02X})" in r.stderr, r.stderr
    assert f"at byte {bad} of the header" in r.stderr, r.stderr


# ---- integer sizes written as floats: json.load gives a float, no torch layer takes one ----

LLAMA_CFG = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=True)
FLOAT_SIZE_CASES = [("gpt2", k, None) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")] + [
    ("gpt2", "num_attention_heads", {"num_attention_heads": 4}),      # GPT2Config's alias, both given
    ("gpt2", "n_inner", {"n_inner": 128}),
    ("gpt2", "n_ctx", {"n_positions": None}),                          # read where n_positions is absent
    ("gpt2", "vocab_size", {"vocab_size": "9.7e1"}),                   # an exponent is a float to Python too
] + [("llama", k, None) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings")] + [
    ("llama", "head_dim", {"head_dim": 8}),
]


def float_size_checkpoint(d, family, key, extra):
    if family == "gpt2":
        GPT2(**CFG).save_hf(str(d))
    else:
        from fdpo_ref.llama import Llama
        Llama(**LLAMA_CFG, seed=1).save_hf(str(d))
    cfg = json.loads((d / "config.json").read_text())
    for k, v in (extra or {}).items():
        if v is None:
            cfg.pop(k)
        elif not isinstance(v, str):
            cfg[k] = v
    text = json.dumps(cfg)
    literal = (extra or {}).get(key) if isinstance((extra or {}).get(key), str) else f"{cfg[key]}.0"
    text = text.replace(f'"{key}": {cfg[key]}', f'"{key}": {literal}')
    (d / "config.json").write_text(text)
    return text, literal


@pytest.mark.parametrize("family,key,extra", FLOAT_SIZE_CASES, ids=[f"{f}-{k}-{i}" for i, (f, k, _) in enumerate(FLOAT_SIZE_CASES)])
def test_config_integer_size_written_as_float_is_refused(tmp_path, family, key, extra):
    """A layer size written 2.0 (or 9.7e1) is a float to Python's json, and torch cannot build a
    layer of a float size (transformers passes these to nn.Linear / nn.Embedding as read): refused
    naming config.json, its line and the key. The same value written as an integer loads."""
    d = tmp_path / "ck"
    text, literal = float_size_checkpoint(d, family, key, extra)
    value = json.loads(text)[key]
    assert isinstance(value, float) and value == int(value)        # the reference: Python's json
    with pytest.raises(TypeError):
        torch.nn.Linear(4, value)
    r = run(FDPO, "info", d)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{d / 'config.json'}:1: key '{key}' must be written as an integer, not {literal}" in r.stderr, r.stderr
    assert "Sanitizer" not in r.stderr
    (d / "config.json").write_text(text.replace(f'"{key}": {literal}', f'"{key}": {int(value)}'))
    r = run(FDPO, "info", d)
    assert r.returncode == 0, r.stderr


def test_config_float_fields_and_unread_float_sizes_still_load(tmp_path):
    """Fields that are floats in transformers' configs stay accepted (layer_norm_epsilon 1e-05,
    rope_theta 10000.0, rms_norm_eps 1e-06, llama3 factors 8.0), and so is a float n_ctx beside
    n_positions (fdpo and GPT2Config read n_positions) and num_labels 1.0 beside id2label (the
    map decides; transformers compares len(id2label) == num_labels)."""
    d = tmp_path / "g"
    GPT2(**CFG).save_hf(str(d))
    text = (d / "config.json").read_text().replace('"n_ctx": 32', '"n_ctx": 32.0')
    assert '"n_ctx": 32.0' in text and '"layer_norm_epsilon": 1e-05' in text
    (d / "config.json").write_text(text)
    r = run(FDPO, "info", d)
    assert r.returncode == 0 and "n_positions: 32" in r.stdout, r.stderr
    from fdpo_ref.llama import Llama
    cfg = dict(LLAMA_CFG, rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                 high_freq_factor=4.0, original_max_position_embeddings=16))
    Llama(**cfg, seed=1).save_hf(str(tmp_path / "l"))
    text = (tmp_path / "l" / "config.json").read_text()
    assert '"rope_theta": 500000.0' in text and '"factor": 8.0' in text and '"rms_norm_eps": 1e-06' in text
    r = run(FDPO, "info", tmp_path / "l")
    assert r.returncode == 0, r.stderr
