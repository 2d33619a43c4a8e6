"""Streaming (flash-style) attention against the materialised one and against PyTorch.

`fdpo-harness attention-check` runs both kernels of src/model/gpt2_kernels.c on random
q, k, v and upstream gradients over a packed batch: attention_forward/backward (T x T
probability maps) and attention_forward/backward_streaming (only the per-row log-sum-exp
kept, P recomputed in backward; the forward by blocks of 64 query rows against all their
keys, or on the small path by 64 x 64 tiles with an online softmax). The PyTorch reference
is float64 autograd over each sequence with the mask built here from the rule in
include/fdpo/gpt2.h: token i attends j iff j <= i and (branch[j] == 0 or branch[j] ==
branch[i]).

Tolerances: streaming vs materialised and both vs float64 PyTorch, max|diff| / max|ref|
<= 1e-5 for outputs and 1e-4 for gradients (the model parity tolerances; fp32 summation
orders differ, observed <= 3.3e-7 / 4.8e-7 against PyTorch). Lengths cover T = 1, tile
edges (63, 64, 65), several tiles (130) and the model's n_positions (1024 for GPT-2). Head
sizes 16 and 32 run the small path forward and backward (score tiles kept transposed,
register-blocked tile products with vector types, the softmax down columns); the others
(4, 8, 48, 64, 80, 144) run the forward's query blocks and the backward's tile products
through fdpo_sgemm.
"""
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import attention_backward_bf16

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))


def rel_err(got, ref):
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def branch_mask(br):
    """[T, T] True where token i may attend j: j <= i and (branch[j] == 0 or branch[j] == branch[i])."""
    T = len(br)
    bj, bi = torch.tensor(br)[None, :], torch.tensor(br)[:, None]
    return torch.tril(torch.ones(T, T, dtype=torch.bool)) & ((bj == 0) | (bj == bi))


