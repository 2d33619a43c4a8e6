"""fdpo lab: exact solutions checked against KKT conditions and independent scipy solvers.

References: scipy.optimize.brentq on the closed form pi_ref (f')^-1((r - lambda)/beta),
scipy.optimize.minimize (SLSQP) on the regularised objective itself, scipy.optimize.linprog
for total variation, scipy.special.softmax for reverse KL, and a scipy logistic-regression
fit for the Bradley-Terry rewards. No expected value comes from fdpo itself.
"""
import csv
import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, special

sys.path.insert(0, os.path.dirname(__file__))
from fdpo_ref.fdiv import f as fdiv, fprime, fprime_inv as finv  # noqa: E402  (the independent f-table)

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
ADMISSIBLE = ["rkl", "fkl", "js", "alpha:0.3", "alpha:0.5", "alpha:0.7"]


def lab(*args, check=True):
    r = subprocess.run([FDPO, "lab", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def write_problem(path, q, r, extra=None):
    with open(path, "w") as f:
        cols = ["pi_ref", "reward"] + list(extra or {})
        f.write(",".join(cols) + "\n")
        for i in range(len(q)):
            vals = [q[i], r[i]] + [extra[c][i] for c in (extra or {})]
            f.write(",".join(repr(float(v)) for v in vals) + "\n")


def problem(n, seed, zipf=True):
    rng = np.random.default_rng(seed)
    q = 1.0 / np.arange(1, n + 1) ** 1.1 if zipf else rng.dirichlet(np.ones(n))
    q = q / q.sum()
    r = rng.normal(size=n)
    return q, r


def sup(div):
    return {"fkl": 0.0, "js": math.log(2)}.get(div, 1 / float(div[6:]) if div.startswith("alpha:") else math.inf)


def brentq_solution(div, q, r, beta):
    if div == "rkl":
        return special.softmax(np.log(q) + r / beta)
    h = lambda lam: np.sum(q * finv(div, (r - lam) / beta)) - 1
    lo = np.max(r - beta * fprime(div, 1 / q))  # each single term reaches 1 here
    hi = np.max(r) - beta * fprime(div, 1.0)
    lam = optimize.brentq(h, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return q * finv(div, (r - lam) / beta)


def solve(tmp_path, div, beta, q, r):
    path = tmp_path / "p.csv"
    out = tmp_path / "pi.csv"
    write_problem(path, q, r)
    res = lab("solve", "--input", path, "--divergence", div, "--beta", beta, "--out", out)
    summary = rows(res.stdout)[0]
    pis = rows(out.read_text())
    pi = np.array([float(x["pi"]) for x in pis])
    assert np.array_equal(np.array([float(x["pi_ref"]) for x in pis]), q)  # %.17g round-trips
    return summary, pi


@pytest.mark.parametrize("div", ADMISSIBLE)
@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
def test_solve_admissible_kkt_and_brentq(tmp_path, div, beta):
    q, r = problem(60, 1)
    s, pi = solve(tmp_path, div, beta, q, r)
    lam = float(s["lambda"])
    assert abs(pi.sum() - 1) < 1e-12
    assert (pi > 0).all() and int(s["support"]) == 60
    # stationarity: r - beta f'(pi/pi_ref) - lambda = 0
    kkt = r - beta * fprime(div, pi / q) - lam
    assert np.max(np.abs(kkt)) < 1e-9, np.max(np.abs(kkt))
    ref = brentq_solution(div, q, r, beta)
    assert np.max(np.abs(pi - ref)) < 1e-12
    np.testing.assert_allclose(pi, ref, rtol=1e-9, atol=1e-300)
    # reported statistics from the reference pi
    assert float(s["expected_reward"]) == pytest.approx(np.sum(ref * r), rel=1e-11, abs=1e-12)
    assert float(s["entropy"]) == pytest.approx(-np.sum(ref * np.log(ref)), rel=1e-9, abs=1e-12)
    assert float(s["kl"]) == pytest.approx(np.sum(ref * np.log(ref / q)), rel=1e-9, abs=1e-12)
    assert float(s["f_divergence"]) == pytest.approx(np.sum(q * fdiv(div, ref / q)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("div", ["fkl", "js", "alpha:0.5", "alpha:0.3"])
def test_best_response_with_tiny_pi_ref(tmp_path, div):
    # the optimum sits within ~beta * 1e-16 of the pole of (f')^-1, below the resolution of
    # lambda itself: a solver in lambda gets sum(pi) far from 1 here. Reference: brentq in the
    # distance to the pole, eps_i = tau + (r_max - r_i)/beta, written independently below.
    q, r = problem(40, 12)
    top = np.argmax(r)
    q[top] = 1e-16
    q = q / q.sum()
    beta = 0.01
    _, pi = solve(tmp_path, div, beta, q, r)
    assert abs(pi.sum() - 1) < 1e-12
    D = (r.max() - r) / beta
    if div == "fkl":
        g = lambda e: 1 / e
    elif div == "js":
        g = lambda e: 1 / np.expm1(e)
    else:
        a = float(div[6:])
        g = lambda e: (a * e) ** (-1 / a)
    tau = optimize.brentq(lambda t: np.sum(q * g(t + D)) - 1, 1e-30, 10, xtol=1e-30, rtol=1e-15, maxiter=1000)
    np.testing.assert_allclose(pi, q * g(tau + D), rtol=1e-9, atol=1e-15)
    assert pi[top] > 0.9  # cheap to pile mass on it: these f grow slowly in u


@pytest.mark.parametrize("div", ["fkl", "js", "alpha:0.3", "alpha:0.5", "alpha:0.7", "alpha:0.9"])
@pytest.mark.parametrize("q_top", [1e-200, 1e-300])
def test_best_response_with_an_extremely_small_pi_ref(tmp_path, div, q_top):
    """pi_ref 1e-200 on the best response: the root tau ~ q_top^A sits 140-270 orders of
    magnitude below the bracket's top 1/A. Interval halving ran out of its 300 iterations with
    sum pi = 0.062 (alpha:0.7, exit 0, no word); the reference solves for log tau, so the
    terms are evaluated in logs and nothing overflows."""
    q, r = np.array([1.0, q_top]), np.array([0.0, 1.0])
    beta = 0.1
    path, out = tmp_path / "p.csv", tmp_path / "pi.csv"
    write_problem(path, q, r)
    s = rows(lab("solve", "--data", path, "--divergence", div, "--beta", beta, "--out", out).stdout)[0]
    pi = np.array([float(x["pi"]) for x in rows(out.read_text())])
    D = (r.max() - r) / beta
    if div == "fkl":
        log_g = lambda e: -np.log(e)
    elif div == "js":
        log_g = lambda e: -np.log(np.expm1(e))
    else:
        a = float(div[6:])
        log_g = lambda e: -np.log(a * e) / a
    def terms(lt):
        with np.errstate(divide="ignore", over="ignore"):   # the bracket's low end is the pole
            return np.exp(np.log(q) + log_g(np.exp(lt) + D))
    lt = optimize.brentq(lambda lt: np.sum(terms(lt)) - 1, -1500, 5, xtol=1e-14, rtol=1e-15, maxiter=1000)
    np.testing.assert_allclose(pi, terms(lt), rtol=1e-9)
    assert abs(pi.sum() - 1) < 1e-12 and float(s["expected_reward"]) == pytest.approx(pi[1], rel=1e-12)


def test_fkl_with_rewards_whose_gap_overflows(tmp_path):
    """rewards 1e308 and -1e308: r_max - r overflows, and fkl's D_f and objective came out inf
    and -inf. u = 2 on the best response, 1/eps with eps = 2e308/beta on the other, so
    D_f = (-log 2 + log(2e309)) / 2, computed here in logs."""
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward\n0.5,1e308\n0.5,-1e308\n")
    s = rows(lab("solve", "--data", p, "--divergence", "fkl", "--beta", "0.1").stdout)[0]
    want = 0.5 * (-math.log(2) + math.log(2) + 308 * math.log(10) + math.log(10))
    assert float(s["f_divergence"]) == pytest.approx(want, rel=1e-12)
    assert float(s["objective"]) == pytest.approx(1e308 - 0.1 * want, rel=1e-12)


def mp_lambda(div, q, r, beta, pi):
    """lambda from KKT, r_i - beta f'(pi_i/q_i) - lambda = 0, at the best response (in every support)"""
    import mpmath as mp
    i = int(np.argmax(r))
    A = mp.mpf(div[6:]) if div.startswith("alpha:") else None
    u = pi[i] / mp.mpf(float(q[i]))
    fp = {"rkl": lambda: mp.log(u) + 1, "fkl": lambda: -1 / u, "js": lambda: mp.log(2 * u / (1 + u)),
          "chi2": lambda: 2 * (u - 1)}.get(div, lambda: (1 - u ** (-A)) / A)()
    return mp.mpf(float(r[i])) - mp.mpf(float(beta)) * fp


@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5", "alpha:0.3", "chi2"])
@pytest.mark.parametrize("q,r,beta", [([0.5, 0.5], [1e308, -1e308], 1e308),
                                      ([0.3, 0.3, 0.4], [1.5e308, -1.5e308, 1e308], 1.7e308),
                                      ([0.3, 0.3, 0.4], [1.5e308, -1.5e308, 1e308], 1e300)])
def test_rewards_whose_spread_overflows(tmp_path, div, q, r, beta):
    """rewards 1e308 and -1e308: r_max - r overflowed to inf, so at beta = 1e308 the worse
    response's (r_max - r)/beta = 2 read inf: point masses for rkl/fkl/js/chi2, an alpha:0.5
    policy summing to 1.5, lambda -inf or NaN, all with exit 0. pi*, every statistic and lambda
    against the 60-digit mpmath optimum (chi2: exact rationals), which has no overflow to avoid."""
    q, r = np.array(q), np.array(r)
    s, pi = solve(tmp_path, div, beta, q, r)
    ref = mp_optimum(div, q, r, beta)
    np.testing.assert_allclose(pi, [float(x) for x in ref], rtol=1e-12, atol=1e-300)
    assert int(s["support"]) == sum(float(x) > 0 for x in ref)   # at 1e300 some pi* underflow
    assert_stats(s, div, q, r, beta, ref, rel=1e-12, abs_=1e-13)
    assert float(s["lambda"]) == pytest.approx(float(mp_lambda(div, q, r, beta, ref)), rel=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_rkl_is_softmax_to_rounding(tmp_path, beta):
    q, r = problem(200, 2, zipf=False)
    _, pi = solve(tmp_path, "rkl", beta, q, r)
    ref = special.softmax(np.log(q) + r / beta)
    np.testing.assert_allclose(pi, ref, rtol=1e-12, atol=1e-300)


def regularised(div, q, r, beta, pi):
    return pi @ r - beta * np.sum(q * fdiv(div, pi / q))


@pytest.mark.filterwarnings("ignore:Values in x were outside bounds")
@pytest.mark.parametrize("div", ADMISSIBLE + ["chi2"])
def test_direct_constrained_optimisation_small_n(tmp_path, div):
    q, r = problem(6, 3)
    beta = 0.4
    _, pi = solve(tmp_path, div, beta, q, r)
    lb = 0.0 if div == "chi2" else 1e-12
    res = optimize.minimize(lambda p: -regularised(div, q, r, beta, p), q, method="SLSQP",
                            bounds=[(lb, 1)] * 6, constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1}],
                            options={"ftol": 1e-15, "maxiter": 1000})
    assert res.success, res.message
    np.testing.assert_allclose(pi, res.x, atol=2e-6)
    # and ours is at least as good as the optimiser's point
    assert regularised(div, q, r, beta, pi) >= regularised(div, q, r, beta, np.clip(res.x, lb, 1)) - 1e-12


def test_chi2_loses_support_and_satisfies_kkt(tmp_path):
    q, r = problem(80, 4)
    beta = 0.1
    s, pi = solve(tmp_path, "chi2", beta, q, r)
    lam = float(s["lambda"])
    on = pi > 0
    assert 0 < on.sum() < 80
    assert int(s["support"]) == on.sum() and int(s["support_lost"]) == 80 - on.sum()
    assert abs(pi.sum() - 1) < 1e-12
    assert np.max(np.abs(r[on] - beta * 2 * (pi[on] / q[on] - 1) - lam)) < 1e-9
    # off the support mu = lambda - r + beta f'(0) >= 0 with f'(0) = -2
    assert np.all(lam - r[~on] - 2 * beta >= -1e-12)
    # independent: the closed form with lambda from brentq
    h = lambda l: np.sum(q * np.maximum(0, 1 + (r - l) / (2 * beta))) - 1
    lam_ref = optimize.brentq(h, r.min() - 10, r.max() + 10, xtol=1e-15)
    np.testing.assert_allclose(pi, q * np.maximum(0, 1 + (r - lam_ref) / (2 * beta)), atol=1e-13)


# ---- tiny (and huge) beta: every solution a distribution, against exact references ----

def chi2_exact(q, r, beta):
    """chi2's optimum in exact rational arithmetic (the doubles read as Fractions): the support
    S whose multiplier satisfies KKT -- pi_i = q_i (r_i - t)/(2 beta) > 0 on S and r_j <= t off S,
    t = (sum_S q r - 2 beta)/sum_S q (mu_j = t - r_j >= 0); lambda = t + 2 beta. Every top-k set
    by reward is tried and the KKT conditions decide."""
    from fractions import Fraction as Fr
    Q, R, B = [Fr(float(x)) for x in q], [Fr(float(x)) for x in r], Fr(float(beta))
    order = sorted(range(len(Q)), key=lambda i: -R[i])
    for k in range(1, len(Q) + 1):
        S = order[:k]
        t = (sum(Q[i] * R[i] for i in S) - 2 * B) / sum(Q[i] for i in S)
        if all(R[i] > t for i in S) and all(R[j] <= t for j in order[k:]):
            pi = [Fr(0)] * len(Q)
            for i in S:
                pi[i] = Q[i] * (R[i] - t) / (2 * B)
            return pi, t + 2 * B
    raise AssertionError("no top-k set satisfies KKT")


def mp_optimum_mpf(div, Q, R, B, iters=260):
    """argmax E_pi[R] - B D_f(pi || Q) for mpf Q (any exponent: a pi_ref below doubles' range), R,
    B, at the caller's mp.dps: rkl a softmax shifted by R_max; fkl/js/alpha pi_i = Q_i g(tau +
    D_i), D_i = (R_max - R_i)/B, g = 1/e, 1/expm1(e), (A e)^(-1/A) ((f')^-1 measured from its
    pole), tau > 0 bisected geometrically from 1e-100000 (iters halvings of its log range)."""
    import mpmath as mp
    rmax = max(R)
    if div == "rkl":
        w = [Qi * mp.exp((Ri - rmax) / B) for Qi, Ri in zip(Q, R)]
        z = mp.fsum(w)
        return [x / z for x in w]
    D = [(rmax - Ri) / B for Ri in R]
    if div == "fkl":
        g, hi = (lambda e: 1 / e), mp.mpf(1)
    elif div == "js":
        g, hi = (lambda e: 1 / mp.expm1(e)), mp.log(2)
    else:
        A = mp.mpf(float(div[6:]))   # the double fdpo parses
        g, hi = (lambda e: (A * e) ** (-1 / A)), 1 / A
    h = lambda t: mp.fsum(Qi * g(t + Di) for Qi, Di in zip(Q, D)) - 1
    lo = mp.mpf("1e-100000")
    assert h(lo) > 0 >= h(hi)
    for _ in range(iters):
        mid = mp.sqrt(lo * hi)
        lo, hi = (mid, hi) if h(mid) > 0 else (lo, mid)
    return [Qi * g(hi + Di) for Qi, Di in zip(Q, D)]


def mp_optimum(div, q, r, beta, dps=60):
    """pi* in 60-digit mpmath from doubles, where r/beta cannot overflow (mp_optimum_mpf; chi2
    exact, chi2_exact). A subnormal pi_ref needs more digits (dps): 1 - 1e-160 must not round to 1."""
    import mpmath as mp
    mp.mp.dps = dps
    Q, R, B = [mp.mpf(float(x)) for x in q], [mp.mpf(float(x)) for x in r], mp.mpf(float(beta))
    if div == "chi2":
        return [mp.mpf(x.numerator) / x.denominator for x in chi2_exact(q, r, beta)[0]]
    return mp_optimum_mpf(div, Q, R, B, 260 if dps == 60 else 4 * dps)


def mp_stats(div, q, r, beta, pi):
    import mpmath as mp
    Q, R, B = [mp.mpf(float(x)) for x in q], [mp.mpf(float(x)) for x in r], mp.mpf(float(beta))

    def f(u):
        if div == "rkl":
            return u * mp.log(u) if u > 0 else mp.mpf(0)
        if div == "fkl":
            return -mp.log(u)
        if div == "js":
            return (u * mp.log(u) if u > 0 else 0) - (u + 1) * mp.log((u + 1) / 2)
        if div.startswith("alpha:"):
            A = mp.mpf(div[6:])
            return (u ** (1 - A) - (1 - A) * u - A) / (A * (A - 1))
        if div == "tv":
            return abs(u - 1) / 2
        return (u - 1) ** 2

    er = mp.fsum(p * Ri for p, Ri in zip(pi, R))
    fd = mp.fsum(Qi * f(p / Qi) for p, Qi in zip(pi, Q))
    return {"expected_reward": er, "entropy": -mp.fsum(p * mp.log(p) for p in pi if p > 0),
            "kl": mp.fsum(p * mp.log(p / Qi) for p, Qi in zip(pi, Q) if p > 0),
            "f_divergence": fd, "objective": er - B * fd}


def tiny_beta_problem(scale):
    """12 responses, a tie for the best reward (the limit splits its mass in proportion to
    pi_ref), rewards scaled by `scale` (1e-300: the gaps themselves are tiny)"""
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(12))
    base = rng.normal(size=12)
    base[5] = base.max()
    return q / q.sum(), base * scale


TINY = [(1, 1e-3), (1, 1e-17), (1, 1e-300), (1e-17, 0.3), (1e-300, 0.3), (1e-300, 1e-3)]


@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5", "alpha:0.3", "chi2"])
@pytest.mark.parametrize("scale,rel_beta", TINY)
def test_tiny_beta_is_the_optimum(tmp_path, div, scale, rel_beta):
    """beta from 1e-3 down to 1e-300 (and rewards whose gaps are 1e-300): pi is a distribution
    equal to a 60-digit mpmath optimum (chi2: exact rationals), and every statistic is finite
    and equal to the reference's. Before: chi2 lost its support (lambda NaN, pi NaN) at
    beta = 1e-17, js's f_divergence was NaN once (r_max - r)/beta > 709."""
    q, r = tiny_beta_problem(scale)
    beta = rel_beta * scale
    s, pi = solve(tmp_path, div, beta, q, r)
    assert np.all(pi >= 0) and abs(pi.sum() - 1) <= 1e-12
    ref = mp_optimum(div, q, r, beta)
    np.testing.assert_allclose(pi, [float(x) for x in ref], rtol=0, atol=1e-14)
    assert int(s["support"]) == np.count_nonzero(pi)
    for key, val in mp_stats(div, q, r, beta, ref).items():
        assert math.isfinite(float(s[key])), (key, s)
        assert float(s[key]) == pytest.approx(float(val), rel=1e-10, abs=1e-13 * (scale + beta) if key != "entropy" else 1e-13), key
    if rel_beta <= 1e-3 and div != "fkl" and div != "alpha:0.5" and div != "alpha:0.3":
        # the limit beta -> 0 for these f: all the mass on the tied best, split as pi_ref
        top = r == r.max()
        np.testing.assert_allclose(pi[top], q[top] / q[top].sum(), rtol=1e-12)


@pytest.mark.parametrize("div", ["js", "alpha:0.1", "alpha:0.5", "fkl", "rkl", "chi2"])
# (pi_ref 5e-10 over 1 at beta 1e12: the reference's bracket, all u <= 1 at the pole's end, does
# not hold: D_f ~ 1e-25 there is below what such a pi_ref defines anyway)
@pytest.mark.parametrize("beta,qs", [(b, q) for b in (1e2, 1e4, 1e8, 1e12) for q in ("exact", "rounded", "off")
                                     if not (b == 1e12 and q == "off")])
def test_large_beta_f_divergence_is_the_optimums(tmp_path, div, beta, qs):
    """A large beta puts pi* within O(1/beta) of pi_ref and D_f ~ Var(r)/(2 f''(1) beta^2): js's
    f, as u log u - (u+1)(e + log u - log 2), left an absolute 1e-16 that made D_f -3e-17 at
    beta = 1e8; alpha's u w - (1-A) u - A left 3e-16 at u = 1 (the objective, E[r] - beta D_f,
    went to -3e4 at 1e20); rkl's and fkl's (f'(1) != 0) carried the normalisation's rounding to
    first order (-1e-16 against 7.6e-18); chi2's KL (and tv's) was summed as pi log(pi/pi_ref),
    terms ~1/beta cancelling to ~1/beta^2 (0.19 % off at 1e6, negative at 1e8), now in the other
    divergences' second-order kl_term (reference: exact rationals). Against the 60-digit mpmath optimum: D_f within 1e-6
    relative up to beta = 1e8, E[r] to 1e-12, and the objective within 1e-15 * beta (D_f's own
    rounding times beta). At 1e12, u - 1 ~ 1e-12 is known to ~2e-16 absolute (the rounding of
    the distance to the pole, or of log Z, near 0.69), so D_f ~ (u - 1)^2 to ~1e-3 relative:
    the floor of doubles, tested at 1e-2."""
    # pi_ref summing to 1 in doubles, to 1 - 1.1e-16 (0.6 + 0.3 + 0.1), and to 1 + 5e-10 (the
    # loader keeps it as given within 1e-9): the second-order forms leave out 1 - sum q, which
    # is added back (a review measured KL 80 % off at 1e8 before)
    q = {"exact": [0.5, 0.3, 0.2], "rounded": [0.6, 0.3, 0.1], "off": [0.5, 0.3, 0.2000000005]}[qs]
    q, r = np.array(q), np.array([1.0, 0.5, 0.0])
    s, _ = solve(tmp_path, div, beta, q, r)
    ref = mp_stats(div, q, r, beta, mp_optimum(div, q, r, beta))
    assert float(s["kl"]) == pytest.approx(float(ref["kl"]), rel=1e-6 if beta <= 1e8 else 1e-2, abs=0), (s, ref["kl"])
    assert float(s["f_divergence"]) == pytest.approx(float(ref["f_divergence"]), rel=1e-6 if beta <= 1e8 else 1e-2, abs=0), \
        (s, ref["f_divergence"])
    assert float(s["expected_reward"]) == pytest.approx(float(ref["expected_reward"]), rel=1e-12, abs=0), s
    assert abs(float(s["objective"]) - float(ref["objective"])) <= 1e-15 * beta, (s, ref["objective"])


def test_frontier_chi2_kl_at_a_large_beta(tmp_path):
    """frontier's x-axis, KL(pi* || pi_ref), for chi2 at beta 1e4..1e8 (pi_ref summing to 1 exactly
    in doubles): it read 5.9333e-14 at 1e6 (-0.19 %) and -9.9e-17 at 1e8 against 5.9448e-18.
    Reference: chi2's optimum in exact rationals, its KL in 50-digit mpmath."""
    import mpmath as mp
    q, r, betas = np.array([0.5, 0.25, 0.125, 0.125]), np.array([1.0, 0.5, -0.25, -1.0]), [1e4, 1e6, 1e8]
    path = tmp_path / "p.csv"
    write_problem(path, q, r)
    got = rows(lab("frontier", "--data", path, "--divergence", "chi2", "--betas", ",".join(map(repr, betas)),
                   "--threads", 1).stdout)
    mp.mp.dps = 50
    for row, beta in zip(got, betas):
        pi, _ = chi2_exact(q, r, beta)
        want = mp.fsum(mp.mpf(p.numerator) / p.denominator * mp.log(mp.mpf(p.numerator) / p.denominator / mp.mpf(float(qi)))
                       for p, qi in zip(pi, q))
        assert float(row["kl"]) == pytest.approx(float(want), rel=1e-6, abs=0), (beta, row["kl"], want)


def test_kl_with_a_subnormal_pi_ref_at_a_small_beta(tmp_path):
    """u = pi/pi_ref overflows for pi_ref = 4.9e-324 (log u ~ 744) while pi does not: rkl's
    second-order KL term u log u - u + 1 was inf - inf = NaN; it is taken from pi there."""
    q, r = np.array([1.0, 4.9e-324]), np.array([0.0, 1.0])
    s, _ = solve(tmp_path, "rkl", 1e-3, q, r)
    ref = mp_stats("rkl", q, r, 1e-3, mp_optimum("rkl", q, r, 1e-3))
    for key in ("kl", "f_divergence"):
        assert float(s[key]) == pytest.approx(float(ref[key]), rel=1e-12, abs=0), (key, s, ref[key])


# ---- best responses whose pi_ref is tiny or subnormal: the terms that overflow ----
# pi = pi_ref u with u = pi/pi_ref ~ 1/pi_ref: u itself overflows for pi_ref < 5.6e-309, and
# q f(u) for js (u log u) past u ~ 2.5e305, for tv (u/2) or rkl (u log u) where u does, though
# p f(u)/u is finite. The references are mp_optimum/mp_stats (60 digits; 400 for a subnormal
# pi_ref, whose effects sit 1e-160 below 1). Tolerances: 1e-12 relative: the forms used there
# (p f(u)/u from log u ~ 700, exp of ~700 logs for alpha) are good to ~|log u| 1e-16 = 2e-13;
# the entropy absolutely to 1e-12: its top term p (log pi_ref + log u) adds two logs of ~700.

PEAKED_Q = [0.6439142598879724, 0.23688281808991013, 0.08714431874203257, 0.03205860328008499, 4.277778576239223e-307]
PEAKED_R = [0.1, 0.3, -0.2, 0.5, 1.0]   # pi_ref = softmax(0, -1, -2, -3, -705): the best response's u ~ 2e306


def assert_stats(got, div, q, r, beta, pi_ref_mp, keys=("expected_reward", "entropy", "kl", "f_divergence", "objective"),
                 rel=1e-12, abs_=0):
    want = mp_stats(div, q, r, beta, pi_ref_mp)
    for key in keys:
        assert math.isfinite(float(got[key])), (key, got)
        tol = max(abs_, 1e-12) if key == "entropy" else abs_
        assert float(got[key]) == pytest.approx(float(want[key]), rel=rel, abs=tol), (key, got[key], float(want[key]))


@pytest.mark.parametrize("beta", [0.01, 0.05, 0.1, 1.0])
def test_js_with_a_tiny_normal_pi_ref_on_the_best_response(tmp_path, beta):
    """js's f = u log u - (u+1)(...) was inf - inf for the best response's u ~ 2e306: f_divergence
    and objective NaN in solve and frontier (JSON null). D_f <= 2 log 2 for js always."""
    q, r = np.array(PEAKED_Q), np.array(PEAKED_R)
    s, pi = solve(tmp_path, "js", beta, q, r)
    ref = mp_optimum("js", q, r, beta)
    np.testing.assert_allclose(pi, [float(x) for x in ref], rtol=1e-12, atol=0)
    assert_stats(s, "js", q, r, beta, ref)
    assert float(s["f_divergence"]) <= 2 * math.log(2)
    fr = rows(lab("frontier", "--data", tmp_path / "p.csv", "--divergence", "js", "--betas", repr(beta)).stdout)[0]
    assert_stats(fr, "js", q, r, beta, ref, keys=("expected_reward", "kl", "f_divergence"))
    # constrained solves through the same solver: a safety bound the optimum already meets
    c = tmp_path / "c.csv"
    write_problem(c, q, r, {"safety": [1.0, 0.0, 1.0, 0.0, 0.5]})
    ct = rows(lab("constrained", "--data", c, "--divergence", "js", "--beta", repr(beta), "--min-safety", "0.2").stdout)[0]
    assert ct["active"] == "0"
    assert_stats(ct, "js", q, r, beta, ref, keys=("expected_reward", "kl", "f_divergence", "objective"))


def test_js_on_a_generated_dirichlet_problem():
    """the generator's own problems: Dirichlet(0.01) floors its components at DBL_MIN, and at
    seed 854 the best response has pi_ref 2.2e-308; frontier's f_divergence was nan (the hunt's
    mpmath: 1.3862943611198906, objective 1.99157163)"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pi.csv")
        args = ["--pi-ref", "dirichlet", "--dirichlet-alpha", "0.01", "--n", "50", "--divergence", "js", "--seed", "854"]
        s = rows(lab("solve", *args, "--beta", "0.01", "--out", out).stdout)[0]
        p = rows(open(out).read())
    fr = rows(lab("frontier", *args, "--betas", "0.01").stdout)[0]
    q, r = np.array([float(x["pi_ref"]) for x in p]), np.array([float(x["reward"]) for x in p])
    ref = mp_optimum("js", q, r, 0.01)
    assert_stats(s, "js", q, r, 0.01, ref)
    assert_stats(fr, "js", q, r, 0.01, ref, keys=("expected_reward", "kl", "f_divergence"))
    assert float(fr["f_divergence"]) <= 2 * math.log(2)


def mp_objective_gap(div, q, r, rh, beta):
    """E_r[pi*] - E_r[pi_hat] and the objective gap under the true r, pi_hat solved on rh"""
    ps, ph = mp_optimum(div, q, r, beta), mp_optimum(div, q, rh, beta)
    a, b = mp_stats(div, q, r, beta, ps), mp_stats(div, q, r, beta, ph)
    return a["expected_reward"] - b["expected_reward"], a["objective"] - b["objective"]


@pytest.mark.parametrize("q_top,div,beta", [(1e-306, "rkl", 0.001), (1e-306, "js", 0.001), (4.9e-324, "rkl", 0.001),
                                            (4.9e-324, "js", 0.01), (4.9e-324, "alpha:0.5", 0.01), (4.9e-324, "tv", 0.01)])
def test_gap_evaluates_pi_hat_where_u_overflows(tmp_path, q_top, div, beta):
    """gap judges pi_hat by fdpo_lab_evaluate, whose q f(u) overflowed where pi_hat sits on a
    response with a tiny pi_ref: u log u = inf past u ~ 2.5e305 (rkl's objective_gap was inf,
    js's nan) and u = pi/pi_ref = inf for 4.9e-324 (tv's nan). pi* and pi_hat both sit on the
    second response, so the gap is ~0."""
    p = tmp_path / "p.csv"
    q, r, rh = np.array([1.0, q_top]), np.array([0.0, 1.0]), np.array([0.01, 1.02])
    write_problem(p, q, r, {"reward_hat": rh})
    g = rows(lab("gap", "--data", p, "--divergence", div, "--betas", repr(beta)).stdout)[0]
    if div == "tv":   # the closed form: all mass moves to the best response under either reward
        rg = og = 0
    else:
        rg, og = mp_objective_gap(div, q, r, rh, beta)
    assert float(g["reward_gap"]) == pytest.approx(float(rg), abs=1e-15)
    # the two objectives (~1 - beta * 700) come from the solver's and the evaluator's forms
    assert float(g["objective_gap"]) == pytest.approx(float(og), abs=1e-15)


def test_gap_on_generated_problems_with_tiny_pi_ref():
    """Dirichlet(0.01) prompts (seed 3, 30 prompts, --export-problem): rkl's objective_gap at
    beta 0.001 was inf and js's nan; the reference solves every prompt in mpmath"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        exp = os.path.join(d, "problem.csv")
        t = rows(lab("gap", "--pi-ref", "dirichlet", "--dirichlet-alpha", "0.01", "--n", "20", "--prompts", "30",
                     "--divergence", "rkl,js", "--betas", "0.001,0.01", "--seed", "3", "--export-problem", exp).stdout)
        data = rows(open(exp).read())
    for row in t:
        div, beta = row["divergence"], float(row["beta"])
        og = 0
        for x in range(30):
            e = [v for v in data if int(v["prompt"]) == x]
            q, r, rh = ([float(v[k]) for v in e] for k in ("pi_ref", "reward", "reward_hat"))
            og += mp_objective_gap(div, q, r, rh, beta)[1] / 30
        assert float(row["objective_gap"]) == pytest.approx(float(og), rel=1e-12), row


def test_coverage_js_evaluates_pi_hat_on_a_tiny_pi_ref(tmp_path):
    """coverage's pi_hat (from the Bradley-Terry fit; uniform pairs compare the 4e-307 response
    too, which wins) put its mass where u ~ 2e306: js's objective_gap was nan"""
    p, fit = tmp_path / "p.csv", tmp_path / "fit.csv"
    q, r, beta = np.array(PEAKED_Q), np.array(PEAKED_R), 0.05
    write_problem(p, q, r)
    t = rows(lab("coverage", "--data", p, "--data-policy", "uniform", "--comparisons", "30,300", "--divergence", "js",
                 "--beta", repr(beta), "--export-fit", fit).stdout)
    fits = rows(fit.read_text())
    for row in t:
        th = [float(e["reward_hat"]) for e in fits if e["n_comparisons"] == row["n_comparisons"]]
        rg, og = mp_objective_gap("js", q, r, th, beta)
        assert float(row["reward_gap"]) == pytest.approx(float(rg), rel=1e-9, abs=1e-15)
        assert float(row["objective_gap"]) == pytest.approx(float(og), rel=1e-9, abs=1e-15)


def test_tv_with_a_subnormal_pi_ref_on_the_best_response(tmp_path):
    """pi = (0, 1) on pi_ref (1, 4.9e-324): q |u - 1|/2 was 4.9e-324 * inf; D_TV = 1 exactly"""
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward\n1,0\n4.9e-324,1\n")
    s = rows(lab("solve", "--data", p, "--divergence", "tv", "--beta", "0.1").stdout)[0]
    assert (float(s["f_divergence"]), float(s["objective"]), float(s["expected_reward"])) == (1.0, 1 - 0.1, 1.0)


D3_CASES = [("fkl", 0.1), ("fkl", 0.3), ("js", 0.1), ("js", 1.0), ("alpha:0.5", 0.1), ("alpha:0.3", 0.1),
            ("alpha:0.96", 0.1), ("alpha:0.99", 0.1)]


@pytest.mark.parametrize("div,beta", D3_CASES)
def test_subnormal_pi_ref_on_the_best_response(tmp_path, div, beta):
    """pi_ref (1, 1e-320), r = (0, 1): the root tau ~ 1e-320 is itself subnormal (11 bits) and
    u = 1/tau overflowed, so pi = q * inf: "did not converge" (exit 1). pi* ~ (0.1, 0.9) for fkl
    at beta 0.1, (0.58, 0.42) for js at 1."""
    q, r = np.array([1.0, 1e-320]), np.array([0.0, 1.0])
    s, pi = solve(tmp_path, div, beta, q, r)
    ref = mp_optimum(div, q, r, beta, dps=400)
    # atol: the solver stops at |sum pi - 1| <= 1e-15 (fkl at beta 1 has pi* = (1 - 1e-160, 1e-160))
    np.testing.assert_allclose(pi, [float(x) for x in ref], rtol=1e-12, atol=1e-15)
    assert abs(pi.sum() - 1) <= 1e-12   # the solver's promise; alpha's terms from ~700 logs: ~1e-13
    assert_stats(s, div, q, r, beta, ref)


def test_subnormal_pi_ref_all_divergences_and_frontier(tmp_path):
    """--divergence all printed the header and the rkl row, then failed on fkl"""
    q, r = np.array([1.0, 1e-320]), np.array([0.0, 1.0])
    p = tmp_path / "p.csv"
    write_problem(p, q, r)
    t = rows(lab("solve", "--data", p, "--divergence", "all", "--beta", "0.1").stdout)
    assert [x["divergence"] for x in t] == ["rkl", "fkl", "js", "alpha:0.5", "tv", "chi2"]
    for row in t:
        div = row["divergence"]
        if div == "tv":
            assert (float(row["f_divergence"]), float(row["expected_reward"])) == (1.0, 1.0)
            continue
        # rkl and chi2 leave the subnormal response a subnormal pi (2e-316, 5e-320): absolute
        assert_stats(row, div, q, r, 0.1, mp_optimum(div, q, r, 0.1, dps=400), rel=1e-12,
                     abs_=1e-318 if div in ("rkl", "chi2") else 0)
    fr = rows(lab("frontier", "--data", p, "--divergence", "rkl,fkl", "--betas", "0.1").stdout)
    assert [x["divergence"] for x in fr] == ["rkl", "fkl"]
    assert float(fr[1]["expected_reward"]) == pytest.approx(float(mp_stats("fkl", q, r, 0.1, mp_optimum("fkl", q, r, 0.1, dps=400))["expected_reward"]), rel=1e-12)

@pytest.mark.parametrize("beta", [1e-3, 1e-6, 1e-17, 1e-30, 1e-300])
def test_chi2_small_beta_point_mass(tmp_path, beta):
    """the reported case: r = 1, 0, -1; at beta = 1e-17 lambda was NaN, pi NaN, support 0"""
    q, r = np.array([0.5, 0.3, 0.2]), np.array([1.0, 0.0, -1.0])
    s, pi = solve(tmp_path, "chi2", beta, q, r)
    ref, lam = chi2_exact(q, r, beta)
    assert list(pi) == [float(x) for x in ref] == [1.0, 0.0, 0.0]
    assert float(s["lambda"]) == pytest.approx(float(lam), rel=1e-15)
    assert (int(s["support"]), float(s["expected_reward"]), float(s["entropy"]), float(s["f_divergence"])) == (1, 1.0, 0.0, 1.0)


@pytest.mark.parametrize("scale,rel_beta", [(1, 3.0), (1, 0.3), (1, 0.03), (1e-17, 0.3), (1e-300, 0.3), (1e-300, 0.03)])
def test_chi2_exact_rationals(tmp_path, scale, rel_beta):
    """chi2 at every scale against the exact KKT optimum in rationals: pi to 1e-15, lambda"""
    q, r = tiny_beta_problem(scale)
    beta = rel_beta * scale
    s, pi = solve(tmp_path, "chi2", beta, q, r)
    ref, lam = chi2_exact(q, r, beta)
    np.testing.assert_allclose(pi, [float(x) for x in ref], rtol=0, atol=1e-15)
    assert [p > 0 for p in pi] == [x > 0 for x in ref]
    assert float(s["lambda"]) == pytest.approx(float(lam), rel=1e-13)


@pytest.mark.parametrize("scale,rel_beta", [(1, 1e-3), (1, 1e-17), (1, 1e-300), (1e-300, 0.3), (1, 0.4)])
def test_tv_small_beta_meets_the_dual_bound(tmp_path, scale, rel_beta):
    """tv: the objective of pi (in exact rationals) equals the Lagrangian dual bound at
    lambda = r_max - beta/2, U = lambda + sum_{r >= r_max - beta} q (r - lambda) - beta/2 sum_{else} q,
    which bounds every distribution's objective from above (weak duality)"""
    from fractions import Fraction as Fr
    q, r = tiny_beta_problem(scale)
    beta = rel_beta * scale
    s, pi = solve(tmp_path, "tv", beta, q, r)
    assert np.all(pi >= 0) and abs(pi.sum() - 1) <= 1e-12
    Q, R, B, P = ([Fr(float(x)) for x in v] for v in (q, r, [beta], pi))
    B = B[0]
    lam = max(R) - B / 2
    U = lam + sum(Qi * (Ri - lam) if Ri >= max(R) - B else -B / 2 * Qi for Qi, Ri in zip(Q, R))
    obj = sum(p * Ri for p, Ri in zip(P, R)) - B / 2 * sum(abs(p - Qi) for p, Qi in zip(P, Q))
    assert abs(float(obj - U)) <= 1e-14 * (scale + beta)
    assert float(s["objective"]) == pytest.approx(float(U), rel=1e-12, abs=1e-14 * (scale + beta))


def test_frontier_subnormal_and_huge_beta_are_distributions(tmp_path):
    """frontier at beta = 1e-320 (subnormal) and 1.7e308: finite rows equal to the mpmath
    optimum's statistics. rkl had no mass at all at 1e-320 (E[r] 0, support 0), fkl an infinite
    D_f, js and alpha NaN; chi2 was NaN at 1.7e308 (2 beta overflowed)."""
    q, r = tiny_beta_problem(1)
    p = tmp_path / "p.csv"
    write_problem(p, q, r)
    betas = [1e-320, 1.7e308]
    t = rows(lab("frontier", "--data", p, "--divergence", "rkl,fkl,js,alpha:0.5,tv,chi2",
                 "--betas", ",".join(map(repr, betas))).stdout)
    assert len(t) == 12
    for row in t:
        div, beta = row["divergence"], float(row["beta"])
        for key in ("expected_reward", "entropy", "kl", "f_divergence"):
            assert math.isfinite(float(row[key])), row
        assert int(row["support"]) >= 1
        if div == "tv":
            continue   # the closed form: tested against the dual bound above
        ref = mp_optimum(div, q, r, beta)
        st = mp_stats(div, q, r, beta, ref)
        for key in ("expected_reward", "kl", "f_divergence"):
            assert float(row[key]) == pytest.approx(float(st[key]), rel=1e-9, abs=1e-12), (row, key)
        assert float(row["entropy"]) == pytest.approx(float(st["entropy"]), abs=1e-12), row


@pytest.mark.parametrize("beta", [0.05, 0.5, 5.0])
def test_tv_equals_linprog(tmp_path, beta):
    n = 40
    q, r = problem(n, 5)
    s, pi = solve(tmp_path, "tv", beta, q, r)
    # variables [pi, t]: min -r.pi + beta/2 sum t, t >= |pi - q|, sum pi = 1, pi >= 0
    c = np.concatenate([-r, np.full(n, beta / 2)])
    I = np.eye(n)
    A_ub = np.block([[I, -I], [-I, -I]])
    b_ub = np.concatenate([q, -q])
    A_eq = np.concatenate([np.ones(n), np.zeros(n)])[None, :]
    lp = optimize.linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1], bounds=[(0, None)] * (2 * n), method="highs")
    assert lp.status == 0
    np.testing.assert_allclose(pi, lp.x[:n], atol=1e-9)
    assert regularised("tv", q, r, beta, pi) == pytest.approx(-lp.fun, abs=1e-12)
    assert float(s["lambda"]) == pytest.approx(r.max() - beta / 2, abs=1e-15)
    lost = int(np.sum(r < r.max() - beta))
    assert int(s["support_lost"]) == lost


def test_frontier_columns_determinism_and_threads(tmp_path):
    args = ["frontier", "--n", "300", "--seed", "7", "--divergence", "rkl,js,tv,chi2", "--n-betas", "5"]
    a = lab(*args, "--threads", "1").stdout
    b = lab(*args, "--threads", "2").stdout
    c = lab(*args, "--threads", "2").stdout
    assert a == b == c
    t = rows(a)
    assert list(t[0].keys()) == ["divergence", "beta", "expected_reward", "entropy", "kl", "f_divergence", "support"]
    assert len(t) == 4 * 5
    betas = sorted({float(x["beta"]) for x in t})
    np.testing.assert_allclose(betas, np.geomspace(0.01, 10, 5), rtol=1e-14)
    assert betas[0] == 0.01 and betas[-1] == 10   # the ends exactly (0.010000000000000004 did not join --betas 0.01)
    # reverse-KL rows equal an independent softmax on the same (exported) problem
    out = tmp_path / "pi.csv"
    lab("solve", "--n", "300", "--seed", "7", "--divergence", "rkl", "--out", out)
    p = rows(out.read_text())
    q = np.array([float(x["pi_ref"]) for x in p])
    r = np.array([float(x["reward"]) for x in p])
    for row in t:
        if row["divergence"] != "rkl":
            continue
        beta = float(row["beta"])
        pi = special.softmax(np.log(q) + r / beta)
        assert float(row["expected_reward"]) == pytest.approx(pi @ r, rel=1e-12)
        assert float(row["kl"]) == pytest.approx(np.sum(special.rel_entr(pi, q)), rel=1e-9, abs=1e-13)
        assert float(row["entropy"]) == pytest.approx(special.entr(pi).sum(), rel=1e-9, abs=1e-13)


def test_solve_several_divergences_writes_one_column_each(tmp_path):
    q, r = problem(20, 9)
    p, out = tmp_path / "p.csv", tmp_path / "pi.csv"
    write_problem(p, q, r)
    s = rows(lab("solve", "--input", p, "--divergence", "rkl,tv,chi2", "--beta", "0.2", "--out", out).stdout)
    assert [x["divergence"] for x in s] == ["rkl", "tv", "chi2"]
    t = rows(out.read_text())
    assert list(t[0].keys()) == ["pi_ref", "reward", "pi_rkl", "pi_tv", "pi_chi2"]
    np.testing.assert_allclose([float(x["pi_rkl"]) for x in t], special.softmax(np.log(q) + r / 0.2), rtol=1e-12)
    for name in ("pi_tv", "pi_chi2"):
        pi = np.array([float(x[name]) for x in t])
        assert abs(pi.sum() - 1) < 1e-12 and (pi >= 0).all()


def test_frontier_json(tmp_path):
    import json
    out = json.loads(lab("frontier", "--n", "50", "--divergence", "fkl", "--betas", "0.1,1", "--format", "json").stdout)
    assert [o["beta"] for o in out] == [0.1, 1.0]
    assert all(o["support"] == 50 for o in out)


@pytest.mark.parametrize("div", ADMISSIBLE)
def test_check_tabular_fdpo_converges_to_pistar(tmp_path, div):
    # the trained policy against pi* from scipy's brentq (not fdpo's solver), and the reported
    # max_abs_diff against the same independent distance
    pol = tmp_path / "pol.csv"
    t = rows(lab("check", "--divergence", div, "--n", "6", "--beta", "0.5", "--seed", "3", "--export-policy", pol).stdout)
    e = rows(pol.read_text())
    assert [x["divergence"] for x in e] == [div] * 6
    q = np.array([float(x["pi_ref"]) for x in e])
    r = np.array([float(x["reward"]) for x in e])
    pi_theta = np.array([float(x["pi_theta"]) for x in e])
    ref = brentq_solution(div, q, r, 0.5)
    assert np.max(np.abs(pi_theta - ref)) <= 1e-7
    assert float(t[0]["max_abs_diff"]) == pytest.approx(np.max(np.abs(pi_theta - ref)), rel=1e-3, abs=1e-13)


def test_check_detects_a_biased_loss(tmp_path):
    # labels flipped 20% of the time: plain sigmoid converges elsewhere, robust (e = 0.2) to pi*
    # (distances to an independent brentq pi*, from the exported trained policies)
    def dist(*extra):
        pol = tmp_path / "pol.csv"
        lab("check", "--divergence", "rkl,js", "--label-noise", "0.2", "--export-policy", pol, *extra)
        e = rows(pol.read_text())
        out = []
        for div in ("rkl", "js"):
            d = [x for x in e if x["divergence"] == div]
            q, r, pt = (np.array([float(x[c]) for x in d]) for c in ("pi_ref", "reward", "pi_theta"))
            out.append(np.max(np.abs(pt - brentq_solution(div, q, r, 0.5))))
        return out
    assert all(d > 1e-2 for d in dist())
    assert all(d <= 1e-4 for d in dist("--loss", "robust", "--label-smoothing", "0.2"))


def test_gap_zero_without_noise():
    t = rows(lab("gap", "--n", "200", "--prompts", "2", "--noise", "0").stdout)
    assert len(t) == 6 * 5
    for x in t:
        assert float(x["reward_gap"]) == 0 and abs(float(x["objective_gap"])) <= 1e-15 and float(x["bound"]) == 0


def test_gap_values_match_independent_computation(tmp_path):
    exp = tmp_path / "problem.csv"
    t = rows(lab("gap", "--n", "100", "--prompts", "3", "--noise", "0.2", "--divergence", "rkl,fkl",
                 "--betas", "0.3,1", "--export-problem", exp, "--seed", "11").stdout)
    data = rows(exp.read_text())
    prompts = sorted({int(d["prompt"]) for d in data})
    assert prompts == [0, 1, 2]
    for row in t:
        div, beta = row["divergence"], float(row["beta"])
        rg = og = bound = 0
        for x in prompts:
            d = [e for e in data if int(e["prompt"]) == x]
            q = np.array([float(e["pi_ref"]) for e in d])
            r = np.array([float(e["reward"]) for e in d])
            rh = np.array([float(e["reward_hat"]) for e in d])
            ps = brentq_solution(div, q, r, beta)
            ph = brentq_solution(div, q, rh, beta)
            rg += (ps @ r - ph @ r) / 3
            og += (regularised(div, q, r, beta, ps) - regularised(div, q, r, beta, ph)) / 3
            eps = np.abs(r - rh)
            bound += np.sum(ps * np.exp(eps / beta) * eps) / 3
        assert float(row["reward_gap"]) == pytest.approx(rg, rel=1e-9, abs=1e-12)
        assert float(row["objective_gap"]) == pytest.approx(og, rel=1e-8, abs=1e-12)
        assert float(row["objective_gap"]) >= 0
        assert float(row["bound"]) == pytest.approx(bound, rel=1e-12)
        assert row["bound_held"] == ("1" if float(row["reward_gap"]) <= float(row["bound"]) else "0")


def test_gap_with_reward_hat_from_input(tmp_path):
    q, r = problem(30, 6)
    rh = r + 0.3 * np.sin(np.arange(30))
    p = tmp_path / "p.csv"
    write_problem(p, q, r, {"reward_hat": rh})
    t = rows(lab("gap", "--input", p, "--divergence", "rkl", "--betas", "0.5").stdout)
    assert t[0]["noise"] == "input"
    ps, ph = brentq_solution("rkl", q, r, 0.5), brentq_solution("rkl", q, rh, 0.5)
    assert float(t[0]["reward_gap"]) == pytest.approx(ps @ r - ph @ r, rel=1e-10)


def test_gap_at_a_large_beta_is_the_mpmath_gap(tmp_path):
    """The objective gap at beta up to 1e9, where it is ~1e-11 and each objective ~E[r]: pi*'s
    objective came from the solver's sums and pi-hat's from a plain sum of q f(u), whose terms
    ~(u - 1) cancel to D_f ~ (u - 1)^2 with an absolute 1e-16 that beta multiplies: the gap was
    -2e-7 with no noise at all and had the wrong sign at 1e9. Against 60-digit mpmath optima
    (both pi* and pi-hat solved exactly, both objectives with the true reward): within
    1e-13 * beta relative (measured 3e-14 * beta: pi's own rounding, 1e-16 relative, is
    1e-16 * beta of u - 1 ~ 1/beta); with reward_hat = reward the gap is exactly 0."""
    import mpmath as mp
    rng = np.random.default_rng(41)
    q = rng.dirichlet(np.ones(8))
    q = q / q.sum()
    r = rng.normal(size=8)
    rh = r + 0.3 * rng.normal(size=8)
    p, same = tmp_path / "p.csv", tmp_path / "same.csv"
    write_problem(p, q, r, {"reward_hat": rh})
    write_problem(same, q, r, {"reward_hat": r})
    divs, betas = ["rkl", "fkl", "js", "alpha:0.5"], [1e3, 1e6, 1e9]
    args = ["--divergence", ",".join(divs), "--betas", ",".join(map(repr, betas)), "--threads", "1"]
    for x in rows(lab("gap", "--data", same, *args).stdout) + rows(lab("gap", "--data", same, "--divergence",
                                                                     "chi2,tv", "--betas", "1e3,1e9").stdout):
        assert float(x["objective_gap"]) == 0, x
    got = {(x["divergence"], float(x["beta"])): float(x["objective_gap"]) for x in rows(lab("gap", "--data", p, *args).stdout)}
    for div in divs:
        for beta in betas:
            ps, ph = mp_optimum(div, q, r, beta), mp_optimum(div, q, rh, beta)
            ref = mp_stats(div, q, r, beta, ps)["objective"] - mp_stats(div, q, r, beta, ph)["objective"]
            assert ref > 0
            assert got[div, beta] == pytest.approx(float(ref), rel=1e-10 + 1e-13 * beta, abs=0), (div, beta, got[div, beta], ref)


@pytest.mark.parametrize("policy", ["ref", "optimal", "uniform", "mixture"])
def test_coverage_bt_fit_equals_scipy_logistic_regression(tmp_path, policy):
    cmp_path, fit_path = tmp_path / "cmp.csv", tmp_path / "fit.csv"
    ridge = 1e-3
    t = rows(lab("coverage", "--n", "12", "--prompts", "2", "--comparisons", "40,400", "--divergence", "rkl,chi2",
                 "--data-policy", policy, "--ridge", ridge, "--export-comparisons", cmp_path,
                 "--export-fit", fit_path).stdout)
    assert len(t) == 4
    cmp_rows, fit_rows = rows(cmp_path.read_text()), rows(fit_path.read_text())
    for m in (40, 400):
        for x in (0, 1):
            c = [e for e in cmp_rows if int(e["n_comparisons"]) == m and int(e["prompt"]) == x]
            assert len(c) == m
            w = np.array([int(e["winner"]) for e in c])
            l = np.array([int(e["loser"]) for e in c])
            # logistic regression on difference features: P(w beats l) = sigma(theta_w - theta_l)
            X = np.zeros((m, 12))
            X[np.arange(m), w] += 1
            X[np.arange(m), l] -= 1
            def nll(th):
                z = X @ th
                return np.sum(np.logaddexp(0, -z)) + 0.5 * ridge * th @ th
            def grad(th):
                return -X.T @ special.expit(-X @ th) + ridge * th
            def hess(th):
                s = special.expit(X @ th)
                return X.T @ (X * (s * (1 - s))[:, None]) + ridge * np.eye(12)
            ref = optimize.minimize(nll, np.zeros(12), jac=grad, hess=hess, method="trust-exact",
                                    options={"gtol": 1e-12})
            ours = np.array([float(e["reward_hat"]) for e in fit_rows if int(e["n_comparisons"]) == m and int(e["prompt"]) == x])
            np.testing.assert_allclose(ours, ref.x, atol=1e-6)
            assert abs(ours.sum()) < 1e-6  # the ridge pins the free constant: sum theta = 0


def test_coverage_gap_shrinks_with_data():
    t = rows(lab("coverage", "--n", "10", "--prompts", "6", "--comparisons", "20,20000", "--divergence", "rkl").stdout)
    small, big = float(t[0]["objective_gap"]), float(t[1]["objective_gap"])
    assert big < small and big < 0.05
    assert float(t[1]["fit_rmse"]) < float(t[0]["fit_rmse"])


def test_bias_lengthens_answers(tmp_path):
    q, r = problem(50, 8)
    length = np.arange(50) % 17 + 5.0
    p = tmp_path / "p.csv"
    write_problem(p, q, r, {"length": length})
    t = rows(lab("bias", "--input", p, "--divergence", "rkl,fkl", "--betas", "0.2,1", "--bias", "0.02").stdout)
    for row in t:
        div, beta = row["divergence"], float(row["beta"])
        ps = brentq_solution(div, q, r, beta)
        ph = brentq_solution(div, q, r + 0.02 * length, beta)
        assert float(row["length_pistar"]) == pytest.approx(ps @ length, rel=1e-10)
        assert float(row["length_pihat"]) == pytest.approx(ph @ length, rel=1e-10)
        assert float(row["length_increase"]) > 0


# ---- bad inputs ----

def bad(tmp_path, text, *args):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    r = lab("solve", "--input", p, *args, check=False)
    assert r.returncode != 0
    return r.stderr, str(p)


@pytest.mark.parametrize("text,needle", [
    ("pi_ref,reward\n0.5,1\n0,2\n0.5,3\n", ":3: column 'pi_ref': must be > 0"),
    ("pi_ref,reward\n0.5,1\n-0.5,2\n", ":3: column 'pi_ref': must be > 0"),
    ("pi_ref,reward\n0.5,abc\n0.5,2\n", ":2: column 'reward': 'abc' is not a finite decimal number"),
    ("pi_ref,reward\n0.5,1\n0.5,nan\n", ":3: column 'reward': 'nan' is not a finite decimal number"),
    # strtod reads hexadecimal: "0x10" was a reward of 16
    ("pi_ref,reward\n0.5,0x10\n0.5,1\n", ":2: column 'reward': '0x10' is not a finite decimal number"),
    ("pi_ref,reward\n0x1p-1,1\n0.5,1\n", ":2: column 'pi_ref': '0x1p-1' is not a finite decimal number"),
    ("pi_ref,reward\n0.5,1,3\n0.5,2\n", ":2: expected 2 fields, got 3"),
    ("pi_ref,reward\n0.5\n", ":2: expected 2 fields, got 1"),
    ("pi_ref,score\n0.5,1\n", ":1: unknown column 'score'"),
    ("pi_ref\n0.5\n", ":1: missing column 'reward'"),
    ("reward,reward,pi_ref\n1,1,1\n", ":1: column 'reward' appears twice"),
    ("pi_ref,reward\n", ": no data rows"),
    ("pi_ref,reward\n0.5,1\n0.5,\x002\n0.5,3\n", ":3: NUL byte"),
    ("", ": empty file"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, needle):
    err, path = bad(tmp_path, text)
    assert path + needle in err, err


def test_renormalises_with_a_warning(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward\n1,0.5\n3,-0.2\n")
    r = lab("solve", "--input", p, "--divergence", "rkl", "--beta", "1")
    assert "warning" in r.stderr and "sums to 4" in r.stderr and "renormalised" in r.stderr
    q = np.array([0.25, 0.75])
    pi = special.softmax(np.log(q) + np.array([0.5, -0.2]))
    assert float(rows(r.stdout)[0]["expected_reward"]) == pytest.approx(pi @ [0.5, -0.2], rel=1e-14)


@pytest.mark.parametrize("args,needle", [
    (["solve", "--beta", "0"], "--beta: must be a finite number > 0 (got 0)"),
    (["solve", "--beta", "-1"], "--beta: must be a finite number > 0 (got -1)"),
    (["solve", "--n", "0"], "--n: must be >= 1 (got 0)"),
    (["solve", "--n", "-4"], "--n: must not be negative (got -4)"),
    (["solve", "--divergence", "kl"], "--divergence: unknown divergence 'kl'"),
    (["solve", "--divergence", "alpha:2"], "alpha must be in (0, 1)"),
    (["solve", "--divergence", "rkl,alpha:0.5,alpha:0.50"], "alpha:0.5 given twice"),   # its rows would repeat
    (["solve", "--divergence", "rkl,,js"], "an empty item"),
    (["solve", "--pi-ref", "pareto"], "--pi-ref: unknown kind 'pareto'"),
    (["solve", "--input", "/nonexistent/x.csv"], "/nonexistent/x.csv"),
    (["solve", "--format", "xml"], "--format: unknown format 'xml'"),
    (["frontier", "--betas", "0.1,x"], "--betas: 'x' is not a finite number"),
    (["frontier", "--betas", "0.1,0"], "--betas: must be > 0"),
    (["gap", "--noise", "-1"], "--noise: must be >= 0"),
    (["coverage", "--data-policy", "expert"], "--data-policy: unknown policy 'expert'"),
    (["coverage", "--ridge", "0"], "--ridge: must be > 0"),
    (["coverage", "--comparisons", "1.5"], "--comparisons: '1.5' is not a whole number from 1 to 2^53"),
    (["check", "extra"], "fdpo lab: unexpected argument 'extra' (lab check takes flags only"),
    (["coverage", "--comparisons", "1e20"], "--comparisons: '1e20' is not a whole number from 1 to 2^53"),
    (["coverage", "--comparisons", "10,1e9"], "--comparisons: must be in [1, 1e8] (got 1000000000)"),
    (["coverage", "--prompts", "0"], "--prompts: must be >= 1 (got 0)"),
    (["coverage", "--beta", "0"], "--beta: must be a finite number > 0 (got 0)"),
    (["gap", "--prompts", "0"], "--prompts: must be >= 1"),
    (["check", "--divergence", "tv"], "--divergence tv: total variation is not usable"),
    (["check", "--divergence", "chi2"], "--divergence chi2: chi2 is not usable"),
    (["check", "--label-smoothing", "0.5"], "--label-smoothing"),
    # the default --divergence list was blamed first ("--divergence fkl: ... drop --divergence")
    (["check", "--loss", "simpo"], "fdpo lab: --loss simpo: the check needs a reference-based loss"),
    # the library's refusals that came after the table's header (it reached stdout, then exit 1)
    (["check", "--label-noise", "0.5"], "--label-noise: must be in [0, 0.5) (got 0.5)"),
    (["check", "--n", "1"], "--n: the check needs at least 2 responses (got 1)"),
    (["check", "--method", "rloo", "--sampled", "--group-size", "1"], "--group-size: rloo needs groups of at least 2 samples (got 1)"),
    (["check", "--method", "grpo", "--group-size", "9"], "--group-size: exact grpo averages over all n^k = 6^9 groups"),
    (["check", "--method", "dpo", "--pair-top", "1"], "--pair-top: offline pairs need at least 2 responses (got 1)"),
    (["check", "--method", "kto", "--desirable-weight", "0"], "--desirable-weight: must be > 0 (got 0)"),
    (["check", "--method", "dpo,kto", "--undesirable-weight", "-1"], "--undesirable-weight: must be > 0 (got -1)"),
    (["check", "--method", "online", "--n", "1"], "--n: the check needs at least 2 responses (got 1)"),
    (["frobnicate"], "unknown experiment 'frobnicate'"),
    (["solve", "--bogus", "1"], "unknown flag --bogus"),
    # flags that the others leave without effect (they were accepted and ignored)
    (["solve", "--n", "10000000000"], "--n 10000000000: the generated problem alone takes 240 GB, more than this machine's"),
    (["frontier", "--betas", "0.1,1", "--beta-min", "0.5"], "--beta-min: has no effect with --betas (the list replaces the log grid)"),
    (["frontier", "--betas", "0.1", "--n-betas", "3"], "--n-betas: has no effect with --betas"),
    (["solve", "--pi-ref", "uniform", "--zipf-s", "2"], "--zipf-s: only with --pi-ref zipf (this is --pi-ref uniform)"),
    (["solve", "--pi-ref", "zipf", "--dirichlet-alpha", "2"], "--dirichlet-alpha: only with --pi-ref dirichlet (this is --pi-ref zipf)"),
    (["check", "--method", "dpo", "--labels", "threshold"], "--labels: only --method kto uses it (--method dpo)"),
    (["check", "--method", "dpo,rloo", "--grpo-eps", "0.1"], "--grpo-eps: only --method grpo uses it (--method dpo,rloo)"),
    (["check", "--method", "rloo", "--pair-top", "2"], "--pair-top: only --method dpo uses it (--method rloo)"),
    (["check", "--method", "dpo", "--steps", "10"], "--steps: only --method online,rloo,grpo,kto use it (--method dpo)"),
    (["check", "--method", "kto", "--group-size", "3"], "--group-size: only --method online,rloo,grpo use it (--method kto)"),
    # exact online and exact rloo take their expectations per response: the group size was
    # accepted and changed nothing (exact grpo averages over all n^k groups: it reads it)
    (["check", "--method", "online", "--group-size", "2"],
     "--group-size: only the sampled online/rloo runs and grpo use it (give --sampled; --method online)"),
    (["check", "--method", "dpo,rloo", "--group-size", "4"],
     "--group-size: only the sampled online/rloo runs and grpo use it (give --sampled; --method dpo,rloo)"),
    # lengths shape only bias's problem: the others do not have the flags (their --help listed
    # them with defaults, then refused them as having no effect)
    *[([exp, "--length-min", "50"], "unknown flag --length-min")
      for exp in ("solve", "frontier", "gap", "coverage", "check")],
    (["constrained", "--min-safety", "0", "--length-max", "60"], "unknown flag --length-max"),
    # an empty --betas fell back to the log grid (gap and bias refused it)
    (["frontier", "--betas", ""], "--betas: empty list"),
    (["frontier", "--betas", "", "--beta-min", "1"], "--beta-min: has no effect with --betas"),
    # allocations past the machine ended in the out-of-memory handler's line, which names no flag
    (["gap", "--n", "5", "--prompts", "99999999999"], "--prompts 99999999999: the generated problems take 1.84e+04 GB, more than"),
    (["coverage", "--n", "5", "--prompts", "99999999999"], "--prompts 99999999999: the generated problems take"),
    (["frontier", "--n-betas", "999999999999"], "--n-betas: must be in [1, 1000000] (got 999999999999)"),
    # a one-point grid dropped --beta-max (HI) without a word
    (["frontier", "--n-betas", "1"], "--n-betas 1: one beta, but --beta-min 0.01 and --beta-max 10 differ (give "
     "them equal, or --n-betas 2 or more)"),
    (["constrained", "--frontier", "1:1.5:1"], "--frontier: '1:1.5:1' is one threshold, but LO and HI differ"),
    # a number list's repeated value ran twice, its rows under one key (coverage's and gap's with
    # different numbers); docs/lab.md: every lab list refuses a repeat, as --method does
    (["frontier", "--n", "5", "--betas", "0.1,0.10"], "--betas: 0.1 given twice in '0.1,0.10'"),
    (["gap", "--n", "5", "--betas", "1,0.5,1"], "--betas: 1 given twice in '1,0.5,1'"),
    (["gap", "--n", "5", "--noise", "0.1, 0.1"], "--noise: 0.1 given twice in '0.1, 0.1'"),
    (["coverage", "--n", "5", "--comparisons", "10,1e1"], "--comparisons: 10 given twice in '10,1e1'"),
    (["bias", "--bias", "0.005,0.005"], "--bias: 0.005 given twice in '0.005,0.005'"),
    (["constrained", "--n", "5", "--frontier", "0.1,0.1"], "--frontier: 0.1 given twice in '0.1,0.1'"),
    (["constrained", "--n", "5", "--frontier", "0.1:0.1:3"], "--frontier: '0.1:0.1:3' gives threshold 0.1 twice"),
    (["frontier", "--n", "5", "--beta-min", "1", "--beta-max", "1", "--n-betas", "3"],
     "--n-betas 3: 3 betas, but --beta-min and --beta-max are both 1 (the grid would run it 3 times: give --n-betas 1)"),
    # below it the pole form's rounding grows as 1e-16/A: pi = pi_ref at A = 1e-20; alpha:1e-300
    # failed after the header was written
    (["solve", "--divergence", "rkl,alpha:1e-10"], "--divergence: alpha:1e-10: the lab solves alpha:A for A >= 1e-06"),
    (["frontier", "--divergence", "alpha:1e-300"], "--divergence: alpha:1e-300: the lab solves alpha:A for A >= 1e-06"),
    (["coverage", "--data-policy", "optimal", "--data-divergence", "alpha:1e-8"],
     "--data-divergence: alpha:1e-08: the lab solves alpha:A for A >= 1e-06"),
])
def test_bad_flags_are_named(args, needle):
    r = lab(*args, check=False)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""   # refused before the table's header (coverage's bad --beta printed it)


@pytest.mark.parametrize("method", [[], ["--method", "rloo"]])
def test_check_of_a_one_row_file_names_the_file(tmp_path, method):
    """it said "--n: the check needs at least 2 responses (got 1)", a flag not given"""
    p = tmp_path / "one.csv"
    p.write_text("pi_ref,reward\n1,0\n")
    r = lab("check", "--data", p, *method, check=False)
    assert r.returncode == 1 and r.stdout == "" and \
        r.stderr == f"fdpo lab: --data {p}: the check needs at least 2 responses (the file has 1)\n", r.stderr


def test_check_beyond_the_machines_memory_is_refused_naming_n():
    """the check's n x n pair probabilities (8 n^2 bytes: 8 TB at n = 1e6) are checked against the
    machine's memory before the table: the header was printed, then an out-of-memory line
    that named no flag"""
    r = lab("check", "--n", "1000000", "--divergence", "rkl", "--threads", "1", check=False)
    assert r.returncode != 0
    assert "--n 1000000: the check's n x n pair probabilities take 8e+03 GB, more than this machine's" in r.stderr, r.stderr
    assert r.stdout == ""


def test_gap_refuses_noise_when_the_file_has_reward_hat(tmp_path):
    """--data with a reward_hat column is the noisy reward: --noise was ignored"""
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward,reward_hat\n0.5,1,1.2\n0.5,0,0.1\n")
    r = lab("gap", "--data", p, "--noise", "0.5", check=False)
    assert r.returncode == 1 and r.stdout == "" and r.stderr == \
        f"fdpo lab: --noise: has no effect: --data {p} has a reward_hat column, which is the noisy reward\n", r.stderr
    assert lab("gap", "--data", p, "--betas", "0.1").stdout.splitlines()[1].startswith("input,")


def test_bias_needs_a_length_column(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward\n0.5,1\n0.5,2\n")
    r = lab("bias", "--input", p, check=False)
    assert r.returncode != 0 and "needs a 'length' column" in r.stderr


def test_help_lists_every_flag_with_default():
    r = lab("frontier", "--help")
    for flag in ["--n-betas", "--beta-min", "--beta-max", "--divergence", "--seed", "--threads", "--input", "--format"]:
        assert flag in r.stdout
    assert "[50]" in r.stdout
    assert "coverage" in lab("--help").stdout


def test_no_experiment_is_a_one_line_error():
    """docs/cli.md: every error is one line `fdpo COMMAND: message`, exit 1. `fdpo lab` alone wrote
    the 10-line usage to stderr before its error (hunt of wave 46); the line names every
    experiment docs/lab.md lists, and --help still prints the usage to stdout"""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "lab.md").read_text()
    names = re.findall(r"`(\w+)`", re.search(r"^Experiments: (.*)$", doc, re.M).group(1))
    assert len(names) == 7, names
    r = lab(check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("fdpo lab: missing EXPERIMENT ("), r.stderr
    assert all(re.search(rf"\b{n}\b", r.stderr) for n in names), (names, r.stderr)
    h = lab("--help")
    assert h.stdout.startswith("usage: fdpo lab EXPERIMENT") and all(f"  {n} " in h.stdout for n in names)



@pytest.mark.parametrize("args", [["solve", "--n", "8"], ["solve", "--n", "8", "--format", "json"],
                                  ["gap", "--n", "8", "--export-problem", "EX"]])
def test_a_table_to_a_full_stdout_names_the_cause(tmp_path, args):
    """docs/cli.md, Errors: a failed write to stdout is `<stdout>: write error: No space left on
    device`, exit 1. lab flushed its table first and ignored the result, so main's check found the
    stream in error with errno gone: "the stream is in error" (hunt of wave 46); the run's
    --export-* file is not kept either (a failed run replaces no file)."""
    import errno as errno_mod
    args = [str(tmp_path / "ex.csv") if a == "EX" else a for a in args]
    with open("/dev/full", "w") as full:
        r = subprocess.run([FDPO, "lab", *args, "--threads", "1"], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=60)
    assert r.returncode == 1
    assert r.stderr == f"fdpo lab: <stdout>: write error: {os.strerror(errno_mod.ENOSPC)}\n", r.stderr
    assert not (tmp_path / "ex.csv").exists()


# ---- CSV edge cases (issue #10) ----

def test_csv_with_utf8_bom_is_read(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbfpi_ref,reward\n0.25,1\n0.75,-1\n")
    r = lab("solve", "--input", p, "--divergence", "rkl", "--beta", "0.5")
    pi = special.softmax(np.log([0.25, 0.75]) + np.array([1, -1]) / 0.5)
    assert float(rows(r.stdout)[0]["expected_reward"]) == pytest.approx(pi @ [1, -1], rel=1e-14)


def test_pi_ref_sum_overflow_is_normalised(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text("pi_ref,reward\n1e308,0.3\n1e308,-0.2\n")
    r = lab("solve", "--input", p, "--divergence", "rkl,fkl", "--beta", "1", check=False)
    assert r.returncode == 0, r.stderr
    assert "nan" not in r.stdout
    pi = special.softmax(np.array([0.3, -0.2]))  # pi_ref = (1/2, 1/2)
    assert float(rows(r.stdout)[0]["expected_reward"]) == pytest.approx(pi @ [0.3, -0.2], rel=1e-14)
    assert "renormalised" in r.stderr


def test_pi_ref_that_vanishes_when_normalised_is_refused(tmp_path):
    """1e-320 beside 1e308 is 0 once divided by the sum: refused, not solved as another problem"""
    p = tmp_path / "span.csv"
    p.write_text("pi_ref,reward\n1e308,1\n1e-320,2\n")
    r = lab("solve", "--data", p, "--divergence", "fkl", "--beta", "0.5", check=False)
    assert r.returncode == 1 and "data row 2" in r.stderr and "pi_ref > 0" in r.stderr, r.stderr
    assert r.stdout == ""


def test_subnormal_pi_ref_is_a_number(tmp_path):
    p, out = tmp_path / "sub.csv", tmp_path / "pi.csv"
    p.write_text("pi_ref,reward\n1,0\n4.9e-324,1\n")
    lab("solve", "--input", p, "--divergence", "rkl", "--beta", "0.1", "--out", out)
    pi = np.array([float(x["pi"]) for x in rows(out.read_text())])
    q = np.array([1.0, 5e-324])
    ref = np.exp(np.log(q) + np.array([0, 1]) / 0.1 - special.logsumexp(np.log(q) + np.array([0, 1]) / 0.1))
    np.testing.assert_allclose(pi, ref, rtol=1e-12, atol=1e-320)


# ---- coverage against an independent computation ----

@pytest.mark.parametrize("div", ["rkl", "js", "chi2"])
def test_coverage_columns_match_independent_computation(tmp_path, div):
    q, r = problem(15, 21)
    p, cmp_path, fit_path = tmp_path / "p.csv", tmp_path / "cmp.csv", tmp_path / "fit.csv"
    write_problem(p, q, r)
    beta = 0.3
    t = rows(lab("coverage", "--input", p, "--comparisons", "5,60", "--divergence", div, "--beta", beta,
                 "--export-comparisons", cmp_path, "--export-fit", fit_path).stdout)
    cmp_rows, fit_rows = rows(cmp_path.read_text()), rows(fit_path.read_text())
    for row in t:
        m = int(row["n_comparisons"])
        c = [e for e in cmp_rows if int(e["n_comparisons"]) == m]
        seen = sorted({int(e["winner"]) for e in c} | {int(e["loser"]) for e in c})
        theta = np.array([float(e["reward_hat"]) for e in fit_rows if int(e["n_comparisons"]) == m])
        if div == "chi2":
            h = lambda l, rr: np.sum(q * np.maximum(0, 1 + (rr - l) / (2 * beta))) - 1
            sol = lambda rr: q * np.maximum(0, 1 + (rr - optimize.brentq(lambda l: h(l, rr), rr.min() - 10, rr.max() + 10, xtol=1e-15)) / (2 * beta))
        else:
            sol = lambda rr: brentq_solution(div, q, rr, beta)
        ps, ph = sol(r), sol(theta)
        assert len(seen) < 15 or m == 60
        assert float(row["pistar_coverage"]) == pytest.approx(ps[seen].sum(), rel=1e-9, abs=1e-12)
        assert float(row["reward_gap"]) == pytest.approx(ps @ r - ph @ r, rel=1e-8, abs=1e-11)
        og = regularised(div, q, r, beta, ps) - regularised(div, q, r, beta, ph)
        assert float(row["objective_gap"]) == pytest.approx(og, rel=1e-7, abs=1e-11)
        rmse = np.sqrt(np.mean(((theta - theta.mean()) - (r - r.mean())) ** 2))
        assert float(row["fit_rmse"]) == pytest.approx(rmse, rel=1e-12)


# ---- lab constrained (issue #12 item 1) ----

def constrained_problem(n, seed, rho=-0.5):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(n))
    r = rng.normal(size=n)
    g = rho * r + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
    return q, r, g


def write_constrained(path, q, r, g):
    with open(path, "w") as f:
        f.write("pi_ref,reward,safety\n")
        for a, b, c in zip(q, r, g):
            f.write(f"{a!r},{b!r},{c!r}\n")


def scipy_constrained(div, q, r, g, beta, b):
    """Lagrangian dual: brentq on lambda of E_{pi_lambda}[g] = b, pi_lambda from brentq on mu."""
    pi0 = brentq_solution(div, q, r, beta)
    if pi0 @ g >= b:
        return 0.0, pi0
    F = lambda lam: brentq_solution(div, q, r + lam * g, beta) @ g - b
    hi = 1.0
    while F(hi) < 0:
        hi *= 2
    lam = optimize.brentq(F, 0, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    return lam, brentq_solution(div, q, r + lam * g, beta)


def run_constrained(tmp_path, div, beta, b, q, r, g, *extra):
    p, out = tmp_path / "c.csv", tmp_path / "pi.csv"
    write_constrained(p, q, r, g)
    res = lab("constrained", "--data", p, "--divergence", div, "--beta", beta, "--min-safety", b, "--out", out, *extra)
    t = rows(res.stdout)[0]
    pis = rows(out.read_text())
    return t, pis


CONSTRAINED_DIVS = ["rkl", "fkl", "js", "alpha:0.3", "alpha:0.7"]


@pytest.mark.parametrize("div", CONSTRAINED_DIVS)
@pytest.mark.parametrize("seed", [1, 2])
def test_constrained_matches_scipy_dual(tmp_path, div, seed):
    q, r, g = constrained_problem(40, seed)
    beta = 0.4
    e0 = brentq_solution(div, q, r, beta) @ g
    b = e0 + 0.5 * (g.max() - e0)  # active
    t, pis = run_constrained(tmp_path, div, beta, b, q, r, g)
    lam, ref = scipy_constrained(div, q, r, g, beta, b)
    pi = np.array([float(x["pi"]) for x in pis])
    assert t["active"] == "1" and t["feasible"] == "1"
    assert float(t["lambda"]) == pytest.approx(lam, abs=1e-7)
    assert np.max(np.abs(pi - ref)) <= 1e-9
    assert float(t["expected_safety"]) == pytest.approx(b, abs=1e-11)
    assert float(t["expected_reward"]) == pytest.approx(ref @ r, abs=1e-9)
    assert float(t["f_divergence"]) == pytest.approx(np.sum(q * fdiv(div, ref / q)), rel=1e-7, abs=1e-10)
    assert float(t["entropy"]) == pytest.approx(-np.sum(ref * np.log(ref)), rel=1e-8)
    # KKT of the constrained problem itself: r + lambda g - beta f'(pi/q) is constant
    kkt = r + float(t["lambda"]) * g - beta * fprime(div, pi / q)
    assert np.ptp(kkt) < 1e-8


@pytest.mark.parametrize("div", CONSTRAINED_DIVS)
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e-300])
def test_constrained_at_every_safety_scale(tmp_path, div, scale):
    """safety g·s and threshold b·s: pi*_lambda depends on lambda g alone, so lambda*_s = lambda*_1 / s and
    pi* is the same at every scale s; the reference is the scipy dual at s = 1. Brent's stop test
    'E[g] - b in [0, 4 eps (1 + |b|)]' was absolute: at s = 1e-20 and 1e-300 every E[g] >= b passed it and
    the first bracket end came back (lambda* up to 12% off, pi* up to 0.08)."""
    q, r, g = constrained_problem(40, 1)
    beta = 0.3
    pi0 = brentq_solution(div, q, r, beta)
    b = pi0 @ g + 0.2 * (g.max() - pi0 @ g)     # active; lambda*_1 < 1, so lambda*_s < 1e300
    lam1, ref = scipy_constrained(div, q, r, g, beta, b)
    assert lam1 > 0
    t, pis = run_constrained(tmp_path, div, repr(beta), repr(b * scale), q, r, g * scale)
    assert t["active"] == "1"
    assert float(t["lambda"]) * scale == pytest.approx(lam1, rel=1e-9)
    pi = np.array([float(x["pi"]) for x in pis])
    np.testing.assert_allclose(pi, ref, rtol=0, atol=1e-9)
    assert float(t["expected_safety"]) / scale == pytest.approx(b, abs=1e-11)
    assert float(t["expected_reward"]) == pytest.approx(ref @ r, abs=1e-9)


@pytest.mark.filterwarnings("ignore:Values in x were outside bounds")
@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5"])
def test_constrained_equals_slsqp_on_the_primal(tmp_path, div):
    q, r, g = constrained_problem(6, 7)
    beta, b = 0.5, 0.6
    t, pis = run_constrained(tmp_path, div, beta, b, q, r, g)
    pi = np.array([float(x["pi"]) for x in pis])
    res = optimize.minimize(lambda p: -regularised(div, q, r, beta, p), q, method="SLSQP", bounds=[(1e-12, 1)] * 6,
                            jac=lambda p: -(r - beta * fprime(div, p / q)),
                            constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1, "jac": lambda p: np.ones(6)},
                                         {"type": "ineq", "fun": lambda p: p @ g - b, "jac": lambda p: g}],
                            options={"ftol": 1e-14, "maxiter": 1000})
    # exit mode 8 ("positive directional derivative for linesearch"): SLSQP can no longer
    # improve at ftol 1e-14, i.e. it reached the precision limit (seen on an AMD EPYC for rkl:
    # its x then agrees with ftol 1e-13's to 1e-9); accepted only when x is feasible
    feasible = abs(res.x.sum() - 1) < 1e-12 and res.x @ g - b > -1e-10
    assert res.success or (res.status == 8 and feasible), res.message
    np.testing.assert_allclose(pi, res.x, atol=2e-6)
    assert regularised(div, q, r, beta, pi) >= regularised(div, q, r, beta, res.x) - 1e-10


@pytest.mark.parametrize("div", CONSTRAINED_DIVS)
def test_inactive_constraint_gives_unconstrained_optimum(tmp_path, div):
    q, r, g = constrained_problem(30, 3)
    e0 = brentq_solution(div, q, r, 0.3) @ g
    t, pis = run_constrained(tmp_path, div, 0.3, e0 - 0.05, q, r, g)
    assert t["active"] == "0" and float(t["lambda"]) == 0
    pi = np.array([float(x["pi"]) for x in pis])
    np.testing.assert_allclose(pi, brentq_solution(div, q, r, 0.3), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("div", CONSTRAINED_DIVS)
@pytest.mark.parametrize("s", [0.1, 0.7, 1.1, 3.3])
def test_a_threshold_every_policy_meets_is_inactive(tmp_path, div, s):
    """a constant safety s and --min-safety s: E[g] = s under every policy, so lambda* = 0 and
    pi*. E[g] at lambda = 0 rounded below s for fkl (pi_ref renormalised from a sum of 1.1),
    and the run was refused: "--min-safety 0.7: equals the largest safety ..." """
    q, r = np.array([0.5, 0.3, 0.2, 0.1]), np.array([1.0, 0.0, 2.0, 0.4])
    t, pis = run_constrained(tmp_path, div, 0.1, s, q, r, np.full(4, s))
    assert t["feasible"] == "1" and t["active"] == "0" and float(t["lambda"]) == 0
    pi = np.array([float(x["pi"]) for x in pis])
    np.testing.assert_allclose(pi, brentq_solution(div, q / q.sum(), r, 0.1), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("div", CONSTRAINED_DIVS)
def test_stepwise_versus_joint(tmp_path, div):
    q, r, g = constrained_problem(30, 4)
    beta = 0.5
    e0 = brentq_solution(div, q, r, beta) @ g
    b = e0 + 0.3 * (g.max() - e0)
    t, pis = run_constrained(tmp_path, div, beta, b, q, r, g, "--stepwise")
    lam, joint = scipy_constrained(div, q, r, g, beta, b)
    # independent two-step: align for r from pi_ref, then for g from that at beta / lambda*
    pi1 = brentq_solution(div, q, r, beta)
    step = brentq_solution(div, pi1, g, beta / lam)
    ours = np.array([float(x["pi_stepwise"]) for x in pis])
    np.testing.assert_allclose(ours, step, rtol=1e-8, atol=1e-12)
    gap = np.max(np.abs(step - joint))
    if div == "rkl":
        assert np.max(np.abs(ours - joint)) <= 1e-9
        assert float(t["stepwise_max_abs_diff"]) <= 1e-12
    else:
        assert gap > 1e-4  # (f')^-1 of a sum is not the product of (f')^-1s
        assert float(t["stepwise_max_abs_diff"]) == pytest.approx(gap, rel=1e-6)
        assert float(t["stepwise_tv"]) == pytest.approx(0.5 * np.abs(step - joint).sum(), rel=1e-6)
        assert float(t["stepwise_kl"]) == pytest.approx(np.sum(special.rel_entr(step, joint)), rel=1e-6)
    assert float(t["stepwise_expected_reward"]) == pytest.approx(step @ r, abs=1e-9)
    assert float(t["stepwise_expected_safety"]) == pytest.approx(step @ g, abs=1e-9)


def test_constrained_frontier_sweep(tmp_path):
    q, r, g = constrained_problem(50, 5)
    p = tmp_path / "c.csv"
    write_constrained(p, q, r, g)
    bs = [0.2, -3.0, 0.9, float(g.max()) + 1]
    args = ["constrained", "--input", p, "--divergence", "rkl,js", "--beta", "0.3", "--frontier", ",".join(map(repr, bs))]
    a = lab(*args, "--threads", "1").stdout
    assert a == lab(*args, "--threads", "2").stdout
    t = rows(a)
    assert len(t) == 8 and [x["divergence"] for x in t] == ["rkl"] * 4 + ["js"] * 4
    for x in t:
        b = float(x["min_safety"])
        if b > g.max():
            assert x["feasible"] == "0" and x["lambda"] == "nan"
            continue
        lam, ref = scipy_constrained(x["divergence"], q, r, g, 0.3, b)
        assert float(x["lambda"]) == pytest.approx(lam, abs=1e-7)
        assert float(x["expected_reward"]) == pytest.approx(ref @ r, abs=1e-9)
        assert x["active"] == ("1" if lam > 0 else "0")
    grid = rows(lab("constrained", "--input", p, "--divergence", "rkl", "--frontier", "0:1:3", "--format", "csv").stdout)
    assert [float(x["min_safety"]) for x in grid] == [0, 0.5, 1]


def test_constrained_json_and_generated_problem():
    import json
    out = json.loads(lab("constrained", "--n", "100", "--min-safety", "0.5", "--divergence", "fkl", "--format", "json").stdout)
    assert out[0]["divergence"] == "fkl" and out[0]["expected_safety"] >= 0.5 - 1e-12


@pytest.mark.parametrize("args,needle", [
    (["--min-safety", "9"], "--min-safety 9: infeasible: the largest safety is"),
    (["--min-safety", "0.5", "--divergence", "tv"], "--divergence tv: the constrained solver needs an admissible f"),
    (["--min-safety", "0.5", "--divergence", "chi2"], "--divergence chi2"),
    ([], "--min-safety: required"),
    (["--frontier", "0,1", "--min-safety", "0.5"], "--min-safety: not allowed with --frontier"),
    (["--frontier", "1:0:3"], "--frontier: '1:0:3' is not LO:HI:K"),
    (["--frontier", "0,x"], "--frontier: 'x' is not a finite number"),
    # LO:HI:K's parts through the flags' number reader (sscanf's %lf ran 0x0.8 as 0.5, 1e-400 as 0)
    (["--frontier", "0x0.8:1:3"], "--frontier LO: '0x0.8' is not a decimal number"),
    (["--frontier", "0:0x1p0:3"], "--frontier HI: '0x1p0' is not a decimal number"),
    (["--frontier", "0:1:0x3"], "--frontier K: '0x3' is not a decimal number"),
    (["--frontier", "1e-400:1:2"], "--frontier LO: '1e-400' is out of range (it rounds to 0"),
    (["--frontier", " 0:1:3"], "--frontier LO: ' 0' is not a decimal number"),
    (["--frontier", "0:1: 3"], "--frontier K: ' 3' is not a decimal number"),
    (["--frontier", "0:1:3.5"], "--frontier K: '3.5' is not an integer"),
    (["--frontier", "0:1:3:4"], "--frontier: '0:1:3:4' is not LO:HI:K"),
    (["--min-safety", "0.5", "--beta", "0"], "--beta: must be a finite number > 0 (got 0)"),
])
def test_constrained_bad_input(tmp_path, args, needle):
    p = tmp_path / "c.csv"
    write_constrained(p, [0.5, 0.5], [1.0, 0.0], [0.0, 1.0])
    r = lab("constrained", "--data", p, *args, check=False)
    assert r.returncode != 0 and needle in r.stderr, r.stderr


def test_constrained_generated_safety_needs_a_correlation_in_range():
    """the library's fdpo_lab_generate_safety refuses |c| > 1 (sqrt(1 - c^2) made every score NaN)"""
    r = lab("constrained", "--min-safety", "0.5", "--safety-correlation", "1.5", check=False)
    assert r.returncode != 0 and "--safety-correlation: must be in [-1, 1] (got 1.5)" in r.stderr, r.stderr
    # as it reads back (Python's repr): %g printed "(got 1)"
    r = lab("constrained", "--min-safety", "0.5", "--safety-correlation", "1.0000001", check=False)
    assert r.returncode != 0 and "--safety-correlation: must be in [-1, 1] (got %r)" % 1.0000001 in r.stderr, r.stderr


def test_constrained_needs_a_safety_column(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("pi_ref,reward\n0.5,1\n0.5,2\n")
    r = lab("constrained", "--data", p, "--min-safety", "0", check=False)
    assert r.returncode != 0 and "needs a 'safety' column" in r.stderr


def test_data_is_the_spelling_of_input_for_every_experiment(tmp_path):
    q, r = problem(10, 4)
    p = tmp_path / "p.csv"
    write_problem(p, q, r)
    for exp in ("solve", "frontier", "gap", "check"):
        assert lab(exp, "--data", p, "--divergence", "rkl").stdout == lab(exp, "--input", p, "--divergence", "rkl").stdout
    a = rows(lab("solve", "--data", p, "--divergence", "rkl", "--beta", "0.3").stdout)[0]
    assert float(a["expected_reward"]) == pytest.approx(special.softmax(np.log(q) + r / 0.3) @ r, rel=1e-12)


# ---- several prompts: pi*(.|x) per prompt, statistics averaged over prompts ----

def write_prompts(path, groups, labels):
    """groups: [(q, r)] per prompt; one row per response with its prompt label"""
    with open(path, "w") as f:
        f.write("prompt,pi_ref,reward\n")
        for lab_, (q, r) in zip(labels, groups):
            for i in range(len(q)):
                f.write(f"{lab_},{float(q[i])!r},{float(r[i])!r}\n")


def prompt_groups(seed):
    rng = np.random.default_rng(seed)
    out = []
    for n in (3, 7, 12, 5):
        q = rng.dirichlet(np.ones(n))
        out.append((q, rng.normal(scale=1.5, size=n)))
    return out


def test_frontier_per_prompt_matches_brentq_averaged(tmp_path):
    groups = prompt_groups(11)
    labels = ["p0", "the second prompt", "3", "p0b"]
    p = tmp_path / "p.csv"
    # prompt 1's pi_ref is given unnormalised (x 3): renormalised within that prompt only
    write_prompts(p, [groups[0], (3 * groups[1][0], groups[1][1])] + groups[2:], labels)
    betas = [0.05, 0.3, 2.0]
    args = ["frontier", "--data", p, "--divergence", ",".join(ADMISSIBLE), "--betas", ",".join(map(str, betas))]
    r1 = lab(*args, "--threads", "1")
    r2 = lab(*args, "--threads", "2")
    assert r1.stdout == r2.stdout
    assert "per prompt" in r1.stderr and "renormalised" in r1.stderr
    t = rows(r1.stdout)
    assert len(t) == len(ADMISSIBLE) * len(betas)
    for row in t:
        div, beta = row["divergence"], float(row["beta"])
        er, ent, kl, fd = [], [], [], []
        for q, r in groups:
            pi = brentq_solution(div, q, r, beta)
            er.append(pi @ r)
            ent.append(special.entr(pi).sum())
            kl.append(special.rel_entr(pi, q).sum())
            fd.append(np.sum(q * fdiv(div, pi / q)))
        assert float(row["expected_reward"]) == pytest.approx(np.mean(er), rel=1e-9), row
        assert float(row["entropy"]) == pytest.approx(np.mean(ent), rel=1e-9, abs=1e-12), row
        assert float(row["kl"]) == pytest.approx(np.mean(kl), rel=1e-8, abs=1e-12), row
        assert float(row["f_divergence"]) == pytest.approx(np.mean(fd), rel=1e-8, abs=1e-12), row
        assert int(row["support"]) == sum(len(q) for q, _ in groups)
    # pooling the same rows into one problem (no prompt column) is a different problem
    pooled = tmp_path / "pooled.csv"
    q_all = np.concatenate([q for q, _ in groups]) / len(groups)
    write_problem(pooled, q_all, np.concatenate([r for _, r in groups]))
    tp = rows(lab("frontier", "--data", pooled, "--divergence", "rkl", "--betas", "0.3").stdout)[0]
    tg = next(x for x in t if x["divergence"] == "rkl" and float(x["beta"]) == 0.3)
    assert abs(float(tp["expected_reward"]) - float(tg["expected_reward"])) > 1e-3


def test_frontier_one_prompt_label_equals_no_column(tmp_path):
    q, r = problem(15, 5)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_problem(a, q, r)
    write_prompts(b, [(q, r)], ["only"])
    args = ["frontier", "--divergence", "rkl,fkl,js,alpha:0.5,tv,chi2", "--n-betas", "7"]
    assert lab(*args, "--data", a).stdout == lab(*args, "--data", b).stdout


@pytest.mark.parametrize("exp", ["solve", "gap", "bias", "check", "coverage"])
def test_prompt_column_refused_where_one_prompt_is_solved(tmp_path, exp):
    p = tmp_path / "p.csv"
    write_prompts(p, prompt_groups(3)[:2], ["a", "b"])
    r = lab(exp, "--data", p, check=False)
    assert r.returncode == 1 and f"--data {p}: column 'prompt'" in r.stderr and "lab frontier" in r.stderr, r.stderr


def test_prompt_rows_must_be_contiguous(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("prompt,pi_ref,reward\na,0.5,1\na,0.5,0\nb,1,2\na,1,3\n")
    r = lab("frontier", "--data", p, check=False)
    assert r.returncode == 1 and f"{p}:5: column 'prompt': 'a' appears again" in r.stderr, r.stderr


@pytest.mark.parametrize("sub", ["solve", "frontier", "coverage", "check --method dpo", "bias"])
def test_lab_help_shows_the_library_defaults(sub):
    """The lab's option structs have library defaults (fdpo_lab_beta_grid_default,
    fdpo_lab_coverage_opts_default, fdpo_lab_algo_opts_default, and the generated problem's
    fdpo_lab_gen_default under "solve"); every one of them that the
    subcommand's --help shows must be the value shown (the seed is the library's
    FDPO_DEFAULT_SEED, as every command's --seed)."""
    import json
    harness = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(__file__), "../../build/fdpo-harness"))
    lib = json.loads(subprocess.run([harness, "lab-defaults"], capture_output=True, text=True, check=True).stdout)[sub]
    text = subprocess.run([FDPO, "lab", *sub.split(), "--help"], capture_output=True, text=True, check=True).stdout
    shown = {}
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("  --") and line.endswith("]"):
            shown.setdefault(line.split()[0][2:], line.rsplit("[", 1)[1][:-1])
    for key, value in lib.items():
        assert key in shown, (sub, key)
        if isinstance(value, str):
            assert shown[key] == value, (sub, key, shown[key], value)
        else:
            assert float(shown[key]) == pytest.approx(value, rel=1e-12), (sub, key, shown[key], value)


@pytest.mark.parametrize("args,flag", [
    (["solve", "--divergence", "rkl"], "--out"),
    (["frontier", "--betas", "0.1"], "--out"),
    (["gap", "--divergence", "rkl", "--betas", "0.1"], "--out"),
    (["gap", "--divergence", "rkl", "--betas", "0.1"], "--export-problem"),
    (["coverage", "--divergence", "rkl", "--comparisons", "10"], "--export-comparisons"),
    (["coverage", "--divergence", "rkl", "--comparisons", "10"], "--export-fit"),
    (["bias", "--divergence", "rkl", "--betas", "0.1"], "--out"),
    (["check", "--divergence", "rkl"], "--export-policy"),
    (["check", "--method", "rloo", "--divergence", "rkl"], "--export-policy"),
    (["constrained", "--min-safety", "0"], "--out"),
    (["constrained", "--frontier", "0,0.5"], "--out"),
])
def test_an_output_that_is_the_data_file_is_refused(tmp_path, args, flag):
    """--out/--export-* naming the --data file itself replaced the input (atomic rename) with
    only a warning; the other commands' message (eval_claim_out), and the file is untouched"""
    p = tmp_path / "p.csv"
    write_problem(p, [0.5, 0.3, 0.2], [1.0, 0.0, -1.0], {"length": [10, 20, 30], "safety": [0.0, 1.0, 0.5]})
    before = p.read_bytes()
    same = str(tmp_path / "." / "p.csv")   # another spelling of the same file
    r = lab(*args, "--data", p, flag, same, check=False)
    assert r.returncode == 1, r.stderr
    assert r.stderr == f"fdpo lab: {flag} {same}: is the input --data {p}, which the output would replace; give another file\n"
    assert r.stdout == "" and p.read_bytes() == before


@pytest.mark.parametrize("args,flag", [
    (["solve", "--n", "5", "--divergence", "rkl"], "--out"),
    (["gap", "--n", "5", "--divergence", "rkl", "--betas", "0.1"], "--export-problem"),
    (["check", "--divergence", "rkl"], "--export-policy"),
    (["check", "--method", "rloo", "--divergence", "rkl"], "--export-policy"),
    (["constrained", "--n", "5", "--min-safety", "0", "--divergence", "rkl"], "--out"),
    (["coverage", "--divergence", "rkl", "--comparisons", "10"], "--export-fit"),
])
def test_an_output_that_cannot_be_written_fails_before_the_table(tmp_path, args, flag):
    """a second file (solve's --out, the exports) opened after the table printed the table to
    stdout and then failed. A 250-character name: claimable (its NAME.lock fits in 255 bytes)
    but not writable (the NAME.tmp.PID beside it does not)."""
    path = tmp_path / ("x" * 250)
    r = lab(*args, flag, path, check=False)
    assert r.returncode == 1, r.stderr
    assert f"{path}.tmp." in r.stderr and "File name too long" in r.stderr, r.stderr
    assert r.stdout == "" and not path.exists()


GENERATOR_FLAGS = [("--n", "7"), ("--pi-ref", "uniform"), ("--pi-ref", "zipf"), ("--zipf-s", "3"),
                   ("--dirichlet-alpha", "2"), ("--reward", "uniform"), ("--reward-scale", "50"),
                   ("--length-min", "1"), ("--length-max", "9")]


@pytest.mark.parametrize("exp,flag,value", [
    (exp, flag, value)
    for exp in ["solve", "frontier", "gap", "bias", "check", "check --method rloo", "coverage", "constrained"]
    for flag, value in GENERATOR_FLAGS + ([("--safety-correlation", "0.3")] if exp == "constrained" else [])
    if exp == "bias" or "length" not in flag  # the lengths are bias's flags alone
])
def test_generator_flags_are_refused_with_data(tmp_path, exp, flag, value):
    """with --data the generated problem's flags were silently ignored (only --n was refused);
    each is refused the same way, even at its default value (and constrained's load failure
    freed an uninitialised problem: a double free)"""
    p = tmp_path / "p.csv"
    write_problem(p, [0.5, 0.3, 0.2], [1.0, 0.0, -1.0], {"length": [10, 20, 30], "safety": [0.0, 1.0, 0.5]})
    extra = ["--min-safety", "0"] if exp == "constrained" else []
    r = lab(*exp.split(), "--data", p, flag, value, *extra, check=False)
    assert r.returncode == 1, r.stderr
    name = flag[2:]
    want = ("--n: not allowed with --data (the file sets the responses)" if name == "n" else
            f"--{name}: not allowed with --data (it shapes a generated problem; the file sets the problem)")
    assert r.stderr == f"fdpo lab: {want}\n" and r.stdout == ""


SEED_WITH_DATA = "--seed: not allowed with --data (it seeds a generated problem; the file sets the problem, and this " \
                 "run draws nothing else at random)"


@pytest.mark.parametrize("exp", ["solve", "frontier --betas 0.5,1", "bias", "check", "check --method dpo",
                                 "check --method online,rloo,kto --steps 5", "constrained --min-safety 0.3",
                                 "constrained --min-safety 0.3 --stepwise", "gap (reward_hat)"])
@pytest.mark.parametrize("given", ["flag", "config"])
def test_seed_is_refused_with_data_where_nothing_is_drawn(tmp_path, exp, given):
    """docs/lab.md: a flag the rest of the command line leaves without effect is refused. --seed
    seeds the generated problem; with --data these runs draw nothing else (gap with a reward_hat
    column draws no noise, check's --method runs are exact without --sampled): --seed 1 and
    --seed 2 gave byte-identical tables, accepted without a word, while --n and the generator's
    flags were refused"""
    p = tmp_path / "p.csv"
    write_problem(p, [0.3, 0.2, 0.2, 0.1, 0.1, 0.1], [1.0, 0.0, 0.5, 0.7, 0.2, 0.9],
                  {"length": [10, 20, 30, 40, 50, 60], "safety": [0.0, 1.0, 0.5, 0.2, 0.9, 0.4],
                   **({"reward_hat": [0.9, 0.1, 0.4, 0.8, 0.1, 1.0]} if exp.startswith("gap") else {})})
    args = [*exp.replace(" (reward_hat)", "").split(), "--data", p, "--threads", "1"]
    if given == "flag":
        r = lab(*args, "--seed", "2", check=False)
    else:
        cfg = tmp_path / "c.ini"
        cfg.write_text("seed = 2\n")
        r = lab(*args, "--config", cfg, check=False)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    want = (f"--seed: has no effect: --data {p} has a reward_hat column, so no noise is drawn" if exp.startswith("gap")
            else SEED_WITH_DATA)
    assert r.stderr.startswith(f"fdpo lab: {want}"), r.stderr
    assert lab(*args).returncode == 0   # without it the run goes on


@pytest.mark.parametrize("exp", ["gap --betas 1 --noise 0.5", "coverage --comparisons 20 --divergence rkl",
                                 "check --method online --sampled --steps 20 --divergence rkl"])
def test_seed_is_used_with_data_where_the_run_draws(tmp_path, exp):
    """gap's noise, coverage's comparisons and check's --sampled runs draw from --seed after
    the file is read: there it is accepted, and another seed gives other numbers"""
    p = tmp_path / "p.csv"
    write_problem(p, [0.3, 0.2, 0.2, 0.1, 0.1, 0.1], [1.0, 0.0, 0.5, 0.7, 0.2, 0.9])
    a, b = (lab(*exp.split(), "--data", p, "--threads", "1", "--seed", s).stdout for s in ("1", "2"))
    assert a != b


@pytest.mark.parametrize("args,needle", [
    (["--mixture", "0.3"], "--mixture: only used by --data-policy mixture (got --data-policy ref)"),
    (["--data-policy", "optimal", "--mixture", "0.5"], "--mixture: only used by --data-policy mixture (got --data-policy optimal)"),
    (["--data-divergence", "fkl"], "--data-divergence: only used by --data-policy optimal or mixture (got --data-policy ref)"),
    (["--data-policy", "uniform", "--data-divergence", "rkl"],
     "--data-divergence: only used by --data-policy optimal or mixture (got --data-policy uniform)"),
])
def test_coverage_refuses_flags_its_data_policy_does_not_use(args, needle):
    r = lab("coverage", *args, check=False)
    assert r.returncode == 1 and r.stderr == f"fdpo lab: {needle}\n" and r.stdout == "", r.stderr


def test_coverage_mixture_draws_from_the_documented_mixture(tmp_path):
    """--data-policy mixture --mixture 0.25: every compared response is drawn from
    (1 - W) pi_ref + W pi* = 0.75 pi_ref + 0.25 pi* (docs/lab.md), pi* = softmax(log pi_ref +
    r / beta) (scipy) for --data-divergence rkl: the 2 x 50000 draws' counts against it by a
    chi-square test (W and 1 - W swapped, the expected counts move by ~100 standard errors)."""
    from scipy import stats
    q, r = problem(6, 3)
    beta = 0.3
    p, cmp_path = tmp_path / "p.csv", tmp_path / "cmp.csv"
    write_problem(p, q, r)
    lab("coverage", "--input", p, "--comparisons", 50000, "--divergence", "rkl", "--beta", beta, "--data-policy",
        "mixture", "--mixture", 0.25, "--data-divergence", "rkl", "--export-comparisons", cmp_path)
    c = rows(cmp_path.read_text())
    drawn = np.array([int(e[k]) for e in c for k in ("winner", "loser")])
    d = 0.75 * q + 0.25 * special.softmax(np.log(q) + r / beta)
    assert np.abs(d - (0.25 * q + 0.75 * special.softmax(np.log(q) + r / beta))).max() > 0.05   # W matters here
    counts = np.bincount(drawn, minlength=6)
    pv = stats.chisquare(counts, d * len(drawn)).pvalue
    assert pv > 1e-6, (counts / len(drawn), d)


def test_coverage_data_policy_flags_still_work_where_used():
    base = ["coverage", "--n", "5", "--prompts", "1", "--comparisons", "10", "--divergence", "rkl"]
    a = lab(*base, "--data-policy", "mixture", "--mixture", "0.25", "--data-divergence", "fkl").stdout
    b = lab(*base, "--data-policy", "mixture", "--mixture", "0.75", "--data-divergence", "fkl").stdout
    assert rows(a)[0]["data_policy"] == "mixture" and a != b
    assert rows(lab(*base, "--data-policy", "optimal", "--data-divergence", "js").stdout)[0]["data_policy"] == "optimal"


@pytest.mark.parametrize("exp", ["solve", "frontier", "gap", "coverage", "bias", "check", "check --method rloo", "constrained"])
def test_seed_is_a_count(tmp_path, exp):
    """--seed is the library's uint64_t, as in the sampling commands (FLAG_COUNT): -1 was taken
    and wrapped to 2^64 - 1; it is refused on the command line and in --config"""
    extra = ["--min-safety", "0"] if exp == "constrained" else []
    r = lab(*exp.split(), "--seed", "-1", *extra, check=False)
    assert r.returncode == 1 and r.stderr == "fdpo lab: --seed: must not be negative (got -1)\n" and r.stdout == "", r.stderr
    cfg = tmp_path / "c.ini"
    cfg.write_text("seed = -1\n")
    r = lab(*exp.split(), "--config", cfg, *extra, check=False)
    assert r.returncode == 1 and f"{cfg}:1: key 'seed': must not be negative (got -1)" in r.stderr and r.stdout == "", r.stderr


@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5", "tv", "chi2"])
@pytest.mark.parametrize("beta", ["1e-320", "4.9406564584124654e-324"])
def test_subnormal_beta_is_a_number(tmp_path, div, beta):
    """--beta 1e-320 was 'not a finite number' (strtod's ERANGE for a subnormal) while --betas
    took it: a subnormal is a finite number; the solve is the mpmath optimum (tv: the greedy
    point mass, every reward gap being >> beta)"""
    q, r = tiny_beta_problem(1)
    s, pi = solve(tmp_path, div, beta, q, r)
    assert float(s["beta"]) == float(beta) > 0
    assert np.all(pi >= 0) and abs(pi.sum() - 1) <= 1e-12
    if div == "tv":
        top = r == r.max()
        np.testing.assert_allclose(pi, np.where(top, q / q[top].sum(), 0), rtol=1e-15, atol=0)
    else:
        np.testing.assert_allclose(pi, [float(x) for x in mp_optimum(div, q, r, float(beta))], rtol=0, atol=1e-14)
    cfg = tmp_path / "c.ini"
    cfg.write_text(f"beta = {beta}\n")
    assert float(rows(lab("solve", "--n", "4", "--divergence", div, "--config", cfg).stdout)[0]["beta"]) == float(beta)


@pytest.mark.parametrize("args,needle", [
    (["solve", "--beta", "1e-400"], "--beta: '1e-400' is out of range (it rounds to 0: the smallest double is 4.9e-324)"),
    (["solve", "--beta", "-1e-400"], "--beta: '-1e-400' is out of range (it rounds to 0: the smallest double is 4.9e-324)"),
    (["frontier", "--betas", "0.1,1e-400"], "--betas: '1e-400' is out of range (it rounds to 0: the smallest double is 4.9e-324)"),
    (["solve", "--beta", "1e999"], "--beta: '1e999' is not a finite number"),
    (["frontier", "--betas", "1e999"], "--betas: '1e999' is not a finite number"),
])
def test_numbers_out_of_range_are_named_alike(args, needle):
    """the single-value and the list parser read numbers the same way (one helper)"""
    r = lab(*args, check=False)
    assert r.returncode == 1 and r.stderr == f"fdpo lab: {needle}\n" and r.stdout == "", r.stderr


# ---- the generated problems (no --data): their distributions against scipy ----
# Every test above feeds --data or compares fdpo with itself on a generated problem; a wrong
# Zipf exponent, Gamma sampler or safety mix passed them all (mutation review).

def test_generated_zipf_pi_ref_and_reward_distributions(tmp_path):
    """pi_ref(k) ∝ k^-s exactly; gaussian rewards N(0, scale^2) and uniform ones U(-scale, scale)
    by Kolmogorov-Smirnov (fixed seeds: the p-values are the same every run)"""
    from scipy import stats
    for reward, scale, dist in (("gaussian", 2.0, stats.norm(0, 2.0)), ("uniform", 0.5, stats.uniform(-0.5, 1.0))):
        out = tmp_path / f"{reward}.csv"
        lab("solve", "--n", 5000, "--zipf-s", 1.3, "--reward", reward, "--reward-scale", scale, "--divergence", "rkl",
            "--seed", 4, "--out", out)
        d = rows(out.read_text())
        q = np.array([float(e["pi_ref"]) for e in d])
        k = np.arange(1, len(q) + 1, dtype=np.float64)
        want = k ** -1.3 / np.sum(k ** -1.3)
        assert np.max(np.abs(q - want) / want) < 1e-12
        r = np.array([float(e["reward"]) for e in d])
        assert stats.kstest(r, dist.cdf).pvalue > 1e-3, reward


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_generated_dirichlet_pi_ref_has_the_beta_marginal(tmp_path, alpha):
    """--pi-ref dirichlet: each prompt's pi_ref is one Dirichlet(alpha, ..., alpha) draw, so over
    1500 independent prompts of 3 responses the first component is Beta(alpha, 2 alpha) (the
    Marsaglia-Tsang sampler, and its alpha < 1 boost at 0.3)"""
    from scipy import stats
    exp = tmp_path / "problem.csv"
    lab("gap", "--n", 3, "--prompts", 1500, "--pi-ref", "dirichlet", "--dirichlet-alpha", alpha, "--divergence", "rkl",
        "--betas", 1, "--noise", 0.1, "--export-problem", exp, "--seed", 8)
    d = rows(exp.read_text())
    first = {}
    for e in d:
        first.setdefault(int(e["prompt"]), float(e["pi_ref"]))
    x = np.array([first[p] for p in sorted(first)])
    assert len(x) == 1500
    assert stats.kstest(x, stats.beta(alpha, 2 * alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("c", [-0.5, 0.8])
def test_generated_safety_mixes_the_reward_and_a_standard_normal(tmp_path, c):
    """lab constrained without --data: g = c r/sd(r) + sqrt(1 - c^2) N(0, 1), sd(r) the root mean
    square of the rewards (docs/lab.md): the residual, rescaled, is standard normal (KS)"""
    from scipy import stats
    out = tmp_path / "pi.csv"
    lab("constrained", "--n", 4000, "--safety-correlation", c, "--min-safety", -10, "--divergence", "rkl",
        "--seed", 3, "--out", out)
    d = rows(out.read_text())
    r = np.array([float(e["reward"]) for e in d])
    g = np.array([float(e["safety"]) for e in d])
    noise = (g - c * r / np.sqrt(np.mean(r * r))) / math.sqrt(1 - c * c)
    assert stats.kstest(noise, stats.norm(0, 1).cdf).pvalue > 1e-3
