"""fdpo lab check --method: alignment algorithms on a tabular problem against an independent pi*.

pi* is computed here, not by fdpo: scipy.special.softmax(log pi_ref + r/beta) for reverse KL and
scipy.optimize.brentq on sum_y pi_ref(y) (f')^-1((r(y) - lambda)/beta) = 1 for fkl, js, alpha
(DESIGN.md §4). The offline-DPO optimum on pairs restricted to the top responses of pi_ref has
its own closed form for reverse KL (below), also written here.
"""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, special

sys.path.insert(0, os.path.dirname(__file__))
from fdpo_ref.fdiv import fprime_inv  # noqa: E402  (the independent f-table)

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
DIVS = ["rkl", "fkl", "js", "alpha:0.5"]


def lab(*args, check=True):
    r = subprocess.run([FDPO, "lab", "check", *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def sup(div):
    return {"fkl": 0.0, "js": np.log(2)}.get(div, None) if not div.startswith("alpha") else 1 / float(div[6:])


def pistar(div, beta, q, r):
    if div == "rkl":
        return special.softmax(np.log(q) + r / beta)
    # pi = q g((r - lam)/beta) needs (r - lam)/beta < sup: lam > max r - beta sup
    lo = r.max() - beta * sup(div)
    h = lambda lam: np.sum(q * fprime_inv(div, (r - lam) / beta)) - 1
    a, b = lo + 1e-15 * max(1, abs(lo)), lo + 1.0
    while h(b) > 0:
        b = lo + 2 * (b - lo)
    while h(a) < 0:  # the pole is too close to represent: move towards it
        a = lo + (a - lo) / 2
    lam = optimize.brentq(h, a, b, xtol=1e-15, rtol=1e-15, maxiter=500)
    return q * fprime_inv(div, (r - lam) / beta)


@pytest.fixture
def problem(tmp_path):
    """Zipf pi_ref whose rarest responses carry the highest rewards: pi* lives in pi_ref's tail."""
    q = 1.0 / np.arange(1, 7)
    q /= q.sum()
    r = np.array([-0.5, 0.1, -0.2, 0.6, 1.0, 1.4])
    path = tmp_path / "p.csv"
    with open(path, "w") as f:
        f.write("pi_ref,reward\n")
        for a, b in zip(q, r):
            f.write(f"{a!r},{b!r}\n")
    return path, q, r


def run(problem, tmp_path, *args):
    path, q, r = problem
    pi_file = tmp_path / "pi.csv"
    t = rows(lab("--data", path, "--export-policy", pi_file, *args).stdout)
    pis = {}
    for x in rows(pi_file.read_text()):
        pis.setdefault((x["method"], x["divergence"]), []).append(float(x["pi"]))
    return t, {k: np.array(v) for k, v in pis.items()}


def test_offline_dpo_does_not_reach_pistar_when_pairs_miss_its_support(problem, tmp_path):
    _, q, r = problem
    beta = 0.5
    t, pis = run(problem, tmp_path, "--method", "dpo", "--pair-top", "3", "--divergence", ",".join(DIVS), "--beta", beta)
    for row in t:
        div = row["divergence"]
        ps = pistar(div, beta, q, r)
        pi = pis[("dpo", div)]
        assert abs(np.sum(pi) - 1) < 1e-12
        # pi* puts most of its mass on the 3 responses the pairs never propose
        assert float(row["uncovered_mass"]) == pytest.approx(ps[3:].sum(), abs=1e-9)
        assert ps[3:].sum() > 0.5
        assert float(row["max_abs_diff"]) == pytest.approx(np.max(np.abs(pi - ps)), abs=1e-9)
        assert float(row["max_abs_diff"]) > 0.1
        assert float(row["objective_gap"]) > 0.05
    # reverse KL: the loss only sees theta_i - theta_j inside the top-3 block and its gradient
    # sums to 0 there, so from theta = log pi_ref the unseen logits stay put, the block's sum of
    # logits is kept, and inside the block beta (l_i - l_j) = r_i - r_j
    theta = np.log(q)
    theta[:3] += (r[:3] - r[:3].mean()) / beta
    np.testing.assert_allclose(pis[("dpo", "rkl")], special.softmax(theta), atol=1e-8)


def test_offline_dpo_with_full_coverage_reaches_pistar(problem, tmp_path):
    _, q, r = problem
    t, pis = run(problem, tmp_path, "--method", "dpo", "--pair-top", "6", "--divergence", ",".join(DIVS), "--beta", 0.5)
    for row in t:
        np.testing.assert_allclose(pis[("dpo", row["divergence"])], pistar(row["divergence"], 0.5, q, r), atol=1e-7)


@pytest.mark.parametrize("method,tol", [("online", 1e-8), ("rloo", 1e-9)])
def test_exact_online_dpo_and_rloo_converge_to_pistar(problem, tmp_path, method, tol):
    _, q, r = problem
    beta = 1.0
    t, pis = run(problem, tmp_path, "--method", method, "--divergence", ",".join(DIVS), "--beta", beta)
    assert len(t) == len(DIVS)
    for row in t:
        div = row["divergence"]
        assert row["variant"] == "exact" and row["samples"] == "0"
        ps = pistar(div, beta, q, r)
        assert ps[3:].sum() > 0.5  # the same uncovered optimum offline DPO misses
        np.testing.assert_allclose(pis[(method, div)], ps, atol=tol)
        assert abs(float(row["objective_gap"])) <= 1e-9


@pytest.mark.parametrize("beta", [3.0, 10.0, 300.0, 1000.0])
def test_exact_online_dpo_and_rloo_converge_to_pistar_at_large_beta(problem, tmp_path, beta):
    """The default steps (online 5, rloo 1) were fixed: lr * (the field's curvature at pi*) > 2
    made pi* an unstable fixed point once beta grew (curvature ~ beta^2 online, ~ beta rloo), and
    the runs ended 0.05-0.92 from pi* at the step cap. The step now halves where it does not
    lower the exact loss, so every beta converges, to the in-test brentq pi*. At beta 300 and
    1000 rloo's decrease drowned in the loss's rounding and the halving stalled it 1e-9 short
    (the exact gradient now decides there)."""
    _, q, r = problem
    div = ",".join(DIVS + ["alpha:0.3", "alpha:0.7"])
    path = problem[0]
    pi_file = tmp_path / "pi.csv"
    res = lab("--data", path, "--export-policy", pi_file, "--method", "online,rloo", "--divergence", div, "--beta", beta)
    t = rows(res.stdout)
    pis = {}
    for x in rows(pi_file.read_text()):
        pis.setdefault((x["method"], x["divergence"]), []).append(float(x["pi"]))
    assert len(t) == 12
    for row in t:
        ps = pistar(row["divergence"], beta, q, r)
        np.testing.assert_allclose(pis[(row["method"], row["divergence"])], ps, atol=1e-13, err_msg=str(row))
        assert int(row["iterations"]) < 200000  # stopped by its convergence test, not the cap
    assert "did not converge" not in res.stderr and "stopped after" not in res.stderr


@pytest.mark.parametrize("method,beta", [("online", 2.2), ("online", 5.0), ("rloo", 50.0)])
def test_exact_runs_at_the_gradients_rounding_floor_stop(problem, tmp_path, method, beta):
    """online fkl at beta 2.2, online rkl at 5 and rloo (every f) at 50 reached pi* to 2e-16, then swapped
    two iterates ~1e-15 apart for ever: the gradient's rounding floor (~3e-16 .. 3e-14) times the step stayed
    above the 1e-15 stop test, so they ran all 200000 steps and warned "did not converge". A step that
    returns to the iterate before the last one (same step length) now ends the run as converged."""
    _, q, r = problem
    divs = DIVS + ["alpha:0.3", "alpha:0.7"]
    pi_file = tmp_path / "pi.csv"
    res = lab("--data", problem[0], "--export-policy", pi_file, "--method", method, "--divergence", ",".join(divs),
              "--beta", beta)
    t = rows(res.stdout)
    pis = {}
    for x in rows(pi_file.read_text()):
        pis.setdefault(x["divergence"], []).append(float(x["pi"]))
    assert len(t) == len(divs)
    for row in t:
        ps = pistar(row["divergence"], beta, q, r)
        np.testing.assert_allclose(pis[row["divergence"]], ps, rtol=0, atol=1e-13, err_msg=str(row))
        assert float(row["max_abs_diff"]) == pytest.approx(np.max(np.abs(np.array(pis[row["divergence"]]) - ps)), abs=1e-15)
        assert int(row["iterations"]) < 1000, row   # stopped at pi* (a few hundred steps), not at the 200000 cap
    assert "did not converge" not in res.stderr and "stopped after" not in res.stderr, res.stderr


def test_a_slow_exact_run_still_warns(problem):
    """real non-convergence still warns: rkl at beta 0.05 is still 2e-4 from pi* (in-test softmax) after
    the default 200000 steps, online and rloo alike"""
    path, q, r = problem
    res = lab("--data", path, "--method", "online,rloo", "--divergence", "rkl", "--beta", 0.05)
    ps = pistar("rkl", 0.05, q, r)
    for row in rows(res.stdout):
        assert row["iterations"] == "200000" and float(row["max_abs_diff"]) > 1e-5
        m = row["method"]
        assert f"--method {m} --divergence rkl --beta 0.05: the exact run did not converge in 200000 steps" in res.stderr
    assert ps.max() > 0.9


def test_an_exact_run_that_runs_out_of_steps_says_so(problem):
    """an exact run stopped by --steps reports where it stopped, which is not the method's limit:
    a warning names the run (a run that converges says nothing)"""
    path = problem[0]
    r = lab("--data", path, "--method", "online,rloo", "--divergence", "rkl", "--beta", 1, "--steps", 10)
    for m in ("online", "rloo"):
        assert f"--method {m} --divergence rkl --beta 1: the exact run did not converge in 10 steps (--steps 10" in r.stderr
    assert "did not converge" not in lab("--data", path, "--method", "rloo", "--divergence", "rkl", "--beta", 1).stderr


def test_sampled_rloo_and_grpo_reach_pistar_with_enough_samples(problem, tmp_path):
    _, q, r = problem
    beta = 1.0
    t, pis = run(problem, tmp_path, "--method", "rloo,grpo", "--sampled", "--group-size", 8, "--steps", 100000,
                 "--divergence", ",".join(DIVS), "--beta", beta, "--seed", 5)
    for row in t:
        div = row["divergence"]
        assert row["variant"] == "sampled" and int(row["samples"]) == 800000
        err = np.max(np.abs(pis[(row["method"], div)] - pistar(div, beta, q, r)))
        assert err <= 1e-3, (row["method"], div, err)


def test_sampled_online_dpo_gets_close(problem, tmp_path):
    # Bradley-Terry labels stay random at pi*, so the noise does not vanish there (unlike
    # RLOO's shaped reward, which is constant at pi*): a looser, honest tolerance
    _, q, r = problem
    t, pis = run(problem, tmp_path, "--method", "online", "--sampled", "--group-size", 8, "--divergence", ",".join(DIVS),
                 "--beta", 1.0, "--seed", 2)
    for row in t:
        # samples = responses drawn: --group-size 8 pairs of two responses a step, 100000 steps
        assert row["variant"] == "sampled" and int(row["samples"]) == 2 * 8 * 100000, row
        err = np.max(np.abs(pis[("online", row["divergence"])] - pistar(row["divergence"], 1.0, q, r)))
        assert err <= 1e-2, (row["divergence"], err)


def test_exact_grpo_has_pistar_as_fixed_point(problem, tmp_path):
    # the group-normalised field does not shrink near pi* (scale-free until the spread is ~eps),
    # so the decaying step approaches pi* slowly: the exact run gets within 1e-2
    _, q, r = problem
    t, pis = run(problem, tmp_path, "--method", "grpo", "--group-size", 3, "--divergence", "rkl,alpha:0.5", "--beta", 1.0)
    for row in t:
        err = np.max(np.abs(pis[("grpo", row["divergence"])] - pistar(row["divergence"], 1.0, q, r)))
        assert err <= 1e-2, (row["divergence"], err)


def test_same_seed_same_numbers_and_json(problem, tmp_path):
    path, _, _ = problem
    args = ["--data", path, "--method", "online,rloo", "--sampled", "--steps", 2000, "--seed", 9]
    a, b = lab(*args).stdout, lab(*args).stdout
    assert a == b
    c = lab(*args[:-1], 10).stdout
    assert c != a
    j = json.loads(lab(*args, "--format", "json").stdout)
    assert [x["method"] for x in j] == ["online"] * 4 + ["rloo"] * 4
    assert all(x["samples"] > 0 for x in j)


def kto_score(div, u):
    """s~(u) = f'(u) - f'(1) (docs/kto.md), written from f' directly."""
    if div == "rkl":
        return np.log(u)
    if div == "fkl":
        return 1 - 1 / u
    if div == "js":
        return np.log(2 * u / (1 + u))
    a = float(div.split(":")[1])
    return (1 - u ** (-a)) / a


def kto_limit(div, beta, q, r, labels="bt", tau=None, wd=1.0, wu=1.0):
    """KTO's limit on offline data y ~ q = pi_ref (docs/lab.md): z0 = 0, no mass where the net
    weight p wd - (1 - p) wu is <= 0, and on the rest the minimiser over the simplex of
    sum q (p wd - (1 - p) wu) sigmoid(-beta s~(pi / q)), found here by SLSQP in pi-space."""
    tau = q @ r if tau is None else tau
    p = special.expit(r - tau) if labels == "bt" else (r > tau).astype(float)
    net = p * wd - (1 - p) * wu
    keep = net > 0
    c, ref = (q * net)[keep], q[keep]

    def F(x):
        return np.sum(c * special.expit(-beta * kto_score(div, np.maximum(x, 1e-300) / ref)))

    best = None
    for x0 in (ref / ref.sum(), np.full(keep.sum(), 1 / keep.sum())):
        res = optimize.minimize(F, x0, method="SLSQP", bounds=[(1e-14, 1)] * keep.sum(),
                                constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                                options={"ftol": 1e-16, "maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    pi = np.zeros_like(q)
    pi[keep] = best.x / best.x.sum()
    return pi, q[~keep].sum()


@pytest.mark.parametrize("beta,labels,wd,wu", [(0.5, "bt", 1, 1), (1.0, "bt", 1, 1.5), (0.5, "threshold", 1.33, 1),
                                               (2.0, "bt", 1, 1)])
def test_kto_converges_to_its_derived_limit_not_to_pistar(problem, tmp_path, beta, labels, wd, wu):
    _, q, r = problem
    t, pis = run(problem, tmp_path, "--method", "kto", "--divergence", ",".join(DIVS), "--beta", beta,
                 "--labels", labels, "--desirable-weight", wd, "--undesirable-weight", wu)
    assert len(t) == len(DIVS)
    for row in t:
        div = row["divergence"]
        pi = pis[("kto", div)]
        target, u_mass = kto_limit(div, beta, q, r, labels, None, wd, wu)
        assert row["variant"] == "offline"
        np.testing.assert_allclose(pi, target, atol=2e-6, err_msg=div)
        if labels == "threshold":  # hard labels: the limit is pi_ref conditioned on the desirable set
            np.testing.assert_allclose(pi, q * (r > q @ r) / q[r > q @ r].sum(), atol=2e-6, err_msg=div)
        assert float(row["target_diff"]) <= 1e-6
        assert float(row["undesirable_mass"]) == pytest.approx(u_mass, abs=1e-12)
        # z0 = max(0, E_pi_ref[s~]) vanishes (Jensen: f' concave, E_pi_ref[pi/pi_ref] = 1)
        assert float(row["z0"]) == 0
        assert q @ kto_score(div, np.maximum(pi, 1e-300) / q) <= 0
        ps = pistar(div, beta, q, r)
        assert float(row["max_abs_diff"]) == pytest.approx(np.max(np.abs(pi - ps)), abs=1e-9)
        assert float(row["max_abs_diff"]) > 0.05  # KTO's limit is not pi*


def test_kto_weights_move_the_desirable_set(problem, tmp_path):
    # bt labels: a response is kept iff r - tau > log(wu / wd); raising wu drops the marginal ones
    _, q, r = problem
    tau = q @ r
    _, pis = run(problem, tmp_path, "--method", "kto", "--divergence", "rkl", "--undesirable-weight", 3)
    kept = pis[("kto", "rkl")] > 1e-6
    np.testing.assert_array_equal(kept, r - tau > np.log(3))
    assert 0 < kept.sum() < len(r)


def test_kto_threshold_labels_a_reward_equal_to_the_threshold_undesirable(problem, tmp_path):
    """threshold labels: p(y) = 1 iff r(y) > T (docs/lab.md), so with --label-threshold equal to
    a response's reward (0.6, response 3) that response is undesirable: its pi_ref mass is in
    undesirable_mass and KTO's limit, pi_ref conditioned on {r > T}, puts no mass on it."""
    _, q, r = problem
    t, pis = run(problem, tmp_path, "--method", "kto", "--divergence", "rkl", "--labels", "threshold",
                 "--label-threshold", 0.6)
    assert float(t[0]["undesirable_mass"]) == pytest.approx(q[r <= 0.6].sum(), abs=1e-12)
    np.testing.assert_allclose(pis[("kto", "rkl")], q * (r > 0.6) / q[r > 0.6].sum(), atol=2e-6)


@pytest.mark.parametrize("args,needle", [
    (["--method", "kto", "--labels", "soft"], "--labels: unknown labelling 'soft'"),
    (["--method", "kto", "--desirable-weight", "0"], "--desirable-weight: must be > 0"),
    (["--method", "kto", "--undesirable-weight", "-1"], "--undesirable-weight: must be > 0"),
    (["--method", "kto", "--sampled"], "--sampled: kto runs on the exact expected loss only"),
    (["--method", "kto", "--divergence", "tv"], "--divergence"),
])
def test_kto_bad_flags_are_named(args, needle):
    r = lab(*args, check=False)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""   # refused before the table's header


@pytest.mark.parametrize("args,needle", [
    (["--method", "ppo"], "--method: unknown method 'ppo'"),
    (["--method", "rloo", "--divergence", "chi2"], "--divergence: chi2 is not usable"),
    (["--method", "rloo", "--sampled", "--group-size", "1"], "--group-size: rloo needs groups of at least 2"),
    (["--method", "rloo", "--k", "8"], "--k (-k): renamed --group-size"),   # else the alias of --n: another problem
    (["--method", "online", "--lr", "-1"], "--lr: must be > 0"),
    (["--method", "online", "--steps", "-3"], "--steps: must not be negative (got -3)"),
    (["--method", "grpo", "--group-size", "9"], "--group-size: exact grpo averages over all n^k"),
    (["--method", "dpo", "--pair-top", "1"], "--pair-top: offline pairs need at least 2"),
    (["--method", "rloo", "--beta", "0"], "--beta: must be a finite number > 0 (got 0)"),
    # dpo is L-BFGS on the exact loss: no step size, no sampling (it ignored both)
    (["--method", "dpo", "--lr", "123"], "--lr: only --method online,rloo,grpo,kto use it (--method dpo)"),
    (["--method", "dpo", "--sampled"], "--sampled: only --method online,rloo,grpo use it (--method dpo)"),
    # more than n was clamped to n silently
    (["--method", "dpo", "--pair-top", "7"], "--pair-top: 7 is more than the problem's n = 6 responses"),
    # --n 3: the default n/2 = 1 is refused, saying it is the default (the user gave no --pair-top)
    (["--method", "dpo,online", "--n", "3"], "(got 1; for these n = 3 responses dpo's default, n/2, is 1 too)"),
])
def test_bad_flags_are_named(args, needle):
    r = lab(*args, check=False)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""   # refused before the table's header (rloo --group-size 1 printed it)


@pytest.mark.parametrize("args", [["-k", "8"], ["-k=8"]])
def test_one_letter_k_gets_the_renamed_message(args):
    """docs/cli.md: lab check --method's --k "was renamed --group-size, which it names". -k, the
    one-letter form of the old name, was answered "unknown flag -k (did you mean --k?)", sending
    the user to a flag that only says it was removed (hunt of wave 46)"""
    r = lab("--method", "rloo", *args, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "-k): renamed --group-size" in r.stderr, r.stderr
    assert "did you mean" not in r.stderr, r.stderr
    # without --method -k stays the old spelling of --n (docs/cli.md's alias list), here n = 4 responses
    r = lab("-k", "4", check=False)
    assert r.returncode == 0 and "-k is deprecated; use --n" in r.stderr, r.stderr


def test_a_flag_of_another_listed_method_still_runs(problem):
    """--sampled and --lr with dpo among other methods: the others read them, dpo's row stays offline"""
    t = rows(lab("--data", problem[0], "--method", "dpo,rloo", "--sampled", "--lr", 0.5, "--steps", 100,
                 "--divergence", "rkl").stdout)
    assert [(x["method"], x["variant"]) for x in t] == [("dpo", "offline"), ("rloo", "sampled")]


def kto_loss(div, beta, q, pi, a, b):
    """sum_y q [a sigmoid(-x) + b sigmoid(x)], x = beta s~(pi/q), z0 = 0 (docs/lab.md)"""
    x = beta * kto_score(div, np.maximum(pi, 1e-300) / q)
    return np.sum(q * (a * special.expit(-x) + b * special.expit(x)))


@pytest.mark.parametrize("args", [["--labels", "threshold", "--label-threshold", 1.4],   # no reward above T
                                  ["--undesirable-weight", 20]])                          # TRL-style weights
def test_kto_without_a_net_desirable_response_is_refused(problem, args):
    """No response with p w_d > (1 - p) w_u: every loss term rises with its l, so the infimum is on
    the simplex's boundary; the lab reported pi_ref (with hard labels a stationary point that is
    the loss's maximum) or an arbitrary corner as KTO's limit, with target_diff 0 or 1. Refused."""
    path, q, r = problem
    d = dict(zip(args[::2], args[1::2]))
    tau = float(d.get("--label-threshold", q @ r))
    p = (r > tau).astype(float) if d.get("--labels") == "threshold" else special.expit(r - tau)
    a, b = p * 1.0, (1 - p) * float(d.get("--undesirable-weight", 1))
    assert np.all(a <= b)  # the premise, recomputed
    # pi_ref is not the minimiser: a vertex (all mass on one response) has a lower loss
    vertices = [kto_loss("rkl", 0.5, q, np.eye(6)[i], a, b) for i in range(6)]
    assert min(vertices) < kto_loss("rkl", 0.5, q, q, a, b) - 0.1
    res = lab("--data", path, "--method", "kto", "--beta", 0.5, "--divergence", "rkl,fkl", *args, check=False)
    assert res.returncode != 0 and res.stdout == ""
    assert "--method kto: no response is net desirable" in res.stderr, res.stderr
    assert "no limit to compare the run with" in res.stderr
    # a <= b everywhere: each term's loss rises with its probability (the message said "falls")
    assert "every response's KTO loss then rises with its probability" in res.stderr, res.stderr
    assert f"--undesirable-weight {d.get('--undesirable-weight', 1):g}" in res.stderr


def test_kto_columns_are_empty_where_they_do_not_apply(problem, tmp_path):
    """z0 and undesirable_mass are KTO's: other rows said 0, which reads as a measurement; they
    are nan (CSV) / null (JSON) there. target_diff is every row's distance to its method's
    target: pi* (so max_abs_diff) for all but kto, KTO's limit for kto."""
    path, q, r = problem
    beta = 1.0
    t, pis = run(problem, tmp_path, "--method", "dpo,rloo,kto", "--divergence", "rkl,js", "--beta", beta)
    assert list(t[0]) == ["method", "variant", "divergence", "beta", "max_abs_diff", "objective_gap", "uncovered_mass",
                          "samples", "iterations", "target_diff", "z0", "undesirable_mass"]
    for row in t:
        pi, ps = pis[(row["method"], row["divergence"])], pistar(row["divergence"], beta, q, r)
        if row["method"] == "kto":
            target, u_mass = kto_limit(row["divergence"], beta, q, r)
            assert float(row["z0"]) == 0 and float(row["undesirable_mass"]) == pytest.approx(u_mass, abs=1e-12)
            assert float(row["target_diff"]) == pytest.approx(np.max(np.abs(pi - target)), abs=2e-6)
        else:
            assert row["z0"] == "nan" and row["undesirable_mass"] == "nan", row
            assert row["target_diff"] == row["max_abs_diff"]
            assert float(row["target_diff"]) == pytest.approx(np.max(np.abs(pi - ps)), abs=1e-9)
    j = json.loads(lab("--data", path, "--method", "rloo,kto", "--divergence", "rkl", "--beta", beta,
                       "--format", "json").stdout)
    assert (j[0]["z0"], j[0]["undesirable_mass"]) == (None, None)
    assert j[1]["z0"] == 0 and j[1]["undesirable_mass"] > 0


def test_method_from_a_config_file_runs_the_algorithm_checks(tmp_path):
    """docs/cli.md: a config file's keys are the flags of --help. `method = kto` in --config
    silently ran the loss check, then was refused ("give it on the command line"), and a file
    holding the algorithm checks' own keys (group-size) failed as "unknown key" (a hunt's find):
    the file's method selects the algorithm checks as --method does."""
    cfg = tmp_path / "m.ini"
    cfg.write_text("method = online\nsampled = 1\ngroup-size = 3\nsteps = 50\ndivergence = rkl\nn = 4\nthreads = 1\n")
    r = lab("--config", cfg, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == lab("--method", "online", "--sampled", "--group-size", 3, "--steps", 50, "--divergence", "rkl",
                           "--n", 4, "--threads", 1).stdout
    got = rows(r.stdout)
    assert [(row["method"], row["divergence"], row["iterations"]) for row in got] == [("online", "rkl", "50")]


def test_method_as_another_flags_value_is_that_value(tmp_path):
    """docs/cli.md: the item after a flag that takes a value is its value. `lab check --out
    --method` ran the algorithm checks; it is the loss check writing a file named --method."""
    r = subprocess.run([FDPO, "lab", "check", "--n", "4", "--threads", "1", "--out", "--method"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    header = (tmp_path / "--method").read_text().splitlines()[0]
    assert header == "divergence,beta,loss,max_abs_diff,final_loss,grad_norm,iterations", header


P4 = "pi_ref,reward\n0.4,1\n0.3,0.5\n0.2,0\n0.1,-1\n"


@pytest.mark.parametrize("methods,needle", [
    ("kto,kto", "--method: kto given twice in 'kto,kto'"),
    (",dpo,,online,", "--method: empty item in ',dpo,,online,'"),
    ("dpo,,rloo", "--method: empty item in 'dpo,,rloo'"),
    ("dpo,dpo,dpo,dpo,dpo,dpo", "--method: dpo given twice"),
])
def test_method_list_refuses_empty_items_and_repeats(tmp_path, methods, needle):
    """as every other lab list (--divergence rkl,,fkl / rkl,rkl, --betas 0.1,,1): strtok skipped
    the empty items (dpo,,rloo ran two methods) and kto,kto printed kto's row twice"""
    p = tmp_path / "p4.csv"
    p.write_text(P4)
    r = lab("--method", methods, "--data", p, "--divergence", "rkl", "--threads", "1", check=False)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args,needle", [
    (["--method", "dpo", "--n", "1000000"], "--n 1000000: dpo on 1000000 responses takes 8e+03 GB (its n x n pair weights)"),
    (["--method", "online", "--n", "1000000", "--steps", "1"], "--n 1000000: online on 1000000 responses takes 8e+03 GB"),
    (["--method", "rloo", "--data", "P4", "--sampled", "--steps", "10", "--group-size", "10000000000000"],
     "--group-size 10000000000000: rloo's group buffers take 2.4e+05 GB"),
    (["--method", "online", "--data", "P4", "--sampled", "--steps", "10", "--group-size", "10000000000000"],
     "--group-size 10000000000000: online's group buffers"),
])
def test_a_run_beyond_the_machines_memory_is_refused_naming_the_flag(tmp_path, args, needle):
    """the n x n pair weights (8 n^2 bytes) and the group buffers (24 bytes a sample) are checked
    against the machine's memory before the table: the header was printed, then 'out of memory
    allocating 8000000000000 bytes' named no flag (a machine with 8 TB would run it)"""
    p = tmp_path / "p4.csv"
    p.write_text(P4)
    r = lab(*[str(p) if a == "P4" else a for a in args], "--divergence", "rkl", "--threads", "1", check=False)
    assert r.returncode != 0
    assert needle in r.stderr and "more than this machine's" in r.stderr, r.stderr
    assert r.stdout == ""


def test_a_group_size_a_method_does_not_draw_allocates_nothing(tmp_path):
    """exact online takes its expectation over all pairs and exact rloo per response: neither
    reads --group-size's samples, which were allocated all the same (out of memory at 1e11);
    a given --group-size is now refused there (it changed nothing), and the default one
    allocates nothing either; exact rloo allocated online's n x n pair weights (80 GB at n = 1e5)"""
    p = tmp_path / "p4.csv"
    p.write_text(P4)
    r = lab("--method", "online", "--data", p, "--steps", "10", "--group-size", "10000000000000",
            "--divergence", "rkl", "--threads", "1", check=False)
    assert r.returncode == 1 and "--group-size: only the sampled online/rloo runs and grpo use it" in r.stderr, r.stderr
    t = rows(lab("--method", "online", "--data", p, "--steps", "10", "--divergence", "rkl", "--threads", "1").stdout)
    assert [x["method"] for x in t] == ["online"]
    t = rows(lab("--method", "rloo", "--n", "100000", "--steps", "1", "--divergence", "rkl", "--threads", "1").stdout)
    assert [x["method"] for x in t] == ["rloo"] and int(t[0]["iterations"]) == 1


def test_export_pi_is_the_old_name_of_export_policy(problem, tmp_path):
    """lab check --method wrote its policies with --export-pi, lab check without --method with
    --export-policy; one name now, the old one still works and says it is deprecated"""
    path, _, _ = problem
    args = ["--data", path, "--method", "rloo", "--divergence", "rkl", "--steps", 20]
    new = lab(*args, "--export-policy", tmp_path / "new.csv")
    old = lab(*args, "--export-pi", tmp_path / "old.csv")
    assert "--export-pi is deprecated; use --export-policy" in old.stderr and "deprecated" not in new.stderr
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes() and new.stdout == old.stdout
