"""The f-divergence table written out independently of src/objectives (paper convention,
D_f(pi || pi_ref) = E_pi_ref[f(pi / pi_ref)]), in numpy: f, its derivative f' and the
inverse of f' (nan outside f''s range). The tests' reference for fdpo's table and for the
lab's closed forms pi* = pi_ref (f')^-1((r - lambda) / beta)."""
import math

import numpy as np


def f(div, u):
    u = np.asarray(u, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if div == "rkl":
            return np.where(u > 0, u * np.log(np.where(u > 0, u, 1)), 0.0)
        if div == "fkl":
            return -np.log(u)
        if div == "js":
            ulogu = np.where(u > 0, u * np.log(np.where(u > 0, u, 1)), 0.0)
            return ulogu - (u + 1) * np.log((u + 1) / 2)
        if div.startswith("alpha:"):
            a = float(div[6:])
            return (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1))
        if div == "tv":
            return 0.5 * np.abs(u - 1)
        if div == "chi2":
            return (u - 1) ** 2


def fprime(div, u):
    u = np.asarray(u, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if div == "rkl":
            return np.log(u) + 1
        if div == "fkl":
            return -1 / u
        if div == "js":
            return np.log(2 * u / (1 + u))
        if div.startswith("alpha:"):
            a = float(div[6:])
            return (1 - u ** (-a)) / a
        if div == "tv":
            return 0.5 * np.sign(u - 1)
        if div == "chi2":
            return 2 * (u - 1)


def fprime_inv(div, v):
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if div == "rkl":
            return np.exp(v - 1)
        if div == "fkl":
            return np.where(v < 0, -1 / v, np.nan)
        if div == "js":
            return np.where(v < math.log(2), np.exp(v) / (2 - np.exp(v)), np.nan)
        if div.startswith("alpha:"):
            a = float(div[6:])
            return np.where(v < 1 / a, (1 - a * v) ** (-1 / a), np.nan)
        if div == "tv":
            return np.full_like(v, np.nan)
        if div == "chi2":
            return np.where(v >= -2, 1 + v / 2, np.nan)
