"""Study statistics: the difference of mean top-1 between a variant and its baseline, its CI, and what a
design of n seeds per side can detect. numpy and the standard library only.

Model. Run ``s`` of arm ``k`` (baseline A, variant B) gets test image ``j`` right with a probability that
depends on the image, the arm and the run (initialisation, data order, augmentation); both arms are
evaluated on the same ``m`` test images. A run's top-1 is the mean of its ``m`` outcomes. Two kinds of noise
make the seeds of one arm differ: a run-level offset, and every image's own run-to-run noise.

Estimate: ``Δ = mean_s top1(B, s) - mean_s top1(A, s)``.

Test-set interval (the one the verdict uses). It is about ``θ_T``, the difference of the expected top-1
(over seeds) on *this* test set. Given the images, the runs of an arm are independent and identically
distributed, so the seed-to-seed variance of its top-1 already holds each run's per-image noise:
``Var(Δ) = s_A²/n_A + s_B²/n_B``, and ``Δ/SE`` follows Welch's t with the Welch-Satterthwaite degrees of
freedom (Welch 1947). Resampling the test images on top of the seeds (a hierarchical bootstrap) counts
the per-image noise a second time, which made the former interval 1.4x too wide.

Population interval. It is about ``θ``, the difference over the population of images the test set is a
sample of, and adds ``Var(θ_T) = τ²/m``, ``τ²`` the variance over images of the per-image difference.
The per-image differences averaged over seeds, ``dbar_j``, spread over images by ``τ²`` plus each image's
run-to-run noise, which the seeds estimate per image (``v_kj / n_k``, ``v_kj`` the variance over seeds of
image ``j``'s correctness). Subtracting it keeps that noise from being counted twice (method of moments,
as in a two-level random-effects model): ``τ̂² = (m-1)/m S²(dbar) - mean_j(v_Aj/n_A + v_Bj/n_B) + SE²``,
the last term because a run-level offset moves all images together and leaves ``S²(dbar)``. Degrees of
freedom by Satterthwaite (1946). Both intervals need >= 2 seeds per side.

Small seed counts take t quantiles, never normal ones: 3 seeds per side give about 4 degrees of
freedom, t = 2.78 where the normal quantile is 1.96.

What a design can detect: the minimum detectable difference (MDE), the smallest true difference that the
verdict's test (Welch's, two-sided 5 %) finds with 80 % power, for equal seed SDs ``σ``. Its power is computed
exactly for normal top-1, over the distribution of the two sample variances; the textbook
``(t(1 - α/2, ν) + t(power, ν)) σ sqrt(1/n_A + 1/n_B)`` with ``ν = n_A + n_B - 2`` is the power of the pooled
t-test and overstates Welch's with 3 seeds per side. ``σ`` is pooled over the finished runs of a study, or a
stated prior before any finishes.

A gain is claimed only when both sides have >= 3 seeds and the test-set CI lies above zero ("worse":
below zero). Seeds that agree exactly on both sides (duplicated records, a seed that changes nothing) leave no
spread to estimate: the interval has zero width and no claim is made. Per-image correctness other than 0/1 (NaN
included) or not shaped (runs, images) is refused. ``benchmarks/stats_coverage.py`` checks the coverage of both
intervals by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np

MIN_SEEDS_FOR_A_CLAIM = 3
CI_LEVEL = 0.95
POWER = 0.80
# Seed-to-seed SD of a CIFAR ResNet's top-1 on CIFAR-100 (about 0.6 points), the prior before a run finishes.
PRIOR_SEED_SD = 0.006
TARGET_DIFFERENCE = 0.005  # the default difference a plan is sized for (0.5 points of top-1)

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)
_LGAMMA = np.vectorize(math.lgamma, otypes=[float])


def _t_log_norm(df: np.ndarray) -> np.ndarray:
    """log of the normalising constant of Student's t density."""
    return _LGAMMA((df + 1) / 2) - _LGAMMA(df / 2) - 0.5 * np.log(df * math.pi)


def _t_pdf(x: np.ndarray, df: np.ndarray, log_norm: np.ndarray) -> np.ndarray:
    return np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))


