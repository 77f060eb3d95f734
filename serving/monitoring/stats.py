"""Two-sample statistics for drift detection, in numpy and the standard library only.

The serving image has no SciPy, so the few distributions the drift tests need are implemented here:
the Kolmogorov distribution (two-sample KS p-values), the regularized incomplete gamma function
(chi-square p-values and the gamma approximation of the MMD permutation null), PSI with a null
threshold calibrated by simulation, and an RBF-kernel MMD with a vectorized permutation test.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MMDResult",
    "chi2_homogeneity",
    "chi2_sf",
    "gamma_isf",
    "gamma_sf",
    "kolmogorov_isf",
    "kolmogorov_sf",
    "ks_2samp",
    "ks_critical_value",
    "mmd_permutation_test",
    "psi",
    "psi_null_quantile",
]


def kolmogorov_sf(lam: float) -> float:
    """Survival function of the Kolmogorov distribution, ``P(K > lam)``.

    Uses the alternating series ``2 sum (-1)^(j-1) exp(-2 j^2 lam^2)`` for ``lam >= 1.18`` and the
    theta-function form ``1 - sqrt(2 pi)/lam sum exp(-(2j-1)^2 pi^2 / (8 lam^2))`` below it; both converge
    to double precision within a few terms.
    """
    if not math.isfinite(lam):
        return 0.0 if lam > 0 else 1.0
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:
        y = math.exp(-(math.pi**2) / (8.0 * lam * lam))
        total = y + y**9 + y**25 + y**49 + y**81 + y**121
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / lam * total))
    total, sign = 0.0, 1.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * lam * lam)
        total += sign * term
        if term < 1e-17 * total:
            break
        sign = -sign
    return min(1.0, max(0.0, 2.0 * total))


@functools.lru_cache(maxsize=256)
def kolmogorov_isf(p: float) -> float:
    """The ``lam`` with ``kolmogorov_sf(lam) == p`` (bisection to 1e-12), for ``0 < p < 1``."""
    lo, hi = 0.0, 10.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if kolmogorov_sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _ks_scale(n: int, m: int) -> float:
    """Stephens' small-sample correction of the asymptotic two-sample KS distribution."""
    en = math.sqrt(n * m / (n + m))
    return en + 0.12 + 0.11 / en


def ks_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test.

    Args:
        x, y: 1-D samples (any order; ties allowed).

    Returns:
        ``(D, p)``: the largest distance between the two empirical CDFs and its asymptotic p-value
        (Kolmogorov distribution with Stephens' correction; conservative for discrete data).
        ``(0.0, 1.0)`` when either sample is empty.
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    y = np.sort(np.asarray(y, dtype=np.float64).ravel())
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 0.0, 1.0
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / n
    cdf_y = np.searchsorted(y, grid, side="right") / m
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    return d, kolmogorov_sf(_ks_scale(n, m) * d)


def ks_critical_value(n: int, m: int, alpha: float) -> float:
    """The KS distance above which :func:`ks_2samp` gives ``p < alpha`` for samples of sizes n and m."""
    return kolmogorov_isf(alpha) / _ks_scale(n, m)


def gamma_sf(a: float, x: float) -> float:
    """Regularized upper incomplete gamma ``Q(a, x)`` (series below ``a + 1``, continued fraction above)."""
    if x <= 0.0:
        return 1.0
    if not math.isfinite(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_front)))
    # Modified Lentz continued fraction.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, max(0.0, math.exp(log_front) * h))


