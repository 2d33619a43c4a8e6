"""f-divergence table and preference losses (src/objectives) against independent references.

The references below are re-written from the published formulas: the f-DPO paper's losses
(Wang et al. 2024: forward KL score -1/u, JS log(2u/(1+u)), alpha (1 - u^-alpha)/alpha) in the
form TRL's DPOTrainer uses them (f_divergence_type branches: JS subtracts softplus of the
log-ratios, alpha uses cap_exp(-alpha * l)), and the TRL loss_type formulas (sigmoid with label
smoothing, robust, hinge, ipo) and SimPO. Gradients come from torch.autograd in float64.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from fdpo_ref.fdiv import f as ref_f, fprime as ref_fprime, fprime_inv as ref_fprime_inv  # noqa: E402

HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(__file__), "../../build/fdpo-harness"))
EXP_CAP = 88.7228  # TRL get_exp_cap(float32): floor(log(FLT_MAX) * 1e4) / 1e4
RTOL = 1e-9


def harness(req):
    r = subprocess.run([HARNESS, "objectives", "-"], input=json.dumps(req), capture_output=True, text=True, timeout=60)
    return r


def run_ok(req):
    r = harness(req)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def close(a, b, rtol=RTOL, atol=1e-300):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    assert a.shape == b.shape
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):
        ok = both_nan | same_inf | (np.abs(a - b) <= atol + rtol * np.abs(b))
    assert ok.all(), f"mismatch:\n ours {a[~ok]}\n ref  {b[~ok]}"


# ---------- independent references ----------

def cap_exp(x):
    return torch.exp(torch.clamp(x, max=EXP_CAP))


def ref_logits(div, lw, ll):
    """TRL/paper 'logits' = s(lw) - s(ll) for each divergence."""
    if div == "rkl":
        return lw - ll
    if div == "fkl":  # paper's forward KL: f'(u) = -1/u = -exp(-l)
        return -cap_exp(-lw) + cap_exp(-ll)
    if div == "js":  # TRL: logits -= softplus(chosen_logratios) - softplus(rejected_logratios)
        return (lw - ll) - (F.softplus(lw) - F.softplus(ll))
    if div.startswith("alpha:"):
        a = float(div[6:])
        return (cap_exp(-a * ll) - cap_exp(-a * lw)) / a
    raise ValueError(div)


def ref_loss(kind, div, beta, e, gamma, lw, ll):
    if kind == "simpo":
        return -F.logsigmoid(beta * (lw - ll) - gamma)
    x = ref_logits(div, lw, ll)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * x) * (1 - e) - F.logsigmoid(-beta * x) * e
    if kind == "robust":
        return (-F.logsigmoid(beta * x) * (1 - e) + F.logsigmoid(-beta * x) * e) / (1 - 2 * e)
    if kind == "hinge":
        return torch.relu(1 - beta * x)
    if kind == "ipo":
        return (x - 1 / (2 * beta)) ** 2
    raise ValueError(kind)


ADMISSIBLE = ["rkl", "fkl", "js", "alpha:0.3", "alpha:0.5", "alpha:0.7"]
ALL = ADMISSIBLE + ["tv", "chi2"]
U = [0.0, 1e-8, 0.01, 0.3, 1.0, 1.7, 5.0, 1e6]
L = [-30.0, -5.0, -1.3, -0.2, 0.0, 0.4, 2.5, 11.0, 40.0]


def table(divs=ALL):
    v = np.concatenate([np.linspace(-8, 3.5, 47), [math.log(2) - 1e-9, 1 / 0.3 - 1e-6, -2.0, -2.5]])
    req = {"divergences": divs, "u": U, "v": v.tolist(), "l": L}
    return run_ok(req), v


def test_f_fprime_and_inverse_match_the_table():
    out, v = table()
    for d in out["divergences"]:
        name = d["name"]
        # atol: at u = 1 the reference's alpha form, as written, leaves a rounding residue
        # (-2.6e-16 at alpha:0.3) where fdpo's f(1) is exactly 0
        close(d["f"], ref_f(name, U), atol=1e-14)
        close(d["fprime"], ref_fprime(name, U))
        close(d["fprime_inv"], ref_fprime_inv(name, v))
        assert d["admissible"] == (name in ADMISSIBLE)



def test_js_f_is_finite_where_u_log_u_overflows():
    """js's f(u) = u log u - (u+1) log((u+1)/2) ~ u log 2 is finite up to u ~ 2.6e308, but u log u
    overflows past ~2.5e305: f was inf - inf = NaN (the lab's D_f of a best response with
    pi_ref 4e-307). Against mpmath at 50 digits; inf where u log 2 itself overflows."""
    import mpmath
    mpmath.mp.dps = 50
    us = [1e300, 2.4e305, 3e305, 1e307, 1.7e308, 1.7976931348623157e308]
    d = run_ok({"divergences": ["js"], "u": us, "v": [], "l": []})["divergences"][0]
    for u, got in zip(us, d["f"]):
        U = mpmath.mpf(u)
        want = U * mpmath.log(U) - (U + 1) * mpmath.log((U + 1) / 2)
        if want > 1.7976931348623157e308:
            assert got == math.inf, (u, got)
        else:   # u log u's rounding (~700 eps relative) cancels to u log 2 below the switch: 1e-12
            assert got == pytest.approx(float(want), rel=1e-12), (u, got, float(want))

def test_fprime_is_the_derivative_of_f_and_inverse_inverts():
    out, v = table(ADMISSIBLE + ["chi2"])
    u = torch.tensor([0.01, 0.3, 1.0, 1.7, 5.0], dtype=torch.float64, requires_grad=True)
    for d in out["divergences"]:
        name = d["name"]
        # autograd of f written in torch
        if name == "rkl":
            f = u * torch.log(u)
        elif name == "fkl":
            f = -torch.log(u)
        elif name == "js":
            f = u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2)
        elif name.startswith("alpha:"):
            a = float(name[6:])
            f = (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1))
        else:
            f = (u - 1) ** 2
        (g,) = torch.autograd.grad(f.sum(), u)
        close(np.array(d["fprime"])[[2, 3, 4, 5, 6]], g.numpy())
        # f'((f')^-1(v)) = v wherever the inverse is defined
        finv = np.array(d["fprime_inv"])
        ok = ~np.isnan(finv) & (finv > 1e-6) & (finv < 1e6)
        assert ok.sum() > 20
        close(ref_fprime(name, finv[ok]), v[ok], rtol=1e-9, atol=1e-12)


def test_domain_sup_and_nan_outside():
    out, v = table()
    sup = {d["name"]: d["sup"] for d in out["divergences"]}
    assert sup["rkl"] == math.inf and sup["chi2"] == math.inf
    assert sup["fkl"] == 0.0
    assert sup["js"] == pytest.approx(math.log(2), rel=1e-15)
    assert sup["alpha:0.5"] == pytest.approx(2.0, rel=1e-15)
    assert sup["tv"] == 0.5  # f'(u) = sign(u - 1)/2: its range is {-1/2, 0, 1/2}
    for d in out["divergences"]:
        if d["name"] in ("rkl", "tv"):
            continue
        finv = np.array(d["fprime_inv"])
        assert np.isnan(finv[v >= d["sup"]]).all()
        if d["name"] != "chi2":
            assert not np.isnan(finv[v < d["sup"]]).any()


def test_scores_and_score_grads_match_trl_forms():
    out, _ = table(ADMISSIBLE)
    l = torch.tensor(L, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros_like(l)
    for d in out["divergences"]:
        name = d["name"]
        # s(l) - s(0) from the pair form with a rejected log-ratio of 0
        s = ref_logits(name, l, zero)
        (g,) = torch.autograd.grad(s.sum(), l)
        ours = np.array(d["score"]) - d["score"][L.index(0.0)]
        close(ours, s.detach().numpy(), rtol=1e-9, atol=1e-12)
        # atol: torch's 1 - sigmoid(l) cancels to 0 at l = 40 where ours keeps sigma(-l) ~ 4e-18
        close(d["score_grad"], g.numpy(), atol=1e-15)


LOSS_CASES = [
    ("sigmoid", "rkl", 0.1, 0.0, 0.0), ("sigmoid", "fkl", 0.1, 0.0, 0.0), ("sigmoid", "js", 0.5, 0.0, 0.0),
    ("sigmoid", "alpha:0.5", 0.1, 0.0, 0.0), ("sigmoid", "alpha:0.3", 2.0, 0.0, 0.0),
    ("sigmoid", "js", 0.1, 0.1, 0.0), ("sigmoid", "fkl", 0.3, 0.25, 0.0),
    ("robust", "rkl", 0.1, 0.1, 0.0), ("robust", "alpha:0.7", 0.2, 0.3, 0.0), ("robust", "js", 0.1, 0.0, 0.0),
    ("hinge", "rkl", 0.5, 0.0, 0.0), ("hinge", "js", 2.0, 0.0, 0.0), ("hinge", "fkl", 1.0, 0.0, 0.0),
    ("ipo", "rkl", 0.1, 0.0, 0.0), ("ipo", "alpha:0.5", 0.5, 0.0, 0.0), ("ipo", "js", 1.0, 0.0, 0.0),
    ("simpo", "rkl", 2.0, 0.0, 0.5), ("simpo", "rkl", 2.5, 0.0, 1.4),
]
rng = np.random.default_rng(0)
PAIRS = np.concatenate([rng.normal(0, 3, size=(30, 2)), [[0.0, 0.0], [1.0, -1.0], [-4.0, 6.0], [12.0, -9.0]]])


@pytest.mark.parametrize("kind,div,beta,e,gamma", LOSS_CASES)
def test_loss_and_gradients_match_torch(kind, div, beta, e, gamma):
    req = {"losses": [{"loss": kind, "divergence": div, "beta": beta, "label_smoothing": e,
                       "simpo_gamma": gamma, "pairs": PAIRS.tolist()}]}
    out = run_ok(req)["losses"][0]
    lw = torch.tensor(PAIRS[:, 0], dtype=torch.float64, requires_grad=True)
    ll = torch.tensor(PAIRS[:, 1], dtype=torch.float64, requires_grad=True)
    loss = ref_loss(kind, div, beta, e, gamma, lw, ll)
    gw, gl = torch.autograd.grad(loss.sum(), [lw, ll])
    close(out["loss"], loss.detach().numpy(), atol=1e-15)
    close(out["dlw"], gw.numpy(), atol=1e-15)
    close(out["dll"], gl.numpy(), atol=1e-15)


def test_alpha_limits_recover_rkl_and_fkl():
    pairs = [[0.3, -0.4], [1.5, 0.2], [-2.0, 1.0]]
    def losses(div):
        return np.array(run_ok({"losses": [{"loss": "sigmoid", "divergence": div, "beta": 0.5,
                                             "pairs": pairs}]})["losses"][0]["loss"])
    rkl, fkl = losses("rkl"), losses("fkl")
    gaps0 = [np.max(np.abs(losses(f"alpha:{a}") - rkl)) for a in (1e-2, 1e-4, 1e-6)]
    gaps1 = [np.max(np.abs(losses(f"alpha:{1 - a}") - fkl)) for a in (1e-2, 1e-4, 1e-6)]
    # the difference shrinks linearly in A (resp. 1 - A)
    assert gaps0[0] > gaps0[1] > gaps0[2] and gaps0[2] < 1e-5
    assert gaps1[0] > gaps1[1] > gaps1[2] and gaps1[2] < 1e-5


@pytest.mark.parametrize("mag", [200.0, 1000.0])
def test_large_log_ratios_stay_finite(mag):
    pairs = [[mag, -mag], [-mag, mag], [-mag, -mag], [mag, mag]]
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float32(mag)))  # a naive float exp overflows here
    for div in ["fkl", "alpha:0.5", "js", "rkl"]:
        for kind in ["sigmoid", "robust", "ipo", "hinge"]:
            out = run_ok({"losses": [{"loss": kind, "divergence": div, "beta": 0.1, "label_smoothing": 0.1 if kind == "robust" else 0,
                                      "pairs": pairs}]})["losses"][0]
            for key in ("loss", "dlw", "dll"):
                assert np.isfinite(out[key]).all(), (div, kind, key, out[key])
            lw = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
            ll = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
            ref = ref_loss(kind, div, 0.1, 0.1 if kind == "robust" else 0, 0, lw, ll).numpy()
            if kind == "ipo":
                close(out["loss"], ref, rtol=1e-9)
            else:
                close(out["loss"], ref, rtol=1e-9, atol=1e-12)
    # the score itself: naive -exp(1000) is -inf; ours is capped at -exp(88.7228)
    out = run_ok({"divergences": ["fkl", "alpha:0.5"], "l": [-mag]})["divergences"]
    assert out[0]["score"][0] == pytest.approx(-math.exp(EXP_CAP), rel=1e-12)
    assert out[1]["score"][0] == pytest.approx(-math.exp(min(0.5 * mag, EXP_CAP)) / 0.5, rel=1e-12)


def test_sigmoid_loss_is_zero_not_nan_where_beta_delta_overflows():
    """with no label smoothing the cDPO loss was (1 - 0) softplus(-z) + 0 * softplus(z): 0 * inf =
    NaN once z = beta * Delta overflows to +inf (a pair won by an fkl score of -e^88 at beta 1e300);
    the limit is 0, and so is its gradient. torch float64: softplus(-inf) = 0."""
    pairs = [[1.0, -200.0], [-200.0, 1.0]]
    for kind in ("sigmoid", "robust"):   # robust at e = 0 is the same loss
        out = run_ok({"losses": [{"loss": kind, "divergence": "fkl", "beta": 1e300, "label_smoothing": 0,
                                  "pairs": pairs}]})["losses"][0]
        z = torch.tensor([math.inf, -math.inf], dtype=torch.float64)
        assert out["loss"][0] == F.softplus(-z)[0].item() == 0.0, kind
        assert out["loss"][1] == math.inf, kind   # the lost pair's -log sigma(-inf)
        assert out["dlw"][0] == 0.0 and out["dll"][0] == 0.0, kind


@pytest.mark.parametrize("spec,needle", [
    ("kl", "unknown divergence 'kl'"), ("alpha:1.5", "alpha:1.5"), ("alpha:0", "alpha must be in (0, 1)"),
    ("alpha:", "needs a coefficient"), ("alpha:x", "'x' is not a number"), ("", "empty spec"),
    ("alpha:0x1p-1", "'0x1p-1' is not a number"),   # strtod's hex float: alpha 0.5
])
def test_divergence_parse_errors(spec, needle):
    r = harness({"divergences": [spec]})
    assert r.returncode != 0
    assert needle in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("div,needles", [
    ("tv", ["--divergence tv", "not invertible", "partition function does not cancel"]),
    ("chi2", ["--divergence chi2", "0 is in the domain", "partition function does not cancel"]),
])
def test_inadmissible_divergences_are_refused_with_the_reason(div, needles):
    r = harness({"losses": [{"loss": "sigmoid", "divergence": div, "beta": 0.1, "pairs": [[0, 0]]}]})
    assert r.returncode != 0
    for n in needles:
        assert n in r.stderr
    # simpo takes no f: any divergence but the default rkl would be ignored, so it is refused
    r = harness({"losses": [{"loss": "simpo", "divergence": div, "beta": 2, "pairs": [[0, 0]]}]})
    assert r.returncode != 0
    assert f"--divergence {div}: --loss simpo ignores the divergence" in r.stderr


@pytest.mark.parametrize("cfg,needle", [
    ({"loss": "sigmoid", "beta": 0}, "--beta"), ({"loss": "sigmoid", "beta": -1}, "--beta"),
    ({"loss": "sigmoid", "label_smoothing": 0.5}, "--label-smoothing"),
    ({"loss": "robust", "label_smoothing": -0.1}, "--label-smoothing"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "--label-smoothing"),
    ({"loss": "dpo"}, "--loss: unknown loss 'dpo'"),
])
def test_loss_check_errors_name_the_flag(cfg, needle):
    cfg = dict(cfg, pairs=[[0, 0]])
    r = harness({"losses": [cfg]})
    assert r.returncode != 0
    assert needle in r.stderr


def test_canonical_names():
    out = run_ok({"divergences": ["alpha:0.50", "alpha:.3", "js"]})
    assert [d["name"] for d in out["divergences"]] == ["alpha:0.5", "alpha:0.3", "js"]


def test_alpha_score_small_alpha_keeps_full_precision():
    """s(l) = (1 - e^(-A l))/A = -expm1(-A l)/A. At A = 1e-6, l = 1e-3 the naive
    1/A - e^(-A l)/A loses ~9 of 16 digits (relative error ~1e-7); expm1 keeps them.
    Reference: torch float64 expm1, plus the series l - A l^2/2 + A^2 l^3/6."""
    for A, l in [(1e-6, 1e-3), (1e-6, -2.5e-2), (1e-3, 1e-4), (1e-9, 7.0), (0.5, 1e-12)]:
        out = run_ok({"divergences": [f"alpha:{A!r}"], "l": [l]})["divergences"][0]
        want = (-torch.expm1(torch.tensor(-A * l, dtype=torch.float64)) / A).item()
        series = l - A * l * l / 2 + A * A * l ** 3 / 6
        assert abs(out["score"][0] - want) <= 4e-16 * abs(want), (A, l, out["score"][0], want)
        assert abs(want - series) <= 1e-15 * abs(series) + abs(A ** 3 * l ** 4), (A, l)
        naive = 1 / A - math.exp(-A * l) / A
        if A <= 1e-6:  # the naive form is visibly worse: what the expm1 form is for
            assert abs(naive - want) > 1e3 * abs(out["score"][0] - want) or naive == want


def test_alpha_score_subnormal_alpha_is_the_rkl_limit():
    """s(l) = -expm1(-A l)/A = l - A l^2/2 + ... for a subnormal A (the parser takes alpha:4.9e-324):
    A l computed in double kept a few bits or none, so s(l) was 0 for every |l| < 1 at
    4.9e-324 (a DPO run's loss stuck at ln 2) and 1.2 % off at 1e-318. Against mpmath at 400
    digits, with A the double the name parses to."""
    import mpmath
    mpmath.mp.dps = 400
    alphas = [4.9e-324, 1e-320, 1e-318, 1e-315, 2.2250738585072014e-308, 1e-300]
    ls = [1e-4, -0.5, 2.0, -700.0, 1e300, -1e300, 0.0]
    out = run_ok({"divergences": [f"alpha:{A!r}" for A in alphas], "l": ls})["divergences"]
    for A, d in zip(alphas, out):
        for l, got in zip(ls, d["score"]):
            a, x = mpmath.mpf(A), mpmath.mpf(l)
            want = -mpmath.expm1(-a * x) / a
            assert abs(mpmath.mpf(got) - want) <= 4e-16 * abs(want), (A, l, got, float(want))


def test_alpha_fprime_keeps_full_precision_for_every_alpha():
    """alpha's f'(u) = (1 - u^-A)/A against mpmath at 400 digits. Evaluated as written it
    subtracts two numbers near 1: 4 % off at A = 1e-15, exactly 0 at u = 1.000001 for A =
    1e-12 and for every u at A = 1e-300 (f' ~ log u there), while fdpo_score gave the same
    quantity right."""
    import mpmath
    mpmath.mp.dps = 400
    alphas = [1e-300, 1e-100, 1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 0.3, 0.5, 0.999, 1 - 1e-6]
    us = [0.0, 1e-300, 1e-30, 0.01, 0.5, 0.999999, 1.0, 1.000001, 2.0, 1e6, 1e20, 1e300]
    out = run_ok({"divergences": [f"alpha:{A!r}" for A in alphas], "u": us})["divergences"]
    for A, d in zip(alphas, out):
        for u, got in zip(us, d["fprime"]):
            if u == 0:
                assert got == -math.inf, (A, got)
                continue
            want = (1 - mpmath.mpf(u) ** (-mpmath.mpf(A))) / mpmath.mpf(A)
            if abs(want) > 1.7e308:
                assert got == -math.inf, (A, u, got)
            else:
                # e^(-A log u) carries the rounding of its exponent: eps |A log u| (5e-16 at 0.3, 1e-300)
                tol = 2.3e-16 * (2 + abs(A * math.log(u)))
                assert abs(mpmath.mpf(got) - want) <= tol * abs(want), (A, u, got, float(want))


def test_logistic_functions_match_torch_without_overflow():
    """fdpo_sigmoid / fdpo_log_sigmoid / fdpo_softplus (the one copy every module uses)
    against torch float64, out to |x| = 800 where exp(|x|) overflows double."""
    x = [-800.0, -745.0, -40.0, -1.5, -1e-20, 0.0, 1e-20, 0.3, 17.0, 40.0, 745.0, 800.0]
    out = run_ok({"x": x})["logistic"]
    t = torch.tensor(x, dtype=torch.float64)
    for key, want in (("sigmoid", torch.sigmoid(t)), ("log_sigmoid", F.logsigmoid(t)), ("softplus", F.softplus(t))):
        assert np.isfinite(out[key]).all(), key
        # atol 1e-300: at x = -745 ours is the subnormal e^x = 5e-324 where torch gives 0
        close(out[key], want.numpy(), rtol=1e-15, atol=1e-300)


def test_alpha_f_and_f_over_u_keep_full_precision_for_every_alpha():
    """alpha's f(u) = (u^(1-A) - (1-A) u - A)/(A(A-1)) and f(e^l)/e^l against mpmath at 400
    digits, for A from 1e-300 to 1 - 1e-6. Evaluated as written, the numerator subtracts
    numbers of size 1/A: at A = 1e-15 f was 15% off and at 1e-300 it came out 0 or 1 (the
    eval's fdiv_*_alpha_1e-300 were 0.61 where the value is 0.13); near A = 1 the denominator
    A - 1 lost ~7 digits at 1 - 1e-6. Near u = 1 the value is ~l^2/2 from terms of size |l|,
    which left a relative ~eps/|l| (7e-7 at l = 1e-9, the table's form left eps/l^2): now a power
    series in l there, full precision for every l."""
    import mpmath
    mpmath.mp.dps = 400
    alphas = [1e-300, 1e-100, 1e-15, 1e-10, 1e-6, 1e-3, 0.3, 0.5, 0.7, 0.999, 1 - 1e-6]
    us = [0.0, 1e-300, 1e-30, 1e-8, 0.01, 0.3, 0.9, 0.999, 1.0, 1.001, 1.3, 5.0, 1e6, 1e30, 1e300]
    ls = [-800.0, -700.0, -30.0, -2.5, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 0.4, 2.5, 30.0, 700.0, 800.0, 1e5]
    out = run_ok({"divergences": [f"alpha:{A!r}" for A in alphas], "u": us, "l": ls})["divergences"]

    def f(A, u):
        A, u = mpmath.mpf(A), mpmath.mpf(u)
        return (u ** (1 - A) - (1 - A) * u - A) / (A * (A - 1))

    def check(got, want, l, what):
        tol = 1e-14
        if mpmath.isinf(want) or abs(want) > 1.7e308:
            assert got == math.inf, what
        else:
            assert abs(mpmath.mpf(got) - want) <= tol * abs(want) + 1e-300, (what, got, float(want))

    for A, d in zip(alphas, out):
        for u, got in zip(us, d["f"]):
            check(got, f(A, u), math.log(u) if u else -math.inf, (A, "f", u))
        for l, got in zip(ls, d["f_over_u"]):
            u = mpmath.exp(mpmath.mpf(l))
            check(got, f(A, u) / u, l, (A, "f_over_u", l))
    # the limits the table's conventions give (docs/objectives.md): rkl's u log u - u + 1 as
    # A -> 0, its f(u)/u tending to 1/A as l -> inf
    tiny = out[0]
    assert tiny["f"][us.index(5.0)] == pytest.approx(5 * math.log(5) - 4, rel=1e-15)
    assert out[alphas.index(0.3)]["f_over_u"][ls.index(800.0)] == pytest.approx(1 / 0.3, rel=1e-15)


@pytest.mark.parametrize("div", ["js", "alpha:0.1", "alpha:0.5", "alpha:0.9", "tv", "chi2"])
def test_f_log_f_over_u_and_qf_log_keep_full_precision_near_u_1_and_far_out(div):
    """f(e^l), f(e^l)/e^l and pi_ref f(pi/pi_ref) (eval's fdiv_tok term, fdiv_seq, rl's logged
    f_divergence) against mpmath at 400 digits, near the reference and far from it. js's two
    terms are each ~u and cancelled to the ~l^2/4 f is with an absolute 1e-16: f(e^1e-9) came out
    -1.1e-16 where it is 2.5e-19, negative where f >= 0; alpha's forms left a relative ~eps/|l|
    (7e-7 at l = 1e-9). Far out js's f(u) = u log 2 (1 + o(1)) was NaN at u = inf and past
    l = 709.78 (inf * 0 and e^l's overflow), where it is finite up to l = 710.15 and +inf beyond; its f(e^l)/e^l was +inf for
    l in (-710.15, -709.78), where e^-l alone overflows. chi2's f(u)/u = u - 2 + 1/u and tv's
    |1 - 1/u|/2 cancelled near u = 1 to an absolute ~1e-16 (chi2 0 at l = -1e-12 where it is 1e-24);
    their f(e^l) rounded e^l first (a relative ~eps/|l|), and tv's f(e^l)/e^l was +inf on js's
    interval (-710.15, -709.78) too."""
    import mpmath
    mpmath.mp.dps = 400
    ls = [-1e-12, 1e-12, -1e-9, 1e-9, -1e-6, 1e-6, -1e-3, 1e-3, -1.0, 1.0, -30.0, 30.0,
          -745.0, 700.0, 709.9, 710.0, 710.2, 745.0, 800.0]
    if div in ("js", "tv"):   # tv's f(e^l)/e^l ~ e^-l / 2: finite to -l = 710.15, as js's
        ls += [-709.7, -709.9, -710.1]
    lq = -1.0
    lps = [l + lq for l in ls]
    us = [math.exp(l) for l in ls if l < 709]   # f(inf) = inf: tests/c/test_objectives.c (JSON has no inf)
    d = run_ok({"divergences": [div], "u": us, "l": ls})["divergences"][0]
    qf = run_ok({"divergences": [div], "l": lps, "lq": lq})["divergences"][0]["qf_log"]   # qf_log over lp = l

    def f(u):
        if div == "tv":
            return abs(u - 1) / 2
        if div == "chi2":
            return (u - 1) ** 2
        if u == 0:
            return mpmath.log(2) if div == "js" else 1 / (1 - mpmath.mpf(float(div[6:])))
        if div == "js":
            return u * mpmath.log(u) - (u + 1) * mpmath.log((u + 1) / 2)
        A = mpmath.mpf(float(div[6:]))
        return (u ** (1 - A) - (1 - A) * u - A) / (A * (A - 1))

    def check(got, want, what):
        if want > 1.7976931348623157e308:
            assert got == math.inf, (what, got)
        else:
            assert got >= 0 and abs(mpmath.mpf(got) - want) <= 1e-14 * want, (what, got, mpmath.nstr(want, 17))

    for l, fl, fo in zip(ls, d["f_log"], d["f_over_u"]):
        u = mpmath.exp(mpmath.mpf(l))
        check(fl, f(u), ("f_log", l))
        check(fo, f(u) / u, ("f_over_u", l))
    for lp, got in zip(lps, qf):
        q = mpmath.exp(mpmath.mpf(lq))
        check(got, q * f(mpmath.exp(mpmath.mpf(lp)) / q), ("qf_log", lp))
    for u, got in zip(us, d["f"]):
        check(got, f(mpmath.mpf(u)), ("f", u))


def test_kl_f_log_is_taken_from_l_itself_far_out():
    """fkl's f(e^l) = -l and rkl's l e^l exactly (the table's -log u, u log u): computed from
    e^l, fkl's came out inf at l = -800, 744.44 at l = -745 and -inf at l = 710.5, where e^l
    under- or overflows."""
    import mpmath
    mpmath.mp.dps = 100
    ls = [-800.0, -745.0, -720.0, -1e-9, 0.5, 710.5, 800.0]
    out = run_ok({"divergences": ["fkl", "rkl"], "l": ls})["divergences"]
    for l, got in zip(ls, out[0]["f_log"]):
        assert got == -l, ("fkl", l, got)
    for l, got in zip(ls, out[1]["f_log"]):
        want = mpmath.mpf(l) * mpmath.exp(mpmath.mpf(l))
        if want > 1.7976931348623157e308:
            assert got == math.inf, ("rkl", l, got)
        else:   # e^l is subnormal below l = -708: its rounding is an absolute ~2^-1075 |l|
            assert abs(mpmath.mpf(got) - want) <= 1e-15 * abs(want) + 1e-320, ("rkl", l, got, mpmath.nstr(want, 17))
