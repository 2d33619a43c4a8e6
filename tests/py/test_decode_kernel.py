"""The decoder's small-rows linear kernels alone (src/model/gpt2_decode.c, through
`fdpo-harness decode-matmul-check`): out = base + x [R, IC] @ W [IC, OC] for R = 1, 5, 8, 16
and 70 (a prefill: more rows than the bf16 driver's 64 per call).

bf16 on the widening route (the default where vdpbf16ps is slow, and the portable tile):
each output is the fp32 sum, in i order from 0, of the products bf16(x) bf16(W), one
rounding per step, then added to base. Those are exact bits to check against: a product of
two bf16 values is exact in fp32 and in float64, and a float64 sum of two fp32 values
rounded once to fp32 is the fp32 sum (double rounding is innocuous for 53 >= 2 x 24 + 2),
so the numpy emulation below reproduces every bit, with the bf16 rounding done by PyTorch.
The vdpbf16ps route (forced with FDPO_DECODE_BF16=dpbf16 where the CPU has it) adds a pair's
products in its own order: within fp32 accumulation tolerance of the float64 sum of the
same bf16 products. fp32 (W as stored): within fp32 tolerance of the float64 product.

Shapes exercise the driver's tails and blocks: IC = 777 is odd (a zero pad row closes the
row pairs), OC = 100 ends in a partial strip (100 = 2 x 48 + 4); IC = 1000 at 8 and 16 rows
runs over several K-blocks of activations (6144 floats per block: 384 and 192 row pairs),
and OC = 2000 gives each of 2 threads more than one group of 16 strips."""
import os
import subprocess

import numpy as np
import pytest
import torch

from fdpo_ref import safetensors as st

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
ROWS = [1, 5, 8, 16, 70]
SHAPES = [(777, 100), (1000, 2000)]


def has_avx512_bf16():
    with open("/proc/cpuinfo") as f:
        return "avx512_bf16" in f.read()