def reference(qkv, dout, branch, off, NH):
    """float64 PyTorch attention per sequence: out [N,C] and d qkv [N,3C]."""
    N, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    x = torch.tensor(qkv, dtype=torch.float64, requires_grad=True)
    outs = []
    for b in range(len(off) - 1):
        s, e = int(off[b]), int(off[b + 1])
        T = e - s
        q, k, v = x[s:e].split(C, dim=-1)
        q, k, v = (t.reshape(T, NH, hs).transpose(0, 1) for t in (q, k, v))
        mask = branch_mask(branch[s:e])
        att = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~mask, float("-inf")), dim=-1)
        outs.append((att @ v).transpose(0, 1).reshape(T, C))
    out = torch.cat(outs)
    (out * torch.tensor(dout, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("lengths,heads,head_size,branches", [
    ("1", 2, 8, 0),
    ("1,1,1", 1, 4, 0),
    ("5,63,64,65,130", 3, 16, 0),
    ("5,63,64,65,130", 3, 16, 1),
    ("1024", 2, 8, 0),
    ("300,1024", 1, 8, 1),
    # head sizes 16 and 32 take the small-tile products (tile_product)
    ("5,63,64,65,130", 2, 32, 0),
    ("5,63,64,65,130", 2, 32, 1),
    ("1,17,100", 1, 48, 0),
    ("200", 2, 64, 1),
    ("70", 1, 80, 0),
    ("33,70", 1, 144, 1),
    # thirds of 600 and 700: whole 64-token tiles of branch 2 against whole tiles of branch 1,
    # which the streaming kernels skip (every score masked; the query blocks' runs of key
    # tiles leave them out); small forward and backward (32), query-block forward with the
    # GEMM tile backward (64 and 8)
    ("600,700", 2, 32, 1),
    ("600", 2, 64, 1),
    ("700", 1, 8, 1),
])
def test_streaming_attention_matches_materialised_and_pytorch(tmp_path, lengths, heads, head_size, branches):
    out_path = tmp_path / "a.safetensors"
    r = subprocess.run([HARNESS, "attention-check", "--lengths", lengths, "--heads", str(heads), "--head-size",
                        str(head_size), "--seed", "3", "--branches", str(branches), "--out", out_path],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t, _ = st.load(str(out_path))
    off = t["seq_offset"].astype(np.int64)
    ref_out, ref_d = reference(t["qkv"], t["dout"], t["branch"], off, heads)
    assert rel_err(t["out_streaming"], t["out_materialised"].astype(np.float64)) <= 1e-5
    assert rel_err(t["dqkv_streaming"], t["dqkv_materialised"].astype(np.float64)) <= 1e-4
    for impl in ("streaming", "materialised"):
        assert rel_err(t[f"out_{impl}"], ref_out) <= 1e-5, impl
        assert rel_err(t[f"dqkv_{impl}"], ref_d) <= 1e-4, impl
    if branches:  # the branch rule changed something: plain causal attention differs
        plain_out, _ = reference(t["qkv"], t["dout"], np.zeros_like(t["branch"]), off, heads)
        assert rel_err(plain_out, ref_out) > 1e-2


def reference_backward_bf16(qkv, dout, branch, off, NH):
    """The bf16 streaming backward's arithmetic in float64 per sequence
    (fdpo_ref.gpt2.attention_backward_bf16, lse and out of the exact forward). Returns
    d qkv [N, 3C]."""
    N, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    scale = 1.0 / math.sqrt(hs)
    x = torch.tensor(qkv, dtype=torch.float64)
    dy_all = torch.tensor(dout, dtype=torch.float64)
    d = torch.zeros(N, C3, dtype=torch.float64)
    for b in range(len(off) - 1):
        s, e = int(off[b]), int(off[b + 1])
        T = e - s
        q, k, v = (t.reshape(T, NH, hs).transpose(0, 1) for t in x[s:e].split(C, dim=-1))
        dy = dy_all[s:e].reshape(T, NH, hs).transpose(0, 1)
        mask = branch_mask(branch[s:e])
        exact = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(exact, dim=-1, keepdim=True)
        out = torch.softmax(exact, dim=-1) @ v
        grads = attention_backward_bf16(q, k, v, dy, mask, scale, lse, out)
        for j, g in enumerate(grads):
            d[s:e, j * C:(j + 1) * C] = g.transpose(0, 1).reshape(T, C)
    return d.numpy()


@pytest.mark.parametrize("lengths,heads,head_size,branches", [
    ("1", 2, 8, 0),
    ("5,63,64,65,130", 3, 16, 1),
    ("200", 2, 64, 1),
    ("600", 2, 64, 1),
    ("300,1024", 1, 32, 1),
    ("33,70", 1, 144, 0),
])
@pytest.mark.parametrize("route", ["dpbf16", "dpbf16-blocks", "fp32"])
def test_bf16_streaming_backward_matches_its_float64_emulation(tmp_path, lengths, heads, head_size, branches, route):
    """--precision bf16 on a CPU with fast vdpbf16ps: the streaming backward's products (by
    query blocks) take bf16 operands (fdpo_attention_bf16). Against the float64 emulation of
    that arithmetic (reference_backward_bf16): max|diff| / max|ref| <= 2e-4 (fp32
    accumulation, and elements whose bf16 rounding of P or dS flips on a last-bit difference
    of the fp32 scores; observed 4e-11 .. 5.6e-5 over these cases, 1.0e-4 with wave 14's
    forward). The exact fp32 gradient is 3.5e-3 .. 7.7e-3 away
    (bf16 inputs keep 8 bits), asserted > 10x the tolerance, so the test tells the two
    arithmetics apart: the fp32 kernel fails it, and so would one that rounded nothing.
    Both routes of the products, forced (FDPO_BF16_GEMM): vdpbf16ps on uint16 operands (GPT-2's
    register-tiled kernel, and with FDPO_ATT_DP=0 the query blocks' oneDNN products that Llama
    uses), and fp32 FMA on the bf16 values held in fp32 (CPUs whose vdpbf16ps is slow or
    absent)."""
    if route.startswith("dpbf16") and "avx512_bf16" not in open("/proc/cpuinfo").read():
        pytest.skip("no AVX512-BF16: the vdpbf16ps route does not exist here")
    out_path = tmp_path / "a.safetensors"
    env = dict(os.environ, FDPO_BF16_GEMM=route.split("-")[0], FDPO_ATT_DP="0" if "blocks" in route else "1")
    r = subprocess.run([HARNESS, "attention-check", "--lengths", lengths, "--heads", str(heads), "--head-size",
                        str(head_size), "--seed", "3", "--branches", str(branches), "--bf16", "1", "--out", out_path],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    t, _ = st.load(str(out_path))
    off = t["seq_offset"].astype(np.int64)
    emulated = reference_backward_bf16(t["qkv"], t["dout"], t["branch"], off, heads)
    _, exact = reference(t["qkv"], t["dout"], t["branch"], off, heads)
    got = t["dqkv_streaming"]
    err = rel_err(got, emulated)
    assert err <= 2e-4, err
    assert rel_err(got, exact) > 10 * 2e-4, (rel_err(got, exact), err)
