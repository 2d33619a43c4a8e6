"""fdpo's GPT-2 forward/backward over packed batches against the plain-PyTorch reference
(tests/py/fdpo_ref/gpt2.py) run in float64, one sequence at a time.

Tolerances: logits and token log-probs max|diff| / max|ref| <= 1e-5; every parameter
gradient max|diff| / max|ref| <= 1e-4 (fdpo computes in float32, the reference in float64)."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))

CONFIGS = {
    "small": dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    "odd": dict(vocab_size=257, n_positions=64, n_embd=48, n_layer=3, n_head=3),
}


def harness(*args, check=True):
    r = subprocess.run([HARNESS, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def rel_err(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def make_model(tmp_path, cfg, seed=0):
    model = GPT2(**cfg, seed=seed)
    d = tmp_path / "model"
    model.save_hf(str(d))
    return model, d


def run_fdpo(tmp_path, model_dir, seqs, d_token_logp=None, extra=()):
    batch = {"sequences": seqs}
    if d_token_logp is not None:
        batch["d_token_logp"] = [float(x) for x in d_token_logp]
    bp, out = tmp_path / "batch.json", tmp_path / "out.safetensors"
    bp.write_text(json.dumps(batch))
    harness("model-fb", "--model", model_dir, "--batch", bp, "--out", out, *extra)
    t, _ = st.load(str(out))
    return t


class Reference:
    """Per-sequence float64 reference: logits, token log-probs, and gradients of
    sum_t d_t * token_logp_t accumulated over the runs."""

    def __init__(self, model):
        self.model = model.double()
        self.model.zero_grad()

    def run(self, tokens, targets, pos=None, mask=None, d=None):
        tokens = torch.tensor(tokens)
        pos = None if pos is None else torch.tensor(pos)
        logits = self.model.forward(tokens, pos, mask)
        logp = torch.log_softmax(logits, dim=-1)
        tgt = torch.tensor(targets)
        valid = tgt >= 0
        tlp = torch.where(valid, logp.gather(1, tgt.clamp(min=0)[:, None])[:, 0], torch.zeros((), dtype=logp.dtype))
        if d is not None:
            (tlp * torch.tensor(d, dtype=torch.float64) * valid).sum().backward()
        return logits.detach().numpy(), tlp.detach().numpy()

    def grads(self):
        return {k: v.grad.numpy() for k, v in self.model.named().items()}


def check_grads(out, ref):
    for name, g in ref.grads().items():
        assert rel_err(out[name], g) <= 1e-4, name


def random_batch(rng, V, T_max, lengths, pos_offset=0, all_targets=False):
    seqs = []
    for b, T in enumerate(lengths):
        toks = rng.integers(0, V, size=T + 1)
        prompt = min(T - 1, 1 + b)  # prompt tokens carry weight 0 (a loss mask)
        targets = list(map(int, toks[1:]))
        if b % 2 == 0 and not all_targets:
            targets[-1] = -1  # some sequences end without a target
        weights = [0.0 if t < prompt and not all_targets else float(rng.uniform(0.5, 1.5)) for t in range(T)]
        seq = {"tokens": list(map(int, toks[:T])), "targets": targets, "weights": weights}
        if pos_offset:
            seq["pos"] = [pos_offset + b + t for t in range(T)]
        seqs.append(seq)
    return seqs


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("upstream", ["random", "sft", "every_token"])
def test_packed_batch_matches_reference(tmp_path, name, upstream):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(1 if name == "small" else 2)
    model, mdir = make_model(tmp_path, cfg, seed=3)
    T = cfg["n_positions"]
    lengths = [7, T - 6, 1, 13] if name == "small" else [T - 5, 9, 22]
    # every_token: every token has a target and a non-zero gradient (no row is skipped)
    seqs = random_batch(rng, cfg["vocab_size"], T, lengths, pos_offset=2, all_targets=upstream == "every_token")
    N = sum(lengths)
    weights = np.concatenate([s["weights"] for s in seqs])
    targets = np.concatenate([s["targets"] for s in seqs])
    if upstream in ("random", "every_token"):
        d = rng.normal(size=N)
    else:  # SFT: d = -w_t / sum of weights over tokens with a target
        d = -weights * (targets >= 0) / np.sum(weights * (targets >= 0))
    out = run_fdpo(tmp_path, mdir, seqs, d)
    ref = Reference(model)
    off = 0
    ref_logits, ref_tlp, ref_slp = [], [], []
    for s in seqs:
        n = len(s["tokens"])
        lg, tlp = ref.run(s["tokens"], s["targets"], s.get("pos"), None, d[off:off + n])
        ref_logits.append(lg)
        ref_tlp.append(tlp)
        ref_slp.append(np.sum(tlp * np.asarray(s["weights"])))
        off += n
    assert rel_err(out["logits"], np.concatenate(ref_logits)) <= 1e-5
    assert rel_err(out["token_logp"], np.concatenate(ref_tlp)) <= 1e-5
    assert rel_err(out["seq_logp"], ref_slp) <= 1e-5
    check_grads(out, ref)


def test_shared_prompt_branches_match_separate_sequences(tmp_path):
    """[prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected] with branch tags 0/1/2 and
    positions restarting for each branch equals the two sequences prompt+chosen and
    prompt+rejected run separately (the last prompt token is duplicated so that each branch
    predicts its own first completion token)."""
    cfg = CONFIGS["small"]
    rng = np.random.default_rng(5)
    model, mdir = make_model(tmp_path, cfg, seed=4)
    V = cfg["vocab_size"]
    P, Cn, Rn = 6, 9, 5
    prompt = list(map(int, rng.integers(0, V, P)))
    chosen = list(map(int, rng.integers(0, V, Cn)))
    rejected = list(map(int, rng.integers(0, V, Rn)))
    shared = prompt[:-1]
    br_c = [prompt[-1]] + chosen[:-1]  # inputs of the chosen branch
    br_r = [prompt[-1]] + rejected[:-1]
    tokens = shared + br_c + br_r
    # prompt tokens predict the next prompt token (random upstream gradient on them too)
    targets = prompt[1:] + chosen + rejected
    pos = list(range(P - 1)) + list(range(P - 1, P - 1 + Cn)) + list(range(P - 1, P - 1 + Rn))
    branch = [0] * (P - 1) + [1] * Cn + [2] * Rn
    d = rng.normal(size=len(tokens))
    # a second, ordinary sequence in the same packed batch
    other = random_batch(rng, V, cfg["n_positions"], [11])[0]
    d_other = rng.normal(size=11)
    seqs = [{"tokens": tokens, "targets": targets, "pos": pos, "branch": branch}, other]
    out = run_fdpo(tmp_path, mdir, seqs, np.concatenate([d, d_other]))

    ref = Reference(model)
    # sequence 1: prompt + chosen; the shared prompt's gradient is counted here only
    seq_c = prompt + chosen[:-1]
    d_c = np.concatenate([d[:P - 1], d[P - 1:P - 1 + Cn]])
    lg_c, tlp_c = ref.run(seq_c, prompt[1:] + chosen, d=d_c)
    seq_r = prompt + rejected[:-1]
    d_r = np.concatenate([np.zeros(P - 1), d[P - 1 + Cn:]])
    lg_r, tlp_r = ref.run(seq_r, prompt[1:] + rejected, d=d_r)
    lg_o, tlp_o = ref.run(other["tokens"], other["targets"], d=d_other)
    ref_logits = np.concatenate([lg_c, lg_r[P - 1:], lg_o])
    ref_tlp = np.concatenate([tlp_c, tlp_r[P - 1:], tlp_o])
    assert rel_err(out["logits"], ref_logits) <= 1e-5
    assert rel_err(out["token_logp"], ref_tlp) <= 1e-5
    check_grads(out, ref)
    # seq_logp of the packed sequence: all of its weights are 1 (no weights given)
    assert abs(out["seq_logp"][0] - (tlp_c.sum() + tlp_r[P - 1:].sum())) <= 1e-5 * abs(ref_tlp).max() * len(tokens)


def test_buffers_grow_and_results_are_deterministic(tmp_path):
    """A smaller batch first (buffers then grown) or a larger one first (buffers reused,
    with another attention layout) gives the same numbers as a fresh model, and two runs
    with the same thread count agree bit for bit."""
    cfg = CONFIGS["small"]
    rng = np.random.default_rng(9)
    model, mdir = make_model(tmp_path, cfg, seed=6)
    seqs = random_batch(rng, cfg["vocab_size"], 32, [5, 30, 17])
    d = rng.normal(size=52)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"sequences": random_batch(rng, cfg["vocab_size"], 32, [3, 4])}))
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"sequences": random_batch(rng, cfg["vocab_size"], 32, [32, 31, 2, 32])}))
    a = run_fdpo(tmp_path, mdir, seqs, d, extra=("--threads", 2))
    grown = run_fdpo(tmp_path, mdir, seqs, d, extra=("--threads", 2, "--pre", small))
    reused = run_fdpo(tmp_path, mdir, seqs, d, extra=("--threads", 2, "--pre", big))
    c = run_fdpo(tmp_path, mdir, seqs, d, extra=("--threads", 2))
    for k in a:
        assert np.array_equal(a[k], c[k]), k
        assert rel_err(grown[k], a[k]) <= 1e-6, k
        assert rel_err(reused[k], a[k]) <= 1e-6, k


def test_init_statistics(tmp_path):
    """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), zero biases, LN 1/0."""
    cfg = dict(vocab_size=500, n_positions=64, n_embd=64, n_layer=4, n_head=4)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    harness("model-init", "--config", tmp_path / "cfg" / "config.json", "--seed", 11, "--out", tmp_path / "init")
    t, _ = st.load(str(tmp_path / "init" / "model.safetensors"))
    L = cfg["n_layer"]

    def check_std(arrays, want):
        x = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
        n = x.size
        # sample std of n normals has relative standard error ~ 1/sqrt(2n); allow 5 sigma
        assert abs(x.std() / want - 1) < 5 / np.sqrt(2 * n), (x.std(), want, n)
        assert abs(x.mean()) < 5 * want / np.sqrt(n)

    check_std([t["transformer.wte.weight"]], 0.02)
    check_std([t["transformer.wpe.weight"]], 0.02)
    for w in ["attn.c_attn.weight", "mlp.c_fc.weight"]:
        check_std([t[f"transformer.h.{i}.{w}"] for i in range(L)], 0.02)
    for w in ["attn.c_proj.weight", "mlp.c_proj.weight"]:
        check_std([t[f"transformer.h.{i}.{w}"] for i in range(L)], 0.02 / np.sqrt(2 * L))
    for name, a in t.items():
        if name.endswith("bias"):
            assert np.all(a == 0), name
        elif ".ln_" in name and name.endswith("weight"):
            assert np.all(a == 1), name
    # same seed -> identical file; another seed -> different weights
    harness("model-init", "--config", tmp_path / "cfg" / "config.json", "--seed", 11, "--out", tmp_path / "again")
    harness("model-init", "--config", tmp_path / "cfg" / "config.json", "--seed", 12, "--out", tmp_path / "other")
    same = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert same == (tmp_path / "init" / "model.safetensors").read_bytes()
    o, _ = st.load(str(tmp_path / "other" / "model.safetensors"))
    assert not np.array_equal(o["transformer.wte.weight"], t["transformer.wte.weight"])


def test_bad_batch_is_rejected(tmp_path):
    cfg = CONFIGS["small"]
    _, mdir = make_model(tmp_path, cfg)
    cases = [
        ({"tokens": [1, 200], "targets": [2, 3]}, "id 200"),
        ({"tokens": [1, 2], "targets": [2, 97]}, "target 97"),
        ({"tokens": [1, 2], "targets": [2, 3], "pos": [0, 32]}, "position 32"),
        ({"tokens": list(range(33)), "targets": list(range(33))}, "n_positions 32"),
    ]
    for seq, msg in cases:
        bp = tmp_path / "bad.json"
        bp.write_text(json.dumps({"sequences": [seq]}))
        r = harness("model-fb", "--model", mdir, "--batch", bp, "--out", tmp_path / "o.safetensors", check=False)
        assert r.returncode == 1, r.stderr  # an error, not a crash or a sanitizer exit
        assert msg in r.stderr, r.stderr
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr


@pytest.mark.parametrize("name", list(CONFIGS))
def test_skip_unweighted_lm_head_rows(tmp_path, name):
    """skip_unweighted: the LM head runs only over tokens with a target and a non-zero
    weight. Their token log-probs and every gradient (SFT upstream, zero on the skipped
    prompt tokens) equal the full computation's (same fp32 kernels on fewer rows: <= 1e-6)
    and PyTorch's (the parity tolerances); skipped tokens get token_logp 0 and zero logits;
    a non-zero upstream gradient on a skipped token is an error naming d_token_logp."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(5)
    model, mdir = make_model(tmp_path, cfg, seed=3)
    T = cfg["n_positions"]
    lengths = [9, T - 3, 2, 17] if name == "small" else [T - 5, 9, 22]
    seqs = random_batch(rng, cfg["vocab_size"], T, lengths)
    for s in seqs:  # a longer prompt (weight 0) per sequence, as in DPO/SFT
        s["weights"] = [0.0 if t < len(s["tokens"]) // 2 else w for t, w in enumerate(s["weights"])]
    weights = np.concatenate([s["weights"] for s in seqs])
    targets = np.concatenate([s["targets"] for s in seqs])
    used = (weights != 0) & (targets >= 0)
    assert 0 < used.sum() < len(used)
    d = np.where(used, rng.normal(size=len(used)), 0.0)
    full = run_fdpo(tmp_path, mdir, seqs, d)
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "skip_unweighted": True}
    bp, out = tmp_path / "skip.json", tmp_path / "skip.safetensors"
    bp.write_text(json.dumps(batch))
    harness("model-fb", "--model", mdir, "--batch", bp, "--out", out)
    skip, _ = st.load(str(out))
    assert rel_err(skip["token_logp"][used], full["token_logp"][used]) <= 1e-6
    assert np.all(skip["token_logp"][~used] == 0) and np.all(skip["logits"][~used] == 0)
    assert rel_err(skip["logits"][used], full["logits"][used]) <= 1e-6
    assert rel_err(skip["seq_logp"], full["seq_logp"]) <= 1e-6
    ref = Reference(model)
    off = 0
    for s in seqs:
        n = len(s["tokens"])
        _, tlp = ref.run(s["tokens"], s["targets"], d=d[off:off + n])
        if used[off:off + n].any():
            assert rel_err(skip["token_logp"][off:off + n][used[off:off + n]], tlp[used[off:off + n]]) <= 1e-5
        off += n
    for k, g in ref.grads().items():
        assert rel_err(skip[k], full[k]) <= 1e-6, k
        assert rel_err(skip[k], g) <= 1e-4, k
    batch["d_token_logp"] = [float(x) for x in np.where(used, d, 1.0)]
    bp.write_text(json.dumps(batch))
    r = harness("model-fb", "--model", mdir, "--batch", bp, "--out", out, check=False)
    assert r.returncode != 0 and "d_token_logp" in r.stderr and "skipped" in r.stderr


