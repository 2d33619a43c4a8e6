"""fdpo lab at the edges of double precision: the constrained stepwise policy from a pi1 that
underflows, alpha:A for A from 1e-6 to within 2e-16 of 1, the messages of failed solves inside
frontier and the constrained sweep, and which subcommands have the length flags.

References are 50-digit mpmath optima (no exponent range: e^-1000 is a number there); no
expected value comes from fdpo itself.
"""
import mpmath as mp
import numpy as np
import pytest
from test_lab import lab, rows  # noqa: E402
from test_lab import mp_optimum_mpf as mp_optimum  # noqa: E402  (pi* for mpf pi_ref, any exponent)


def write_csv(path, cols):
    names = list(cols)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for i in range(len(cols[names[0]])):
            f.write(",".join(repr(float(cols[c][i])) for c in names) + "\n")


# ---- D4: constrained --stepwise when pi1 underflows ----

STEP_Q, STEP_R, STEP_G = [0.4, 0.3, 0.3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.5]


def mp_constrained(div, q, r, g, beta, b):
    """lambda* (bisection on E_{pi_lambda}[g] = b, which is non-decreasing in lambda), the joint
    optimum and the two-step policy: pi1 for r from q at beta, then for g from pi1 at beta/lambda*"""
    mp.mp.dps = 50
    Q, R, G, B = [[mp.mpf(x) for x in v] for v in (q, r, g)] + [mp.mpf(beta)]
    eg = lambda lam: mp.fsum(p * x for p, x in zip(mp_optimum(div, Q, [a + lam * c for a, c in zip(R, G)], B), G))
    lo, hi = mp.mpf(0), mp.mpf(1)
    assert eg(lo) < b
    while eg(hi) < b:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eg(mid) < b else (lo, mid)
    lam = hi
    joint = mp_optimum(div, Q, [a + lam * c for a, c in zip(R, G)], B)
    pi1 = mp_optimum(div, Q, R, B)
    step = mp_optimum(div, pi1, G, B / lam)
    return lam, joint, pi1, step


@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.3", "alpha:0.7"])
def test_stepwise_from_a_pi1_that_underflows(tmp_path, div):
    """beta = 0.001 leaves pi1 = e^-1000 on the responses without reward (rkl, js): in linear
    space they were 0, so rkl's second step could not move mass there (E[g] 0 and
    max |pi_step - pi*| 0.3, where DESIGN §4 makes the two equal) and js's solve did not
    converge. pi_stepwise is the mpmath two-step from pi1 (js: the safest response takes
    everything, its pi1 of e^-1000 notwithstanding, since JS's (f')^-1 has a pole)."""
    p, out = tmp_path / "s.csv", tmp_path / "pi.csv"
    write_csv(p, {"pi_ref": STEP_Q, "reward": STEP_R, "safety": STEP_G})
    t = rows(lab("constrained", "--data", p, "--divergence", div, "--beta", "0.001", "--min-safety", "0.3",
                 "--stepwise", "--out", out, "--threads", "1").stdout)[0]
    lam, joint, pi1, step = mp_constrained(div, STEP_Q, STEP_R, STEP_G, 0.001, 0.3)
    if div in ("rkl", "js"):
        assert float(min(pi1)) == 0  # the case: pi1 underflows in doubles
    assert float(t["lambda"]) == pytest.approx(float(lam), rel=1e-9)
    ours = np.array([float(x["pi_stepwise"]) for x in rows(out.read_text())])
    ref = np.array([float(x) for x in step])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert float(t["stepwise_expected_reward"]) == pytest.approx(float(mp.fsum(a * b for a, b in zip(step, STEP_R))), abs=1e-9)
    assert float(t["stepwise_expected_safety"]) == pytest.approx(float(mp.fsum(a * b for a, b in zip(step, STEP_G))), abs=1e-9)
    gap = max(abs(float(a - b)) for a, b in zip(step, joint))
    assert float(t["stepwise_max_abs_diff"]) == pytest.approx(gap, rel=1e-6, abs=1e-12)
    if div == "rkl":  # exact composition: the joint optimum, E[g] = b
        assert gap < 1e-30 and float(t["stepwise_max_abs_diff"]) <= 1e-12
        assert float(t["stepwise_expected_safety"]) == pytest.approx(0.3, abs=1e-12)