def run_check(tmp_path, ic, oc, threads=2, env=None, tag=""):
    out = tmp_path / f"k{ic}x{oc}t{threads}{tag}.safetensors"
    r = subprocess.run([HARNESS, "decode-matmul-check", "--ic", str(ic), "--oc", str(oc), "--seed", "3",
                        "--threads", str(threads), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stderr
    return st.load(str(out))[0]


def bf16(a):
    """PyTorch's round-to-nearest-even bf16, as float64"""
    return torch.from_numpy(a).to(torch.bfloat16).to(torch.float64).numpy()


def widen_route_bits(x, w, base):
    """base + sum_i x[:, i] w[i] in fp32, in i order from 0, one rounding per step"""
    xr, wr = bf16(x), bf16(w)
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for i in range(x.shape[1]):
        acc = (acc.astype(np.float64) + xr[:, i:i + 1] * wr[i]).astype(np.float32)
    return base + acc


@pytest.mark.parametrize("ic,oc", SHAPES)
def test_bf16_widen_route_is_the_exact_fp32_sum_of_bf16_products(tmp_path, ic, oc):
    env = {"FDPO_DECODE_BF16": "widen"}
    got = run_check(tmp_path, ic, oc, env=env)
    x, w, base = got["x"], got["w"], got["base"]
    want = widen_route_bits(x, w, base)
    for R in ROWS:
        np.testing.assert_array_equal(got[f"bf16_{R}"], want[:R], err_msg=f"R={R}")
    # the bf16 rounding ran: the exact float64 product is far from it somewhere
    exact = base.astype(np.float64) + x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(got["bf16_70"] - exact).max() > 1e-3


@pytest.mark.parametrize("ic,oc", SHAPES)
def test_bf16_fallback_and_thread_count_give_the_same_bits(tmp_path, ic, oc):
    """FDPO_FORCE_BF16_FALLBACK=1 (the portable tile a CPU without AVX512-BF16 runs) and one
    thread instead of two: the widening route's bits (also checked exactly above)"""
    native = run_check(tmp_path, ic, oc, env={"FDPO_DECODE_BF16": "widen"})
    fallback = run_check(tmp_path, ic, oc, env={"FDPO_FORCE_BF16_FALLBACK": "1"}, tag="fb")
    one = run_check(tmp_path, ic, oc, threads=1, env={"FDPO_DECODE_BF16": "widen"})
    for R in ROWS:
        np.testing.assert_array_equal(fallback[f"bf16_{R}"], native[f"bf16_{R}"], err_msg=f"fallback R={R}")
        np.testing.assert_array_equal(one[f"bf16_{R}"], native[f"bf16_{R}"], err_msg=f"1 thread R={R}")
        np.testing.assert_array_equal(one[f"f32_{R}"], native[f"f32_{R}"], err_msg=f"fp32 1 thread R={R}")


@pytest.mark.skipif(not has_avx512_bf16(), reason="no AVX512-BF16 on this CPU")
@pytest.mark.parametrize("ic,oc", SHAPES)
def test_bf16_dpbf16_route_follows_the_bf16_rule(tmp_path, ic, oc):
    got = run_check(tmp_path, ic, oc, env={"FDPO_DECODE_BF16": "dpbf16"}, tag="dp")
    x, w, base = got["x"], got["w"], got["base"]
    ref = base + bf16(x) @ bf16(w)
    scale = np.abs(base) + np.abs(bf16(x)) @ np.abs(bf16(w))
    for R in ROWS:
        err = np.abs(got[f"bf16_{R}"] - ref[:R]) / scale[:R]
        assert err.max() < 2e-6 * np.sqrt(ic), f"R={R}: {err.max()}"
        np.testing.assert_array_equal(got[f"bf16_{R}"], got["bf16_70"][:R], err_msg=f"rows R={R}")


@pytest.mark.parametrize("ic,oc", SHAPES)
def test_fp32_kernel_matches_float64_and_not_depends_on_rows(tmp_path, ic, oc):
    got = run_check(tmp_path, ic, oc)
    x, w, base = (got[k].astype(np.float64) for k in ("x", "w", "base"))
    ref = base + x @ w
    scale = np.abs(base) + np.abs(x) @ np.abs(w)
    for R in ROWS:
        err = np.abs(got[f"f32_{R}"] - ref[:R]) / scale[:R]
        assert err.max() < 2e-6 * np.sqrt(ic), f"R={R}: {err.max()}"
        np.testing.assert_array_equal(got[f"f32_{R}"], got["f32_70"][:R], err_msg=f"rows R={R}")


def test_microbench_runs_every_case_and_counts_the_weight_bytes():
    """decode-matmul (the kernel's microbench): one line per (precision, shape, rows) with
    GB/s = weight bytes / median time (4 bytes per fp32 weight, 2 per bf16) and GFLOP/s =
    2 R IC OC / median time; --peaks 0 skips the triad and FMA peaks"""
    import json
    r = subprocess.run([HARNESS, "decode-matmul", "--shapes", "96x100,33x48", "--rows", "1,3", "--threads", "1",
                        "--min-seconds", "0", "--peaks", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(x["precision"], x["shape"], x["rows"]) for x in rows] == [
        (p, s, R) for p in ("fp32", "bf16") for s in ([96, 100], [33, 48]) for R in (1, 3)]
    for x in rows:
        ic, oc = x["shape"]
        seconds = x["ms_median"] * 1e-3
        assert x["calls"] >= 20 and x["ms_best"] <= x["ms_median"]
        assert x["gbs"] == pytest.approx(ic * oc * (4 if x["precision"] == "fp32" else 2) / seconds * 1e-9, rel=0.02, abs=0.01)
        assert x["gflops"] == pytest.approx(2 * x["rows"] * ic * oc / seconds * 1e-9, rel=0.02, abs=0.01)


@pytest.mark.parametrize("args,flag", [(["--rows", "17"], "--rows"), (["--rows", "4,x"], "--rows"),
                                       (["--shapes", "768"], "--shapes"), (["--shapes", "0x5"], "--shapes"),
                                       (["--precision", "fp16"], "--precision"), (["--threads", "0"], "--threads"),
                                       (["--bogus", "1"], "--bogus")])
def test_microbench_names_the_bad_flag(args, flag):
    r = subprocess.run([HARNESS, "decode-matmul", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and flag in r.stderr, r.stderr


def test_check_needs_its_shape():
    r = subprocess.run([HARNESS, "decode-matmul-check", "--ic", "8"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--oc" in r.stderr, r.stderr