def gamma_isf(p: float, shape: float, scale: float) -> float:
    """The ``x`` with ``P(X > x) == p`` for a gamma(shape, scale) variable (bisection to 1e-10 relative)."""
    lo, hi = 0.0, max(shape * scale, 1e-300)
    while gamma_sf(shape, hi / scale) > p and hi < 1e300:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-10 * hi:
        mid = 0.5 * (lo + hi)
        if gamma_sf(shape, mid / scale) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution with ``df`` degrees of freedom."""
    if df <= 0:
        return 1.0
    return gamma_sf(df / 2.0, x / 2.0)


def chi2_homogeneity(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Pearson's chi-square test that two count vectors come from the same categorical distribution.

    Returns:
        ``(statistic, p_value, degrees_of_freedom)``; categories empty in both are left out.
    """
    table = np.vstack([np.asarray(a, np.float64), np.asarray(b, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1, keepdims=True)
    if table.shape[1] < 2 or np.any(rows == 0):
        return 0.0, 1.0, 0
    expected = rows * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    df = table.shape[1] - 1
    return stat, chi2_sf(stat, df), df


def _smoothed(counts: np.ndarray, pseudo: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + pseudo) / (counts.sum(axis=-1, keepdims=True) + pseudo * counts.shape[-1])


def psi(reference_counts: np.ndarray, window_counts: np.ndarray, pseudo: float = 0.5) -> float | np.ndarray:
    """Population stability index ``sum (q - p) ln(q / p)`` of two count vectors.

    Frequencies are smoothed with ``pseudo`` counts per category (Jeffreys' 0.5 by default), so a
    category that is empty on one side gives a large but finite term. Works row-wise on 2-D input.
    """
    p = _smoothed(reference_counts, pseudo)
    q = _smoothed(window_counts, pseudo)
    out = ((q - p) * np.log(q / p)).sum(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def psi_null_quantile(
    reference_counts: np.ndarray, window: int, quantile: float, *, sims: int = 20_000, seed: int = 0
) -> float:
    """The ``quantile`` of PSI between a reference and a window drawn from the *same* distribution.

    Both sides are resampled (multinomial, from the smoothed reference frequencies) at their own
    sizes, so the threshold accounts for the noise of a small reference as well as of the window.
    Simulations run in chunks of about 250k counts, so many classes do not need much memory.
    """
    counts = np.asarray(reference_counts, dtype=np.float64)
    n = int(np.rint(counts.sum()))
    k = len(counts)
    if n <= 0 or window <= 0 or k < 2:
        return 0.0
    sims = int(min(sims, max(2000, 4_000_000 // k)))
    chunk = max(1, 250_000 // k)
    rng = np.random.default_rng(seed)
    p = _smoothed(counts, 0.5)
    values = []
    for start in range(0, sims, chunk):
        size = min(chunk, sims - start)
        values.append(psi(rng.multinomial(n, p, size=size), rng.multinomial(window, p, size=size)))
    return float(np.quantile(np.concatenate(values), quantile))


@dataclass(frozen=True)
class MMDResult:
    """Outcome of :func:`mmd_permutation_test`."""

    statistic: float
    p_value: float
    threshold: float
    permutation_p_value: float
    null_mean: float
    null_std: float
    bandwidth: float


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, alpha: float, permutations: int = 200, seed: int = 0
) -> MMDResult:
    """Maximum mean discrepancy between samples ``x`` (n, d) and ``y`` (m, d) with an RBF kernel.

    The bandwidth is the median of the pooled pairwise squared distances (the median heuristic); the
    statistic is the biased estimate ``MMD^2 = a^T K a`` with ``a = (1/n, ..., -1/m, ...)``. Its null
    distribution comes from ``permutations`` random relabellings of the pooled sample (computed as one
    matrix product), to which a gamma distribution is fitted by moments; the p-value and the
    ``alpha``-level threshold are read from that fit, which resolves p-values far below
    ``1 / permutations``.

    Returns:
        :class:`MMDResult` (``p_value`` from the gamma fit, ``permutation_p_value`` from the counts).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    z = np.concatenate([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    iu = np.triu_indices(len(z), k=1)
    off = d2[iu]
    positive = off[off > 0]
    bandwidth = float(np.median(positive)) if len(positive) else 1.0
    kernel = np.exp(-d2 / bandwidth)
    a = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    stat = float(a @ kernel @ a)
    rng = np.random.default_rng(seed)
    idx = rng.permuted(np.tile(np.arange(n + m), (permutations, 1)), axis=1)
    perm = a[idx].T  # (n + m, permutations)
    null = np.einsum("ip,ip->p", perm, kernel @ perm)
    mean, var = float(null.mean()), float(null.var())
    perm_p = float((1 + np.sum(null >= stat)) / (1 + permutations))
    if mean <= 0 or var <= 0:
        threshold = mean
        p = 1.0 if stat <= mean else 0.0
    else:
        shape, scale = mean * mean / var, var / mean
        p = gamma_sf(shape, stat / scale)
        threshold = gamma_isf(alpha, shape, scale)
    return MMDResult(stat, p, threshold, perm_p, mean, math.sqrt(var), bandwidth)
