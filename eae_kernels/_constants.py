"""The constants of the kNN estimates, defined once for Python (csrc/core/kl_math.h is the C++
copy; both use the same digamma series, so they agree to the last bits).

Every kNN log-density estimate of the package follows one rule: M query rows whose k-th
neighbour is searched among C candidate rows give

    psi(C + 1) - psi(k) + log V(d, p) + (d / M) * sum_i 0.5 * log(r_i^2 + eps^2)

with C = N - 1 in the self case (a set of N rows, each row excluded from its own search: the
entropy's psi(N)) and C = N for a separate reference set of N rows (the cross-entropy).
"""

from __future__ import annotations

import math

EULER_GAMMA = 0.57721566490153286060651209008240243


def digamma_int(n: int) -> float:
    """psi(n) for a positive integer n: the harmonic sum below 20, the asymptotic series beyond
    (its first omitted term is below 1e-17 there)."""
    if n < 20:
        return -EULER_GAMMA + math.fsum(1.0 / j for j in range(1, n))
    x = float(n)
    x2 = 1.0 / (x * x)
    return math.log(x) - 0.5 / x - x2 * (1 / 12 - x2 * (1 / 120 - x2 * (1 / 252 - x2 * (1 / 240 - x2 / 132))))


def log_unit_ball_volume(d: int, p: float) -> float:
    """log of the volume of the unit p-ball in R^d: d log(2 Gamma(1 + 1/p)) - lgamma(1 + d/p)."""
    if p == math.inf:
        return d * math.log(2.0)
    if p == 2.0:
        return 0.5 * d * math.log(math.pi) - math.lgamma(1.0 + 0.5 * d)
    return d * math.log(2.0 * math.gamma(1.0 + 1.0 / p)) - math.lgamma(1.0 + d / p)


def estimate_constant(candidates: int, d: int, k: int, p: float) -> float:
    """psi(C + 1) - psi(k) + log V(d, p) for C candidate rows (see the module docstring)."""
    return digamma_int(candidates + 1) - digamma_int(k) + log_unit_ball_volume(d, p)


def kl_constant(n: int, d: int, k: int, p: float) -> float:
    """The entropy's constant for a set of n rows (n - 1 candidates): psi(n) - psi(k) + log V."""
    return estimate_constant(n - 1, d, k, p)
