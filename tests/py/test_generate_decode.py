"""The decoder's small-rows kernels (src/model/gpt2_decode.c) against PyTorch.

fp32: a decoding step of up to 16 rows takes the blocked 48-column-strip matmul (rows in
groups of 8) and the LM head oneDNN sgemm per block of 128 vocabulary rows; more rows take
the library GEMMs. bf16: every linear layer and the head, any row count, take the same
strip drivers on weights packed in row pairs (fp32 FMAs of the widened pairs where
vdpbf16ps is slow, as here, or vdpbf16ps; the portable tile has the widening route's sums
when FDPO_FORCE_BF16_FALLBACK=1). These tests pick widths that are NOT multiples of
the strip (48) or of the lane count (16), one with an odd width (a zero pad row in the
pairs), so the tail strips and tail columns run, and row counts on both sides of each
threshold and group size (1, 3, 13, 16, 17 rows), in fp32 against the float64 PyTorch
model of tests/py/fdpo_ref and in bf16 against the float64 emulation of the bf16 rule
(tests/py/test_model_bf16.py). Attention scores 16 cached keys per vector (1 to 4
vectors at a time) and keeps a 64-wide head's value sums in registers: a head size of 64
over 70 positions runs every case."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from test_generate import HARNESS, make_model

# (n_embd, n_head): C % 16 = 8 and 3C, C, 4C leave tail strips (72 = 48 + 24, 96 = 2 x 48
# for 24; 120 = 2 x 48 + 24, 160 = 3 x 48 + 16 for 40); 21 is odd (the bf16 pairs of C end
# in a zero pad row)
WIDTHS = [(24, 3), (40, 5), (21, 3)]


def ids_of(n, vocab=257, seed=0):
    g = np.random.default_rng(seed)
    return [int(x) for x in g.integers(0, vocab, n)]


def harness_logits(d, mode, ids, tmp_path, precision="fp32", env=None):
    out = tmp_path / f"{mode}.bin"
    r = subprocess.run([HARNESS, "eval-logits", d, mode, str(out), " ".join(map(str, ids)), "--precision", precision],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"C{w[0]}")
def odd_model(request, tmp_path_factory):
    C, H = request.param
    d = tmp_path_factory.mktemp(f"odd{C}")
    m = make_model(d, 257, seed=7, n_positions=40, n_embd=C, n_layer=2, n_head=H, scale=4.0)
    return str(d), m.double()


# step: 1 row per call; batched: 3 slots (1 + 1 + 1 rows per step, prefills of 2 + T/2 + 1);
# prefill T rows in one call (13 and 16: a second row group of 8, padded in the head at 13;
# 17: the library GEMMs)
@pytest.mark.parametrize("mode,T", [("step", 12), ("batched", 12), ("prefill", 13), ("prefill", 16),
                                    ("prefill", 17)])
def test_decoder_odd_widths_match_pytorch_fp32(odd_model, tmp_path, mode, T):
    d, m = odd_model
    ids = ids_of(T, seed=T)
    got = harness_logits(d, mode, ids, tmp_path)
    with torch.no_grad():
        want = m.forward(torch.tensor(ids)).numpy()
    # float32 kernels vs the float64 model: measured <= 3.2e-7 of max|logit| (1.2-2.3); 1.5e-6
    # is ~5x (test_generate's bound for the same model family)
    assert np.abs(got - want).max() <= 1.5e-6 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("mode,T", [("step", 12), ("batched", 12), ("prefill", 13)])
def test_decoder_odd_widths_follow_the_bf16_rule(odd_model, tmp_path, mode, T):
    """--precision bf16: every linear layer and the head multiply bf16-rounded operands with
    fp32 sums. Measured <= 8e-8 relative against the float64 emulation (no activation sits
    at a bf16 rounding boundary in these cases, which test_model_bf16's 5e-3 allows for);
    bound 1e-6. A tail strip or tail column that read fp32 weights would be ~1e-3 off. The
    exact fp32 model is 3e-3 to 6e-3 away: the bf16 path ran."""
    from test_model_bf16 import forward_emulated
    d, m = odd_model
    ids = ids_of(T, seed=100 + T)
    got = harness_logits(d, mode, ids, tmp_path, "bf16")
    pos, mask = torch.arange(T), torch.tril(torch.ones(T, T, dtype=torch.bool))
    with torch.no_grad():
        want = forward_emulated(m, torch.tensor(ids), pos, mask).numpy()
        exact = m.forward(torch.tensor(ids)).numpy()
    scale = max(1.0, np.abs(want).max())
    err = np.abs(got - want).max() / scale
    assert err <= 1e-6
    assert np.abs(exact - want).max() / scale > 1e-3


def test_same_sample_whatever_the_batch(tmp_path):
    """A sample's tokens depend on (seed, prompt, sample) only: batch sizes 1 to 16 put it in
    a decoding step of 1 to 9 rows and 1 or 2 threads split the work differently. The
    layers' small-rows matmuls sum each output in a fixed order whatever the row count; the
    fp32 LM head is oneDNN sgemm per block of vocabulary rows, whose order may depend on
    the row count, so log-probs agree to float rounding (measured <= 4.4e-7 abs, sums of 20
    float32 log-probs; bound 2e-6) rather than exactly."""
    d, pf = small_model_and_prompts(tmp_path)
    runs = []
    for batch, threads in [("1", "1"), ("3", "2"), ("8", "1"), ("8", "2"), ("16", "2")]:
        out = tmp_path / f"o{batch}_{threads}.jsonl"
        r = subprocess.run([os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo")),
                            "generate", "--model", str(d), "--prompts", str(pf), "--out", str(out), "--n", "3",
                            "--max-new-tokens", "20", "--seed", "4", "--batch-size", batch, "--threads", threads],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        runs.append([(x["tokens"], x["logp"]) for x in map(json.loads, out.read_text().splitlines())])
    assert len(runs[0]) == 9 and len({len(t) for t, _ in runs[0]}) > 1  # some end early (EOT)
    for run in runs[1:]:
        assert [t for t, _ in run] == [t for t, _ in runs[0]]
        assert all(abs(a - b) <= 2e-6 for (_, a), (_, b) in zip(run, runs[0]))


@pytest.mark.parametrize("scale,top_p,nucleus", [(10.0, 0.5, (4, 64)), (0.5, 0.99, (65, 257))])
def test_top_p_alone_matches_the_rule(tmp_path, scale, top_p, nucleus):
    """Top-p without top-k orders only a prefix of the vocabulary (the first 64, 256, ...
    tokens by a heap) until it holds top_p of the mass, and sorts all of it only for a flat
    distribution. First tokens of 4000 samples from one prompt against the rule computed
    from PyTorch's probabilities (test_generate.truncate: sorted order, shortest prefix
    reaching top_p): chi-square, and no token outside the nucleus. The cases put the
    nucleus inside the first heap (4-64 tokens of 257) and past V/4 (the full sort)."""
    import scipy.stats
    from test_generate import truncate
    d = tmp_path / "m"
    d.mkdir()
    m = make_model(d, 257, seed=9, n_positions=16, scale=scale)
    prompt = [5, 17, 200]
    with torch.no_grad():
        p = torch.softmax(m.double().forward(torch.tensor(prompt))[-1], -1).numpy()
    q = truncate(p, 1.0, 0, top_p)
    support = int((q > 0).sum())
    assert nucleus[0] <= support <= nucleus[1], support
    n = 4000
    r = subprocess.run([HARNESS, "eval-sample", str(d), "--prompts", " ".join(map(str, prompt)), "--eot", "256",
                        "--n", str(n), "--max-new", "1", "--top-p", str(top_p), "--seed", "77", "--batch", "16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    counts = np.zeros(257)
    for line in r.stdout.splitlines():
        counts[json.loads(line)["tokens"][0]] += 1
    assert counts.sum() == n and counts[q == 0].sum() == 0
    order = np.argsort(-q)  # pool the rare tail so every expected count is >= 5
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for t in order[:support]:
        acc_o += counts[t]; acc_e += q[t] * n
        if acc_e >= 5:
            obs.append(acc_o); exp.append(acc_e); acc_o = acc_e = 0.0
    obs[-1] += acc_o; exp[-1] += acc_e
    assert len(obs) >= 3
    assert scipy.stats.chisquare(obs, exp).pvalue > 1e-3


def small_model_and_prompts(tmp_path):
    """A 2-layer byte-level model (width 40, 5 heads) and three two-byte prompts."""
    d = tmp_path / "m"
    d.mkdir()
    make_model(d, 257, seed=5, n_positions=48, n_embd=40, n_layer=2, n_head=5, scale=2.0, byte_tokenizer=True)
    pf = tmp_path / "p.txt"
    pf.write_text("ab\ncd\nef\n")
    return d, pf


def fallback_env():
    return dict(os.environ, FDPO_FORCE_BF16_FALLBACK="1")


def widen_env():
    """the native widening route, whatever the probe would pick on this CPU (vdpbf16ps
    where it is fast, whose sums are not the fallback's bits: test_decode_kernel.py)"""
    return dict(os.environ, FDPO_DECODE_BF16="widen")


@pytest.mark.parametrize("mode,T", [("step", 12), ("batched", 12), ("prefill", 13), ("prefill", 17)])
def test_decoder_bf16_fallback_gives_the_same_logits(odd_model, tmp_path, mode, T):
    """FDPO_FORCE_BF16_FALLBACK=1 (what a CPU without AVX512-BF16 runs): the portable tile
    adds the products of the bf16 values in the order the AVX-512 widening route adds them
    (i order, one fmaf each: each product of two bf16 values is exact in fp32), so the
    logits are the same bits. Both follow the bf16 rule (test above for the native path;
    the kernel's exact bits: test_decode_kernel.py)."""
    d, _ = odd_model
    ids = ids_of(T, seed=200 + T)
    native = harness_logits(d, mode, ids, tmp_path, "bf16", env=widen_env())
    fallback = harness_logits(d, mode, ids, tmp_path, "bf16", env=fallback_env())
    assert np.array_equal(native, fallback)


@pytest.fixture(scope="module")
def head64_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("head64")
    m = make_model(d, 257, seed=13, n_positions=80, n_embd=128, n_layer=2, n_head=2, scale=4.0)
    return str(d), m.double()


def test_decoder_head_size_64_over_70_positions(head64_model, tmp_path):
    """One token per step up to 70 cached positions with 64-wide heads: the scores of 1, 2,
    3 and 4 vectors of 16 keys (positions 1-16, 17-32, 33-48, 49-64, then 65-70 in a second
    block) and the register-resident value sums, against float64 PyTorch, fp32 (same bound
    as the odd widths) and bf16 (the emulated bf16 rule; at this width an activation of one
    of the 70 positions sits at a bf16 rounding boundary, where fp32 and the float64
    reference round to neighbouring values, and attention carries the difference: measured
    1.4e-3 to 3.6e-3 relative over seeds, so test_model_bf16's bound of 5e-3 applies; the
    kernels' own sums are checked exactly by the odd widths and the fallback identity)."""
    from test_model_bf16 import forward_emulated
    d, m = head64_model
    T = 70
    ids = ids_of(T, seed=64)
    got = harness_logits(d, "step", ids, tmp_path)
    with torch.no_grad():
        want = m.forward(torch.tensor(ids)).numpy()
    assert np.abs(got - want).max() <= 1.5e-6 * max(1.0, np.abs(want).max())
    got16 = harness_logits(d, "step", ids, tmp_path, "bf16")
    pos, mask = torch.arange(T), torch.tril(torch.ones(T, T, dtype=torch.bool))
    with torch.no_grad():
        want16 = forward_emulated(m, torch.tensor(ids), pos, mask).numpy()
    assert np.abs(got16 - want16).max() / max(1.0, np.abs(want16).max()) <= 5e-3


def test_generate_bf16_fallback_same_samples(tmp_path):
    """fdpo generate --precision bf16 with FDPO_FORCE_BF16_FALLBACK=1 writes the same
    samples (tokens and log-probs) as the native path, and says it fell back."""
    d, pf = small_model_and_prompts(tmp_path)
    outs = []
    for env in (widen_env(), fallback_env()):
        out = tmp_path / f"o{len(outs)}.jsonl"
        r = subprocess.run([os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo")),
                            "generate", "--model", str(d), "--prompts", str(pf), "--out", str(out), "--n", "3",
                            "--max-new-tokens", "20", "--seed", "4", "--batch-size", "8", "--threads", "2",
                            "--precision", "bf16"], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        outs.append([(x["tokens"], x["logp"]) for x in map(json.loads, out.read_text().splitlines())])
        if "FDPO_FORCE_BF16_FALLBACK" in env:
            assert "FDPO_FORCE_BF16_FALLBACK" in r.stderr
    assert len(outs[0]) == 9 and outs[0] == outs[1]


def has_avx512f():
    try:
        return " avx512f " in open("/proc/cpuinfo").read().replace("\n", " ")
    except OSError:
        return False


def test_sampler_vector_exp_is_libm_expf():
    """fdpo_expf8 (src/model/expf_libm.c: the sampler's and the fp32 decoder's GELU and
    softmax exponential) returns libm's expf bit for bit:
    1 in 13 of all float bit patterns in (-88, 88), both signs, and every 1/64 step, each
    compared with expf itself (glibc: the reference the sampled tokens were always drawn
    with). On a CPU with AVX-512 it must be on (the check at first use passed); forced off
    with FDPO_EXPF8_SCALAR=1."""
    r = subprocess.run([HARNESS, "eval-sample-exp", "13"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["mismatches"] == 0
    if has_avx512f():
        assert got["vector"] == 1
    r = subprocess.run([HARNESS, "eval-sample-exp", "9973"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, FDPO_EXPF8_SCALAR="1"))
    assert r.returncode == 0 and json.loads(r.stdout)["vector"] == 0, r.stderr


@pytest.mark.parametrize("flags", [[], ["--temperature", "0.7"], ["--top-k", "9"], ["--top-p", "0.8"],
                                   ["--temperature", "1.3", "--top-k", "40", "--top-p", "0.9"],
                                   ["--temperature", "0"]],
                         ids=["plain", "T0.7", "topk", "topp", "all", "greedy"])
def test_generate_same_samples_with_scalar_exp(tmp_path, flags):
    """fdpo generate writes the same samples (tokens, log-probs: byte for byte) with the
    sampler's exponentials 8 at a time as with libm's expf one by one
    (FDPO_EXPF8_SCALAR=1), for every sampler path: the untruncated draw (bisection over
    the running sums), temperature, top-k, top-p and greedy. A vocabulary of 301 leaves a
    tail of 5 after the groups of 8 (and of 16 in the max)."""
    d = tmp_path / "m"
    d.mkdir()
    make_model(d, 301, seed=11, n_positions=48, n_embd=24, n_layer=2, n_head=3, scale=3.0, byte_tokenizer=True)
    pf = tmp_path / "p.txt"
    pf.write_text("ab\ncd\nef\n")
    outs = []
    for env in (None, dict(os.environ, FDPO_EXPF8_SCALAR="1")):
        out = tmp_path / f"o{len(outs)}.jsonl"
        r = subprocess.run([os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo")),
                            "generate", "--model", str(d), "--prompts", str(pf), "--out", str(out), "--n", "3",
                            "--max-new-tokens", "30", "--seed", "6", "--batch-size", "4", "--threads", "2"] + flags,
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert len(outs[0].splitlines()) == 9 and outs[0] == outs[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode,T", [("step", 12), ("batched", 12), ("prefill", 13), ("prefill", 17)])
def test_decoder_one_region_gives_the_same_logits(odd_model, tmp_path, precision, mode, T):
    """A step's kernels in one parallel region (the default) or each in its own
    (FDPO_DECODE_ONE_REGION=0): each output is summed by one thread in the same order, so
    the logits are the same bits, at 2 threads and on a team of 1 where 2 were asked
    (OMP_THREAD_LIMIT=1; each against the per-kernel run of the same environment). In bf16
    on both routes, not the probe's choice of the moment: the widening FMAs, and vdpbf16ps,
    whose bf16 input rows the one-region step writes where each input is made (an odd C's
    pad column included) while the per-kernel path converts them in the matmul (where the
    CPU has no AVX512-BF16 both runs take the portable tile). The per-kernel path's values
    are checked against PyTorch above."""
    d, _ = odd_model
    ids = ids_of(T, seed=300 + T)
    for route in ("widen", "dpbf16") if precision == "bf16" else ("widen",):
        base = dict(os.environ, OMP_NUM_THREADS="2", FDPO_DECODE_BF16=route)
        for env in (base, dict(base, OMP_THREAD_LIMIT="1")):
            per_kernel = harness_logits(d, mode, ids, tmp_path, precision, env=dict(env, FDPO_DECODE_ONE_REGION="0"))
            assert np.array_equal(harness_logits(d, mode, ids, tmp_path, precision, env=env), per_kernel), route


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generate_one_region_same_samples(tmp_path, precision):
    """fdpo generate writes the same samples (tokens and log-probs, byte for byte) with the
    step in one region or one region per kernel, at 1 and 2 threads and on a team of 1
    where 2 were asked (compared with the per-kernel run of the same environment: the fp32
    LM head's oneDNN blocks may sum in another order when the team is cut)."""
    d, pf = small_model_and_prompts(tmp_path)
    outs = {}
    for name, threads, extra in [("one1", "1", {}), ("one2", "2", {}), ("limit", "2", {"OMP_THREAD_LIMIT": "1"}),
                                 ("per1", "1", {"FDPO_DECODE_ONE_REGION": "0"}),
                                 ("per2", "2", {"FDPO_DECODE_ONE_REGION": "0"}),
                                 ("perlimit", "2", {"OMP_THREAD_LIMIT": "1", "FDPO_DECODE_ONE_REGION": "0"})]:
        out = tmp_path / f"{name}.jsonl"
        r = subprocess.run([os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo")),
                            "generate", "--model", str(d), "--prompts", str(pf), "--out", str(out), "--n", "3",
                            "--max-new-tokens", "20", "--seed", "4", "--batch-size", "4", "--threads", threads,
                            "--precision", precision], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, FDPO_DECODE_BF16="widen", **extra))
        assert r.returncode == 0, r.stderr
        outs[name] = out.read_bytes()
    assert len(outs["one1"].splitlines()) == 9
    assert outs["one1"] == outs["per1"] and outs["one2"] == outs["per2"]
    assert outs["limit"] == outs["perlimit"]
