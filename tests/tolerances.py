"""Tolerances from bounds on rounding error, not from one machine's measurement.

A float32 kernel's rounding depends on the CPU (vector width, FMA, the BLAS's blocking), so a
tolerance measured on one machine can fail on another. The suite therefore compares in float64
where the code under test supports it, with `FLOAT64` (float64 round-off), or states a float32
bound computed from the data with `gamma` (Higham, Accuracy and Stability of Numerical
Algorithms, section 3.1: a sum or dot product of n terms computed in any order, with or
without FMA, is within gamma(n) * sum|terms| of the exact one).
"""

from __future__ import annotations

U32 = 2.0**-24  # float32 unit round-off
U64 = 2.0**-53  # float64 unit round-off

# Two float64 evaluations of the same O(1) quantity through at most a few thousand operations
# (a small network's forward or backward pass, a front-end) differ by well under 1e-12 relative;
# 1e-9 leaves three orders of margin, and a real bug (a block run twice, a missing norm, a
# wrong gradient) moves results by 1e-3 or more.
FLOAT64 = dict(rtol=1e-9, atol=1e-9)


def gamma(n: int, u: float = U32) -> float:
    """gamma_n = n u / (1 - n u): the relative bound of n successive roundings."""
    if n * u >= 1:
        raise ValueError(f"gamma({n}) is unbounded at unit round-off {u}")
    return n * u / (1 - n * u)
