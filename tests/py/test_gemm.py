"""fdpo's GEMM entry points against numpy float64: fdpo_sgemm (oneDNN) and fdpo_gemm_bf16 on
both of its routes (vdpbf16ps through oneDNN; bf16 operands widened to fp32 and multiplied
by sgemm), every transpose combination, padded leading dimensions, alpha and beta.

Reference: C = alpha * op(A) @ op(B) + beta * C0 in float64 with numpy, from the fp32
operands for sgemm and from the bf16 values for the bf16 GEMM (the bf16 rounding itself is
checked against torch's float -> bfloat16 conversion, round to nearest even). Bounds: an
fp32 sum of K products, each |a b| ~ 1, has an error of a few ulp * sqrt(K) per entry; 2e-5
relative to the output's scale for K up to a few hundred is ~20x the observed error and far
below a wrong transpose, a dropped beta or an ignored leading dimension (relative O(1)).
"""
import os
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st

HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "../../build/fdpo-harness"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build/fdpo"))
HAS_BF16 = "avx512_bf16" in open("/proc/cpuinfo").read()


def run(tmp_path, shape, trans, alpha=1.0, beta=0.0, env=None, seed=1):
    out = tmp_path / "g.safetensors"
    r = subprocess.run([HARNESS, "gemm-check", "--shape", ",".join(map(str, shape)), "--trans",
                        ",".join(map(str, trans)), "--alpha", repr(alpha), "--beta", repr(beta), "--seed", str(seed),
                        "--out", out], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stderr
    t, _ = st.load(str(out))
    return t, r.stderr


def reference(t, shape, trans, alpha, beta, a_key, b_key):
    M, N, K = shape
    A, B = t[a_key].astype(np.float64), t[b_key].astype(np.float64)
    opA = A[:, :M].T if trans[0] else A[:, :K]
    opB = B[:, :K].T if trans[1] else B[:, :N]
    C = t["C0"].astype(np.float64).copy()
    C[:, :N] = alpha * opA @ opB + beta * C[:, :N]
    return C


def rel(x, y):
    return float(np.max(np.abs(x - y)) / max(1e-30, np.max(np.abs(y))))


# (300, 200, 70) is large enough for the widened route when chosen by shape (2MN/(M+N) >= 96),
# (5, 700, 33) is decode-like (few rows: vdpbf16ps by shape)
SHAPES = [(300, 200, 70), (5, 700, 33), (1, 1, 1), (64, 64, 64)]
TRANS = [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trans", TRANS)
def test_sgemm_matches_numpy(tmp_path, shape, trans):
    t, _ = run(tmp_path, shape, trans, alpha=0.75, beta=0.5)
    want = reference(t, shape, trans, 0.75, 0.5, "A", "B")
    assert rel(t["C_sgemm"], want) <= 2e-5
    assert np.array_equal(t["C_sgemm"][:, shape[1]:], t["C0"][:, shape[1]:])  # padding untouched


@pytest.mark.parametrize("route", ["dpbf16", "fp32", "auto"])
@pytest.mark.parametrize("trans", TRANS)
def test_bf16_gemm_routes_match_numpy(tmp_path, route, trans):
    if route == "dpbf16" and not HAS_BF16:
        pytest.skip("no AVX512-BF16: the dpbf16 route falls back to fp32 (tested as route fp32)")
    env = {} if route == "auto" else {"FDPO_BF16_GEMM": route}
    for shape in SHAPES:
        t, _ = run(tmp_path, shape, trans, alpha=1.25, beta=1.0, env=env)
        # fdpo's rounding is torch's (round to nearest even)
        for k in ("A", "B"):
            want16 = torch.from_numpy(t[k]).to(torch.bfloat16).to(torch.float32).numpy()
            assert np.array_equal(t[k + "16"], want16), k
        want = reference(t, shape, trans, 1.25, 1.0, "A16", "B16")
        assert rel(t["C_bf16"], want) <= 2e-5, shape
        assert np.array_equal(t["C_bf16"][:, shape[1]:], t["C0"][:, shape[1]:]), shape
        # and it is the product of the bf16 values, not of the fp32 operands (those differ by ~1e-3)
        if shape[2] > 1:
            assert rel(t["C_bf16"], reference(t, shape, trans, 1.25, 1.0, "A", "B")) > 1e-4, shape


@pytest.mark.skipif(not HAS_BF16, reason="needs AVX512-BF16 for two different routes")
def test_bf16_routes_really_differ(tmp_path):
    """FDPO_BF16_GEMM takes effect: the two routes sum in different orders, so some output
    bits differ (both are within the bound above)."""
    a, _ = run(tmp_path, (300, 200, 70), (0, 0), env={"FDPO_BF16_GEMM": "dpbf16"})
    b, _ = run(tmp_path, (300, 200, 70), (0, 0), env={"FDPO_BF16_GEMM": "fp32"})
    assert not np.array_equal(a["C_bf16"], b["C_bf16"])


@pytest.mark.skipif(not HAS_BF16, reason="the route is read where vdpbf16ps exists")
def test_bad_route_is_named(tmp_path):
    """An unknown FDPO_BF16_GEMM value is named in one warning (through the log hook: the
    fdpo command prints it) and the run still succeeds, choosing by measurement."""
    # a 2-step bf16 pretrain: its forward/backward GEMMs go through the bf16 GEMM (the decoder's
    # packed kernels do not, so `generate` would never read the variable)
    tf = tmp_path / "t.txt"
    tf.write_text("Hello there, world. " * 200)
    r = subprocess.run([FDPO, "pretrain", "--data", tf, "--out", tmp_path / "run", "--n-layer", "1", "--n-embd", "256",
                        "--n-head", "2", "--n-positions", "64", "--seq-len", "64", "--batch-size", "4", "--steps", "2",
                        "--threads", "1", "--quiet", "--precision", "bf16"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, FDPO_BF16_GEMM="fp8"))
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if "FDPO_BF16_GEMM" in l and "'fp8'" in l]
    assert len(lines) == 1 and "warning" in lines[0], r.stderr