def t_quantile(p: float, df: float | np.ndarray) -> float | np.ndarray:
    """Quantile of Student's t at probability ``p`` (0.5 < p < 1) for real ``df`` >= 1, elementwise.

    The CDF is 1/2 plus the density integrated over [0, x] (64-point Gauss-Legendre); Newton's method on
    log(x) starts from the normal quantile, which is always below the t quantile. Beyond 10^7 degrees of
    freedom: the normal quantile.
    """
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1, got {p}")
    df_arr = np.asarray(df, dtype=float)
    if np.any(~(df_arr >= 1)):
        raise ValueError("t_quantile needs degrees of freedom >= 1")
    z = NormalDist().inv_cdf(p)
    x = np.full(df_arr.shape, z)
    finite = df_arr < 1e7
    if finite.any():
        d = df_arr[finite]
        c, dn = _t_log_norm(d), d[:, None]
        y = np.full(d.shape, math.log(z))
        for _ in range(60):
            t = np.exp(y)
            cdf = 0.5 + t / 2 * (_t_pdf(t[:, None] / 2 * (1 + _GL_NODES), dn, c[:, None]) @ _GL_WEIGHTS)
            step = (cdf - p) / (_t_pdf(t, d, c) * t)
            y -= step
            if np.abs(step).max() < 1e-12:
                break
        x[finite] = np.exp(y)
    return float(x) if np.ndim(df) == 0 else x