def run_fb_env(tmp_path, mdir, batch, tag, env=None, extra=()):
    bp, out = tmp_path / f"{tag}.json", tmp_path / f"{tag}.safetensors"
    bp.write_text(json.dumps(batch))
    r = subprocess.run([HARNESS, "model-fb", "--model", str(mdir), "--batch", str(bp), "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    t, _ = st.load(str(out))
    return t


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("chunk", ["1", "7", "64", "7-recompute", "7-zero-d", "default", "default-zero-d"])
def test_fused_lm_head_matches_materialised_and_pytorch(tmp_path, name, skip, chunk):
    """fused_head: LM head + log-softmax + gather swept over the vocabulary in chunks
    (online log-sum-exp; backward recomputes each chunk's logits and accumulates d wte and
    d ln_f chunk by chunk), never holding [N, V]. Chunk sizes 1, 7 and 64 put boundaries
    inside V = 97 / 257 (and the target in every position of a chunk); "default" is one
    chunk. Against the materialised path: token log-probs 1e-6 and gradients 1e-5 (the
    same fp32 products, only d ln_f sums its chunks in another order); against float64
    PyTorch: the parity tolerances (1e-5 log-probs and logit row sums, 1e-4 gradients).
    Rows without a target (and with skip, rows of weight 0) get token_logp 0. With one chunk
    the backward reuses the logits the forward left in its scratch when it has a gradient on
    every row the forward computed ("default"); "default-zero-d" puts d = 0 on every third
    such row, so the backward's rows differ and it must recompute (stale logits would move
    the gradients far outside the tolerances). A trained model's fused head keeps all its
    chunks' logits for the backward when they fit FDPO_LMHEAD_KEEP_MAX_BYTES (every case here
    fits); "7-recompute" sets that budget to 0, so every chunk is recomputed, and "7-zero-d"
    makes the kept chunks stale for a backward over fewer rows. The "-zero-d" cases run the
    whole last block (FDPO_HEAD_ROWS_ONLY=0): with the last block on the head's rows only
    the backward takes every row of the forward, d = 0 included, so its rows never differ
    (test_last_block_runs_on_the_head_rows_only)."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(11)
    model, mdir = make_model(tmp_path, cfg, seed=4)
    T = cfg["n_positions"]
    lengths = [9, T - 3, 1, 17] if name == "small" else [T - 5, 9, 22]
    seqs = random_batch(rng, cfg["vocab_size"], T, lengths, pos_offset=1)
    weights = np.concatenate([s["weights"] for s in seqs])
    targets = np.concatenate([s["targets"] for s in seqs])
    used = (targets >= 0) & ((weights != 0) if skip else True)
    d = np.where(used, rng.normal(size=len(used)), 0.0)
    if chunk.endswith("-zero-d"):
        d[np.flatnonzero(used)[::3]] = 0.0
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "skip_unweighted": skip}
    env = {} if chunk.startswith("default") else {"FDPO_LMHEAD_CHUNK": chunk.split("-")[0]}
    if chunk == "7-recompute":
        env["FDPO_LMHEAD_KEEP_MAX_BYTES"] = "0"
    if chunk.endswith("-zero-d"):
        env["FDPO_HEAD_ROWS_ONLY"] = "0"
    full = run_fb_env(tmp_path, mdir, {**batch, "fused_head": False}, "full", env)
    fused = run_fb_env(tmp_path, mdir, {**batch, "fused_head": True}, "fused", env)
    assert np.all(fused["logits"] == 0)  # never materialised
    assert np.all(fused["token_logp"][~used] == 0)
    assert rel_err(fused["token_logp"][used], full["token_logp"][used]) <= 1e-6
    assert rel_err(fused["seq_logp"], full["seq_logp"]) <= 1e-6
    assert rel_err(fused["logit_sums"][used], full["logit_sums"][used]) <= 1e-6
    ref = Reference(model)
    off = 0
    for s in seqs:
        n = len(s["tokens"])
        lg, tlp = ref.run(s["tokens"], s["targets"], s.get("pos"), None, d[off:off + n])
        u = used[off:off + n]
        if u.any():
            assert rel_err(fused["token_logp"][off:off + n][u], tlp[u]) <= 1e-5
            assert rel_err(fused["logit_sums"][off:off + n][u], lg.sum(-1)[u]) <= 1e-5
        off += n
    for k, g in ref.grads().items():
        assert rel_err(fused[k], full[k]) <= 1e-5, k
        assert rel_err(fused[k], g) <= 1e-4, k


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("layout", ["sft", "shared_prompt"])
def test_sliced_batch_matches_unsliced_and_pytorch(tmp_path, threads, layout):
    """A fused-head fp32 batch of several sequences runs sliced on >= 2 threads (gpt2.c
    slice_plan: each thread takes whole sequences through the whole forward and backward
    and keeps its own weight gradients, added in thread order at the end). Against float64
    PyTorch at the parity tolerances (1e-5 log-probs, 1e-4 gradients), against the unsliced
    path (FDPO_SLICES=0; only the weight-gradient sums are grouped differently: 1e-5), bit
    for bit the same on a second run and after a larger batch grew the buffers (--pre), and
    not bit-identical to the unsliced path (the sliced path did run). Upstream gradients
    accumulate on top of earlier ones: a --pre batch's gradients are dropped, so the
    accumulation is checked by the sum over the slices' buffers being re-zeroed (the
    second run equals the first)."""
    cfg = CONFIGS["odd"]
    rng = np.random.default_rng(21 + threads)
    model, mdir = make_model(tmp_path, cfg, seed=8)
    V, T = cfg["vocab_size"], cfg["n_positions"]
    lengths = [40, 7, 33, 25, 50, 12, 30, 45]
    seqs = random_batch(rng, V, T, lengths)
    if layout == "shared_prompt":  # DPO's layout in one sequence: [prompt | chosen | rejected]
        P, Cn, Rn = 8, 12, 10
        toks = list(map(int, rng.integers(0, V, P + Cn + Rn)))
        seqs[1] = {"tokens": toks, "targets": list(map(int, rng.integers(0, V, P + Cn + Rn))),
                   "pos": list(range(P)) + list(range(P, P + Cn)) + list(range(P, P + Rn)),
                   "branch": [0] * P + [1] * Cn + [2] * Rn}
    N = sum(len(s["tokens"]) for s in seqs)
    targets = np.concatenate([s["targets"] for s in seqs])
    d = np.where(targets >= 0, rng.normal(size=N), 0.0)
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "fused_head": True}
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"sequences": random_batch(rng, V, T, [64, 64, 60, 64, 50]), "fused_head": True}))
    extra = ("--threads", str(threads))
    sliced = run_fb_env(tmp_path, mdir, batch, "sliced", {"FDPO_SLICES": "1"}, extra)
    again = run_fb_env(tmp_path, mdir, batch, "again", {"FDPO_SLICES": "1"}, extra + ("--pre", str(big)))
    whole = run_fb_env(tmp_path, mdir, batch, "whole", {"FDPO_SLICES": "0"}, extra)
    for k in sliced:
        assert np.array_equal(sliced[k], again[k]), k
    grads = [k for k in sliced if k.startswith("transformer.")]
    assert any(not np.array_equal(sliced[k], whole[k]) for k in grads)
    assert rel_err(sliced["token_logp"], whole["token_logp"]) <= 1e-6
    ref = Reference(model)
    off, ref_tlp = 0, []
    for s in seqs:
        n = len(s["tokens"])
        if "branch" in s:  # the two branches as two sequences; the shared prompt counted once
            br, pos = np.array(s["branch"]), s["pos"]
            c_idx = [i for i in range(n) if br[i] != 2]
            r_idx = [i for i in range(n) if br[i] != 1]
            dc = d[off:off + n][c_idx]
            dr = np.array([d[off + i] if br[i] == 2 else 0.0 for i in r_idx])
            _, tc = ref.run([s["tokens"][i] for i in c_idx], [s["targets"][i] for i in c_idx], [pos[i] for i in c_idx],
                            None, dc)
            _, tr = ref.run([s["tokens"][i] for i in r_idx], [s["targets"][i] for i in r_idx], [pos[i] for i in r_idx],
                            None, dr)
            tlp = np.zeros(n)
            tlp[c_idx] = tc
            tlp[[i for i in r_idx if br[i] == 2]] = tr[-int((br == 2).sum()):]
        else:
            _, tlp = ref.run(s["tokens"], s["targets"], s.get("pos"), None, d[off:off + n])
        ref_tlp.append(tlp)
        off += n
    assert rel_err(sliced["token_logp"], np.concatenate(ref_tlp)) <= 1e-5
    for k, g in ref.grads().items():
        assert rel_err(sliced[k], whole[k]) <= 1e-5, k
        assert rel_err(sliced[k], g) <= 1e-4, k


@pytest.mark.parametrize("case", ["fp32", "sliced", "bf16"])
def test_last_block_runs_on_the_head_rows_only(tmp_path, case):
    """With the fused head the last block runs c_proj, ln_2, the MLP and ln_f on the LM
    head's rows only (gpt2.c, "The last block on the head's rows"): here the completion
    tokens of a DPO-layout sequence and the weighted tokens of SFT-style sequences
    (skip_unweighted). The same log-probs and gradients as the whole block
    (FDPO_HEAD_ROWS_ONLY=0): fp32 within 1e-6 / 1e-5 (only the weight-gradient sums skip
    rows of zeros), bf16 within 1e-5 / 1e-4 (bf16 GEMMs over fewer rows may block their fp32
    sums differently); against PyTorch the skipping path is what
    test_fused_lm_head_matches_materialised_and_pytorch and
    test_sliced_batch_matches_unsliced_and_pytorch check. The hidden states are then not
    available (the other rows' were never computed) and backward_hidden is refused; a batch
    whose every row reaches the head runs the whole block."""
    cfg = CONFIGS["odd"]
    rng = np.random.default_rng(31)
    model, mdir = make_model(tmp_path, cfg, seed=9)
    V, T = cfg["vocab_size"], cfg["n_positions"]
    seqs = random_batch(rng, V, T, [40, 7, 33, 25, 50, 12, 30, 45])
    P, Cn, Rn = 9, 12, 10
    seqs[1] = {"tokens": list(map(int, rng.integers(0, V, P + Cn + Rn))),
               "targets": list(map(int, rng.integers(0, V, P + Cn + Rn))),
               "weights": [0.0] * P + [1.0] * (Cn + Rn),
               "pos": list(range(P)) + list(range(P, P + Cn)) + list(range(P, P + Rn)),
               "branch": [0] * P + [1] * Cn + [2] * Rn}
    weights = np.concatenate([s["weights"] for s in seqs])
    targets = np.concatenate([s["targets"] for s in seqs])
    used = (targets >= 0) & (weights != 0)
    assert 0.3 < used.mean() < 0.98
    d = np.where(used, rng.normal(size=len(used)), 0.0)
    d[np.flatnonzero(used)[::5]] = 0.0  # a head row without a gradient stays a head row
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "skip_unweighted": True, "fused_head": True}
    extra = {"fp32": ("--threads", "1"), "sliced": ("--threads", "2"),
             "bf16": ("--threads", "1", "--precision", "bf16")}[case] + ("--report-hidden", "1")
    rows = run_fb_env(tmp_path, mdir, batch, "rows", {"FDPO_SLICES": "1"}, extra)
    whole = run_fb_env(tmp_path, mdir, batch, "whole", {"FDPO_SLICES": "1", "FDPO_HEAD_ROWS_ONLY": "0"}, extra)
    assert rows["hidden_available"][0] == 0 and whole["hidden_available"][0] == 1
    tol_lp, tol_g = (1e-5, 1e-4) if case == "bf16" else (1e-6, 1e-5)
    assert np.all(rows["token_logp"][~used] == 0)
    assert rel_err(rows["token_logp"], whole["token_logp"]) <= tol_lp
    assert rel_err(rows["seq_logp"], whole["seq_logp"]) <= tol_lp
    grads = [k for k in whole if k.startswith("transformer.")]
    assert len(grads) == 4 + 12 * cfg["n_layer"]
    for k in grads:
        assert rel_err(rows[k], whole[k]) <= tol_g, k
    # backward from the hidden states needs every row's: refused, naming why
    bp = tmp_path / "hidden.json"
    bp.write_text(json.dumps(batch))
    r = subprocess.run([HARNESS, "model-fb", "--model", str(mdir), "--batch", str(bp), "--out", str(tmp_path / "h.st"),
                        "--backward-hidden", "1", *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "backward_hidden" in r.stderr and "head's rows only" in r.stderr, r.stderr
    # every row in the head (pretraining): nothing to skip
    full = {"sequences": random_batch(rng, V, T, [40, 7, 33], all_targets=True), "fused_head": True}
    full["d_token_logp"] = [1.0] * sum(len(s["tokens"]) for s in full["sequences"])
    assert run_fb_env(tmp_path, mdir, full, "full", {}, extra)["hidden_available"][0] == 1


@pytest.mark.parametrize("lengths,sliced", [([64, 64, 64, 64], True),   # 128 | 128 tokens
                                            ([64, 64, 64], False),      # best split 64 | 128: > 20 % over 96
                                            ([30, 30, 30, 30], False),  # 60 tokens per thread: < 64
                                            ([64, 64, 64, 64, 64], True)])
def test_slice_plan_takes_only_balanced_batches(tmp_path, lengths, sliced):
    """On 2 threads a batch is sliced only when each thread gets >= 64 tokens of whole
    sequences within 20 % of an equal share; otherwise it runs unsliced and its results are
    bit for bit those of FDPO_SLICES=0. A sliced run groups the weight-gradient sums per
    thread, so its gradients differ from the unsliced ones in the last bits (and stay within
    the 1e-5 of the sliced test above)."""
    cfg = CONFIGS["odd"]
    rng = np.random.default_rng(len(lengths) + lengths[0])
    _, mdir = make_model(tmp_path, cfg, seed=2)
    seqs = random_batch(rng, cfg["vocab_size"], cfg["n_positions"], lengths, all_targets=True)
    d = rng.normal(size=sum(lengths))
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "fused_head": True}
    on = run_fb_env(tmp_path, mdir, batch, "on", {"FDPO_SLICES": "1"}, ("--threads", "2"))
    off = run_fb_env(tmp_path, mdir, batch, "off", {"FDPO_SLICES": "0"}, ("--threads", "2"))
    same = all(np.array_equal(on[k], off[k]) for k in on)
    assert same != sliced
    for k in on:
        assert rel_err(on[k], off[k]) <= 1e-5, k