def test_stepwise_js_on_a_generated_problem_and_in_a_sweep(tmp_path):
    """the default generated problem at beta = 0.001 failed with "js at beta 0.00118...: did not
    converge" (the second step's beta/lambda*, a beta never given), the sweep with "an inner
    solve failed"; now a distribution whose E[r], E[g] are the reported ones"""
    out = tmp_path / "pi.csv"
    t = rows(lab("constrained", "--n", "300", "--min-safety", "0.5", "--beta", "0.001", "--stepwise",
                 "--divergence", "js", "--out", out, "--threads", "1").stdout)[0]
    pis = rows(out.read_text())
    ps = np.array([float(x["pi_stepwise"]) for x in pis])
    g = np.array([float(x["safety"]) for x in pis])
    r = np.array([float(x["reward"]) for x in pis])
    assert np.all(ps >= 0) and ps.sum() == pytest.approx(1, abs=1e-12)
    assert float(t["stepwise_expected_safety"]) == pytest.approx(ps @ g, abs=1e-12)
    assert float(t["stepwise_expected_reward"]) == pytest.approx(ps @ r, abs=1e-12)
    p = tmp_path / "s.csv"
    write_csv(p, {"pi_ref": STEP_Q, "reward": STEP_R, "safety": STEP_G})
    sweep = rows(lab("constrained", "--data", p, "--frontier", "0.1:0.5:3", "--beta", "0.001", "--stepwise",
                     "--divergence", "js,rkl", "--threads", "1").stdout)
    assert len(sweep) == 6 and all(x["feasible"] == "1" for x in sweep)
    for x in sweep:
        if x["divergence"] == "rkl":
            assert float(x["stepwise_expected_safety"]) == pytest.approx(float(x["min_safety"]), abs=1e-12)
        else:  # the safest response takes everything (see above)
            assert float(x["stepwise_expected_safety"]) == pytest.approx(1, abs=1e-12)