def welch_df(var_a: np.ndarray, n_a: int, var_b: np.ndarray, n_b: int) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of ``var_a/n_a + var_b/n_b`` (>= 1)."""
    a, b = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (a + b) ** 2 / (a * a / (n_a - 1) + b * b / (n_b - 1))
    return np.where(np.isfinite(df), np.clip(df, min(n_a, n_b) - 1, n_a + n_b - 2), n_a + n_b - 2)


@dataclass(frozen=True)
class DifferenceCI:
    """Difference of mean top-1 (variant - baseline) and its CIs, as fractions; arrays for a batch of studies.

    ``low``/``high``: about this test set (the verdict's); ``population_low``/``population_high``: about the
    population of images the test set was drawn from. ``se``/``df`` and ``population_se``/``population_df``
    are their standard errors and t degrees of freedom.
    """

    delta: float | np.ndarray
    se: float | np.ndarray
    df: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    population_se: float | np.ndarray
    population_df: float | np.ndarray
    population_low: float | np.ndarray
    population_high: float | np.ndarray


def _correctness(x, side: str) -> np.ndarray:
    """``x`` as a float32 ``(..., runs, images)`` array; anything but 0/1 values, or fewer than 2 axes, is refused."""
    raw = np.asarray(x)
    if raw.ndim < 2:
        raise ValueError(f"the {side}'s per-image correctness must be (runs, images), got shape {raw.shape}")
    if raw.dtype != bool:
        ok = (raw == 0) | (raw == 1)
        if not ok.all():
            raise ValueError(f"the {side}'s per-image correctness must be 0 or 1, found {raw[~ok].flat[0]}")
    return raw.astype(np.float32, copy=False)


def difference_ci(baseline: np.ndarray, variant: np.ndarray, level: float = CI_LEVEL) -> DifferenceCI:
    """CIs of mean top-1 (variant) - mean top-1 (baseline) from per-image correctness (see the module doc).

    ``baseline`` and ``variant`` are ``(..., seeds, images)`` correctness arrays (0/1 or bool) on the same test
    images, with >= 2 seeds each; leading axes are a batch of independent studies (the coverage simulation).
    When every seed of each side has the same top-1, the standard error is exactly 0 (no spread to estimate).
    """
    a, b = _correctness(baseline, "baseline"), _correctness(variant, "variant")
    (n_a, m), n_b = a.shape[-2:], b.shape[-2]
    if b.shape[-1] != m:
        raise ValueError(f"baseline and variant were evaluated on different test sets ({m} and {b.shape[-1]} images)")
    if min(n_a, n_b) < 2:
        raise ValueError("a CI needs >= 2 seeds on each side")
    top1_a, top1_b = a.mean(-1, dtype=np.float64), b.mean(-1, dtype=np.float64)
    var_a, var_b = top1_a.var(-1, ddof=1), top1_b.var(-1, ddof=1)
    delta = top1_b.mean(-1) - top1_a.mean(-1)
    spread = (np.ptp(top1_a, -1) > 0) | (np.ptp(top1_b, -1) > 0)  # else var is rounding error, not 0
    se2 = np.where(spread, var_a / n_a + var_b / n_b, 0.0)
    df = welch_df(var_a, n_a, var_b, n_b)
    # image level: per-image accuracy over seeds, and its run-to-run variance (0/1 outcomes: p (1 - p) n/(n-1))
    p_a, p_b = a.mean(-2, dtype=np.float64), b.mean(-2, dtype=np.float64)
    run_noise = (p_a * (1 - p_a) / (n_a - 1) + p_b * (1 - p_b) / (n_b - 1)).mean(-1)
    tau2 = np.maximum((m - 1) / m * (p_b - p_a).var(-1, ddof=1) - run_noise + se2, 0.0)
    pop_se2 = se2 + tau2 / m
    with np.errstate(invalid="ignore", divide="ignore"):
        pop_df = pop_se2 ** 2 / ((var_a / n_a) ** 2 / (n_a - 1) + (var_b / n_b) ** 2 / (n_b - 1)
                                 + (tau2 / m) ** 2 / (m - 1))
    pop_df = np.where(np.isfinite(pop_df), pop_df, df)
    q = (1 + level) / 2
    half, pop_half = t_quantile(q, df) * np.sqrt(se2), t_quantile(q, pop_df) * np.sqrt(pop_se2)
    out = dict(delta=delta, se=np.sqrt(se2), df=df, low=delta - half, high=delta + half,
               population_se=np.sqrt(pop_se2), population_df=pop_df,
               population_low=delta - pop_half, population_high=delta + pop_half)
    if np.ndim(delta) == 0:
        out = {k: float(v) for k, v in out.items()}
    return DifferenceCI(**out)


def verdict(n_base: int, n_var: int, lo: float | None, hi: float | None) -> tuple[str, bool]:
    """(verdict text, whether a gain is claimed); a demonstrated loss reads "worse". An interval of zero width
    (seeds that agree exactly on both sides) or without bounds claims nothing."""
    if min(n_base, n_var) < MIN_SEEDS_FOR_A_CLAIM or lo is None or hi is None:
        return f"n < {MIN_SEEDS_FOR_A_CLAIM} seeds: no claim", False
    if not lo < hi:
        return "no claim: the seeds of each side agree exactly (zero spread; duplicated runs?)", False
    if lo > 0:
        return "gain", True
    if hi < 0:
        return "worse", False
    return "no clear difference", False


# ---- what a design can detect ----

@dataclass(frozen=True)
class SeedSpread:
    """Seed-to-seed SD of top-1 (a fraction) that sizes a design, and where it comes from."""

    sd: float
    runs: int = 0  # finished runs it is pooled over; 0 for the prior
    groups: int = 0  # variants with >= 2 finished seeds among them

    @property
    def source(self) -> str:
        if not self.runs:
            return f"prior {100 * self.sd:.2f} pt (a CIFAR ResNet on CIFAR-100; no variant has 2 finished seeds)"
        return (f"{100 * self.sd:.2f} pt, pooled over {self.runs} runs of {self.groups} "
                f"variant{'s' if self.groups > 1 else ''}")


def seed_spread(top1_by_variant: Iterable[Sequence[float]], prior: float = PRIOR_SEED_SD) -> SeedSpread:
    """Pooled SD of top-1 over seeds (sum of squared deviations from each variant's mean over the pooled
    degrees of freedom), from the variants with >= 2 finished seeds; ``prior`` when there are none."""
    ss, dof, runs, groups = 0.0, 0, 0, 0
    for values in top1_by_variant:
        x = np.asarray(values, dtype=float)
        if len(x) >= 2:
            ss, dof, runs, groups = ss + ((x - x.mean()) ** 2).sum(), dof + len(x) - 1, runs + len(x), groups + 1
    return SeedSpread(math.sqrt(ss / dof), runs, groups) if dof else SeedSpread(prior)


def _chi2_nodes(df: float, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with E[g(V)] ~ sum(w g(x)) for V ~ chi-square(df): generalised Gauss-Laguerre
    quadrature from the eigenvectors of its Jacobi matrix (Golub & Welsch 1969)."""
    a, i = df / 2 - 1, np.arange(1, n)
    off = np.sqrt(i * (i + a))
    x, v = np.linalg.eigh(np.diag(2 * np.arange(n) + a + 1) + np.diag(off, 1) + np.diag(off, -1))
    return 2 * x, v[0] ** 2


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, elementwise: 1/2 plus the density integrated over [0, |x|] (Gauss-Legendre)."""
    r = np.minimum(np.abs(x), 9.0)  # 1 - Φ(9) < 1e-18
    pts = r[..., None] / 2 * (1 + _GL_NODES)
    half = r / 2 * (np.exp(-pts * pts / 2) @ _GL_WEIGHTS) / math.sqrt(2 * math.pi)
    return 0.5 + np.sign(x) * half


def min_detectable_difference(n_base: int, n_var: int, seed_sd: float, level: float = CI_LEVEL,
                              power: float = POWER) -> float:
    """Smallest true difference that Welch's two-sided test at ``1 - level`` finds with probability ``power``,
    with ``n_base`` and ``n_var`` seeds (>= 3 each) and seed SD ``seed_sd`` on both sides.

    The power is exact for normal top-1 with equal spreads: the probability that ``|Z + λ|`` exceeds
    ``t(ν̂) SE/σ_Δ``, averaged over the two sample variances (which set ``SE`` and the Welch degrees of freedom
    ``ν̂``) by quadrature; ``λ = difference/σ_Δ`` is then found by Newton's method from the usual
    approximation ``t(1 - α/2, ν) + t(power, ν)``.
    """
    if min(n_base, n_var) < MIN_SEEDS_FOR_A_CLAIM:
        raise ValueError(f"a difference is only detectable with >= {MIN_SEEDS_FOR_A_CLAIM} seeds per side")
    (va, wa), (vb, wb) = _chi2_nodes(n_base - 1), _chi2_nodes(n_var - 1)
    sa, sb = (va / (n_base - 1))[:, None], (vb / (n_var - 1))[None, :]  # sample variances over the seed variance
    scale = 1 / n_base + 1 / n_var
    cut = t_quantile((1 + level) / 2, welch_df(sa, n_base, sb, n_var).ravel()) * np.sqrt(
        (sa / n_base + sb / n_var).ravel() / scale)
    w = (wa[:, None] * wb[None, :]).ravel()
    df = float(welch_df(1.0, n_base, 1.0, n_var))
    lam = t_quantile((1 + level) / 2, df) + t_quantile(power, df)
    for _ in range(30):
        p = w @ (_normal_cdf(lam - cut) + _normal_cdf(-lam - cut))
        slope = w @ (np.exp(-(lam - cut) ** 2 / 2) - np.exp(-(lam + cut) ** 2 / 2)) / math.sqrt(2 * math.pi)
        step = (p - power) / slope
        lam -= step
        if abs(step) < 1e-10:
            break
    return lam * seed_sd * math.sqrt(scale)


def seeds_needed(target: float, seed_sd: float, level: float = CI_LEVEL, power: float = POWER,
                 most: int = 1000) -> int | None:
    """Fewest seeds per side (>= ``MIN_SEEDS_FOR_A_CLAIM``) whose MDE is at most ``target``; None beyond ``most``
    (bisection: the MDE falls as seeds are added)."""
    mde = lambda n: min_detectable_difference(n, n, seed_sd, level, power)  # noqa: E731
    lo, hi = MIN_SEEDS_FOR_A_CLAIM, most
    if mde(hi) > target:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mde(mid) <= target else (mid + 1, hi)
    return lo


def detectable_text(n_base: int, n_var: int, spread: SeedSpread) -> str:
    """What a comparison of ``n_base`` vs ``n_var`` seeds can detect, as a phrase for tables and reports."""
    if min(n_base, n_var) < MIN_SEEDS_FOR_A_CLAIM:
        n = MIN_SEEDS_FOR_A_CLAIM
        return (f"no claim with fewer than {n} seeds per side; {n} per side would detect "
                f"{100 * min_detectable_difference(n, n, spread.sd):.2f} pt at {100 * POWER:.0f} % power "
                f"(seed SD {spread.source})")
    return (f"with {n_base} vs {n_var} seeds the smallest difference detectable at {100 * POWER:.0f} % power is "
            f"{100 * min_detectable_difference(n_base, n_var, spread.sd):.2f} pt (seed SD {spread.source})")


def design_lines(n_seeds: int, seed_sd: float, source: str, target: float = TARGET_DIFFERENCE) -> list[str]:
    """The ``study plan`` / ``study table`` lines on what ``n_seeds`` per side can detect at seed SD ``seed_sd``
    (``source`` says where it comes from), and the seeds a difference of ``target`` needs."""
    lines = [f"what the design can detect (two-sided {100 * (1 - CI_LEVEL):.0f} % test, {100 * POWER:.0f} % power, "
             f"seed SD {source}):"]
    if n_seeds >= MIN_SEEDS_FOR_A_CLAIM:
        lines.append(f"  {n_seeds} seeds per side: minimum detectable difference "
                     f"{100 * min_detectable_difference(n_seeds, n_seeds, seed_sd):.2f} pt of top-1")
    else:
        lines.append(f"  {n_seeds} seeds per side: no gain can be claimed (a claim needs >= "
                     f"{MIN_SEEDS_FOR_A_CLAIM} per side)")
    need = seeds_needed(target, seed_sd)
    lines.append(f"  a difference of {100 * target:.2f} pt needs "
                 + (f"{need} seeds per side" if need else "more than 1000 seeds per side"))
    return lines