TIED_Q, TIED_G = [0.4, 0.2, 0.2, 0.2], [0.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize("div,r1,r2,beta", [
    ("js", 0.2562, 0.2575, 0.001),    # pi1 e^-745.7 (0 in doubles) and e^-744.4 (5e-324)
    ("js", 0.25695, 0.25805, 0.001),  # both subnormal: 5e-324 and 1e-323, a ratio of 2 in doubles
    ("js", 0.2550, 0.2575, 0.001),    # 0 (e^-747) and 5e-324
    ("js", 0.2540, 0.2550, 0.001),    # both 0 in doubles: the pole case, right before
    ("fkl", -9.0, 0.0, 1e-322),       # a subnormal beta: pi1 0 and 2e-323
])
def test_stepwise_splits_tied_safest_responses_by_log_pi1(tmp_path, div, r1, r2, beta):
    """The second step's best responses (safety 1) have a pi1 that is 0 or subnormal in doubles,
    log pi1 finite: their split came from the linear pi1 (none or a bit or two of it): js gave
    (0, 1) against mpmath's (0.214, 0.786) and (1/3, 2/3) against (0.2497, 0.7503), fkl (0, 1)
    against (1/11, 10/11). Against the 50-digit mpmath two-step; log pi1 ~ -745 carries ~1e-13."""
    r = [1.0, r1, r2, 0.5]
    p, out = tmp_path / "s.csv", tmp_path / "pi.csv"
    write_csv(p, {"pi_ref": TIED_Q, "reward": r, "safety": TIED_G})
    t = rows(lab("constrained", "--data", p, "--divergence", div, "--beta", beta, "--min-safety", "0.3",
                 "--stepwise", "--out", out, "--threads", "1").stdout)[0]
    lam, joint, pi1, step = mp_constrained(div, TIED_Q, r, TIED_G, beta, 0.3)
    assert all(float(x) < 2.3e-308 and x > 0 for x in pi1[1:3])  # the case: tiny in doubles, not in mpmath
    ours = np.array([float(x["pi_stepwise"]) for x in rows(out.read_text())])
    np.testing.assert_allclose(ours, [float(x) for x in step], rtol=1e-12, atol=1e-15)
    assert ours.sum() == pytest.approx(1, abs=1e-15)
    assert float(t["stepwise_expected_reward"]) == pytest.approx(float(mp.fsum(a * b for a, b in zip(step, r))), abs=1e-12)
    assert float(t["stepwise_expected_safety"]) == pytest.approx(1, abs=1e-15)
    gap = max(abs(float(a - b)) for a, b in zip(step, joint))
    assert float(t["stepwise_max_abs_diff"]) == pytest.approx(gap, abs=1e-12)


# ---- D5: alpha:A near 1 ----

ALPHAS = ["1e-06", "0.0001", "0.01", "0.5", "0.99", "0.999999", "0.9999999999", "0.9999999999999",
          "0.999999999999999", "0.9999999999999998"]


@pytest.mark.parametrize("a", ALPHAS)
@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_alpha_f_divergence_over_the_whole_range(tmp_path, a, beta):
    """(u^(1-A) - (1-A) u - A)/(A(A-1)) in doubles cancels to ~1e-16/(1-A): D_f was 10% off at
    A = 1 - 2e-16 (1.0847 against 0.98319). Against mpmath at the double A the CLI reads; below
    A ~ 1e-4 pi itself is good to ~1e-16/A (docs/lab.md, Accuracy limits)."""
    q, r = [0.5, 0.3, 0.2], [1.0, 0.0, -1.0]
    p = tmp_path / "p.csv"
    write_csv(p, {"pi_ref": q, "reward": r})
    t = rows(lab("solve", "--data", p, "--divergence", f"alpha:{a}", "--beta", beta, "--threads", "1").stdout)[0]
    mp.mp.dps = 50
    A, Q, R, B = mp.mpf(float(a)), [mp.mpf(x) for x in q], [mp.mpf(x) for x in r], mp.mpf(beta)
    pi = mp_optimum(f"alpha:{a}", Q, R, B)
    fd = mp.fsum(qi * ((p / qi) ** (1 - A) - (1 - A) * (p / qi) - A) / (A * (A - 1)) for p, qi in zip(pi, Q))
    obj = mp.fsum(p * x for p, x in zip(pi, R)) - B * fd
    tol = 1e-13 + 1e-14 / float(a)
    assert float(t["f_divergence"]) == pytest.approx(float(fd), rel=tol)
    assert float(t["objective"]) == pytest.approx(float(obj), rel=tol)


def test_gap_without_noise_is_zero_near_alpha_one():
    """sigma = 0: pi-hat is pi*, every gap 0 (the objective gap was -0.0315 and 0.0531)"""
    t = rows(lab("gap", "--n", "50", "--prompts", "2", "--noise", "0", "--betas", "0.1,1", "--threads", "1",
                 "--divergence", "alpha:0.9999999999999998,alpha:0.99999999999,alpha:0.000001").stdout)
    assert len(t) == 6
    for x in t:
        assert abs(float(x["objective_gap"])) <= 1e-15 and float(x["reward_gap"]) == 0, x


# ---- D6: frontier and the constrained sweep on a problem whose solve once failed ----

def test_frontier_and_sweep_solve_a_best_response_with_pi_ref_1e_320(tmp_path):
    """frontier said only "a solve failed" and the sweep "an inner solve failed" on this problem
    (fkl did not converge); it solves now, and no CLI input is known to make a solve fail inside
    them (the CLI refuses an alpha below 1e-6 at --divergence), so that their failure carries the
    solve's own message is tests/c/test_lab.c's frontier_and_sweep_keep_the_solves_message. Here:
    the rows against mpmath (frontier), E[g] = max(b, E_pi*[g]) (the sweep)."""
    q, r, g = [1.0, 1e-320], [0.0, 1.0], [1.0, 0.0]
    p = tmp_path / "d.csv"
    write_csv(p, {"pi_ref": q, "reward": r, "safety": g})
    front = rows(lab("frontier", "--data", p, "--divergence", "rkl,fkl", "--betas", "0.1,1", "--threads", "2").stdout)
    sweep = rows(lab("constrained", "--data", p, "--divergence", "rkl,fkl", "--beta", "0.1", "--frontier", "0.2:0.6:3",
                     "--threads", "2").stdout)
    assert len(front) == 4 and len(sweep) == 6
    mp.mp.dps = 50
    Q, R = [mp.mpf(x) for x in q], [mp.mpf(x) for x in r]
    for x in front:
        div, B = x["divergence"], mp.mpf(float(x["beta"]))
        pi = mp_optimum(div, Q, R, B)
        fd = mp.fsum(a * mp.log(a / b) for a, b in zip(pi, Q)) if div == "rkl" else \
            mp.fsum(b * mp.log(b / a) for a, b in zip(pi, Q))
        # abs: a probability far below 1e-16 next to one near 1 is known to sum pi's 1e-15 (docs/lab.md)
        assert float(x["expected_reward"]) == pytest.approx(float(pi[1]), rel=1e-12, abs=1e-15), x
        assert float(x["f_divergence"]) == pytest.approx(float(fd), rel=1e-12, abs=1e-15), x
    for x in sweep:
        eg = mp_optimum(x["divergence"], Q, R, mp.mpf(0.1))[0]   # E[g] of the unconstrained optimum
        assert x["feasible"] == "1"
        assert float(x["expected_safety"]) == pytest.approx(max(float(x["min_safety"]), float(eg)), abs=1e-12), x


# ---- D7: --length-min/--length-max belong to bias alone ----

@pytest.mark.parametrize("sub", ["solve", "frontier", "gap", "coverage", "check", "constrained", "bias"])
def test_length_flags_are_listed_only_where_they_work(sub):
    """--help of every subcommand listed them with their defaults, and every one but bias then
    refused them ("has no effect here")"""
    text = lab(sub, "--help").stdout
    listed = [f for f in ("--length-min", "--length-max") if f"  {f} " in text]
    if sub == "bias":
        assert listed == ["--length-min", "--length-max"]
        r = lab("bias", "--n", "20", "--length-min", "5", "--length-max", "9", "--divergence", "rkl", "--betas", "0.1",
                "--threads", "1")
        assert len(rows(r.stdout)) == 1
    else:
        assert listed == []


# ---- wave 45: gap's bound where pi* underflows, tv on a pi_ref kept within 1e-9, safety ~1e308 ----

def test_gap_bound_keeps_the_term_of_a_pi_star_that_underflows(tmp_path):
    """rkl, pi_ref (1/2, 1/2), r (1, 0), r_hat (1, 1): the bound is pi*(1) e^(1/beta) * 1 =
    e^(1/beta)/(1 + e^(1/beta)) ~ 1 (mpmath), and the gap 1/2 is within it. pi*(1) = e^-1000 underflows
    at beta 0.001 (the term was dropped: bound 0, bound_held 0) and is subnormal at 0.0014 (inf)."""
    p = tmp_path / "gb.csv"
    write_csv(p, {"pi_ref": [0.5, 0.5], "reward": [1, 0], "reward_hat": [1, 1]})
    out = rows(lab("gap", "--data", p, "--divergence", "rkl", "--betas", "0.001,0.0014,0.002,0.01", "--threads", 1).stdout)
    mp.mp.dps = 50
    assert len(out) == 4
    for row in out:
        e = mp.exp(1 / mp.mpf(row["beta"]))
        assert float(row["bound"]) == pytest.approx(float(e / (1 + e)), rel=1e-12)
        assert row["bound_held"] == "1"


def test_gap_bound_keeps_the_term_whose_exp_overflows_alone(tmp_path):
    """rkl, pi_ref (1/2, 1/2), r (1, 0), r_hat (1, 2) at beta 1/400: pi*(1) = 1/(1 + e^400) is a normal
    double but e^(eps/beta) = e^800 overflows; the bound pi*(1) e^800 * 2 = 2 e^800/(1 + e^400) ~ 1e174
    (mpmath) read inf (review of wave 45)."""
    p = tmp_path / "gb.csv"
    write_csv(p, {"pi_ref": [0.5, 0.5], "reward": [1, 0], "reward_hat": [1, 2]})
    out = rows(lab("gap", "--data", p, "--divergence", "rkl", "--betas", "0.0025", "--threads", 1).stdout)
    mp.mp.dps = 50
    beta = mp.mpf(out[0]["beta"])
    want = 2 * mp.exp(2 / beta) / (1 + mp.exp(1 / beta))
    assert float(out[0]["bound"]) == pytest.approx(float(want), rel=1e-12)
    assert out[0]["bound_held"] == "1"


@pytest.mark.parametrize("g1,b,divs", [(-1e308, 9e307, "rkl,js"), (-1e307, 9e307, "rkl,js"), (-1e307, 8e307, "rkl")])
def test_constrained_with_a_safety_of_scale_1e308(tmp_path, g1, b, divs):
    """Two responses, pi_ref (1/2, 1/2), r (1, 0), g (1e308, g1): the active constraint fixes
    pi*(0) = p = (b - g1)/(g0 - g1) for every f, so E[r] = p, E[g] = b and KL = p log 2p + (1-p) log 2(1-p);
    rkl's lambda* = (logit p - 1)/(g0 - g1) (beta 1), subnormal here (mpmath, 40 digits). g0 - g1 = inf hung
    the bracket (g1 = -1e308); a lambda* below brent's old 1e-300 floor came back unrefined (E[g] 9% over b).
    (js at b = 8e307 is inactive: its pi*_0 already meets b.)"""
    import subprocess
    from test_lab import FDPO
    p = tmp_path / "sf.csv"
    write_csv(p, {"pi_ref": [0.5, 0.5], "reward": [1, 0], "safety": [1e308, g1]})
    r = subprocess.run([FDPO, "lab", "constrained", "--data", str(p), "--min-safety", repr(b), "--divergence", divs,
                        "--beta", "1", "--threads", "1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    mp.mp.dps = 40
    G0, G1, B = mp.mpf(1e308), mp.mpf(g1), mp.mpf(b)
    P = (B - G1) / (G0 - G1)
    kl = P * mp.log(2 * P) + (1 - P) * mp.log(2 * (1 - P))
    out = {row["divergence"]: row for row in rows(r.stdout)}
    for div, row in out.items():
        assert row["active"] == "1"
        assert float(row["expected_reward"]) == pytest.approx(float(P), rel=1e-12), div
        assert float(row["expected_safety"]) == pytest.approx(b, rel=1e-12), div
        assert float(row["kl"]) == pytest.approx(float(kl), rel=1e-11), div
    lam = (mp.log(P / (1 - P)) - 1) / (G0 - G1)
    assert float(out["rkl"]["lambda"]) == pytest.approx(float(lam), rel=1e-9)


# ---- wave 46: a lambda* just under the bracket's 1e300 cap ----

@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5"])
def test_constrained_lambda_just_under_the_1e300_cap(tmp_path, div):
    """pi_ref (1/2, 1/2), r (1, 0), g (-e, e) with e = 1e-300 and b = 0: the constraint is active at
    pi = (1/2, 1/2), i.e. r + lambda g equal on both, 1 - lambda e = lambda e, lambda* = 1/(2e) = 5e299
    (the documented rule, any f: equal pi_ref and equal r + lambda g give equal pi). The bracket
    doubled from 5e299 straight to 1.5e300 and refused ("no lambda <= 1e300 reaches E[safety] = 0")
    without trying any lambda in (5e299, 1e300] (hunt of wave 46)."""
    import subprocess
    from test_lab import FDPO
    p = tmp_path / "sf.csv"
    write_csv(p, {"pi_ref": [0.5, 0.5], "reward": [1, 0], "safety": [-1e-300, 1e-300]})
    r = subprocess.run([FDPO, "lab", "constrained", "--data", str(p), "--min-safety", "0", "--divergence", div,
                        "--beta", "1", "--threads", "1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    row = rows(r.stdout)[0]
    assert row["active"] == "1" and row["feasible"] == "1"
    lam = 1 / (2 * mp.mpf("1e-300"))
    assert float(row["lambda"]) == pytest.approx(float(lam), rel=1e-12)
    assert float(row["expected_reward"]) == pytest.approx(0.5, rel=1e-12)
    assert float(row["expected_safety"]) >= 0   # the reported lambda* is the bracket end with E[g] >= b


# ---- fix B1: the bracket's first step is capped at 1e300 too ----

@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5"])
def test_constrained_lambda_above_the_1e300_cap_is_refused(tmp_path, div):
    """pi_ref (1/2, 1/2), r (1, 0), g (-e, e) with e = 1e-301 and b = 0: as above lambda* = 1/(2e) = 5e300
    (the documented rule), above the documented cap of 1e300, so the run is refused as out of reach.
    The bracket's first step, beta/range(g) = 5e300, was not capped: it was taken and returned as
    lambda* with exit 0. In a --frontier sweep the same threshold is a row with feasible = 0."""
    import subprocess
    from test_lab import FDPO
    p = tmp_path / "sf.csv"
    write_csv(p, {"pi_ref": [0.5, 0.5], "reward": [1, 0], "safety": [-1e-301, 1e-301]})
    r = subprocess.run([FDPO, "lab", "constrained", "--data", str(p), "--min-safety", "0", "--divergence", div,
                        "--beta", "1", "--threads", "1"], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and r.stdout == ""
    assert "--min-safety 0: no lambda <= 1e300 reaches E[safety] = 0" in r.stderr, r.stderr
    sweep = rows(lab("constrained", "--data", p, "--frontier", "-8e-302,0", "--divergence", div, "--beta", "1",
                     "--threads", "1").stdout)
    assert [row["feasible"] for row in sweep] == ["1", "0"]
    assert float(sweep[0]["lambda"]) <= 1e300 and sweep[1]["lambda"] == "nan"
