"""The paper's statistics (Sec. 3.1): mean ± std over folds and the two-tailed paired t-test, without scipy.

The Student t distribution is computed from the regularized incomplete beta function, evaluated with its continued
fraction (modified Lentz method): for t with df degrees of freedom, P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from RCSegNeXtCore.evaluation import EvaluationError

_TINY = 1e-300
_EPS = 1e-15


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction 1/(1+ d1/(1+ d2/(1+ ...))) of I_x(a, b) (modified Lentz); converges for x < (a+1)/(a+b+2)."""
    f, c, d = 1.0, 1.0, 0.0  # f starts at the stand-in b0 = 1; the fraction is f - 1
    for i in range(1000):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + numerator / c
        c = c if abs(c) > _TINY else _TINY
        f *= c * d
        if abs(1.0 - c * d) < _EPS:
            return f - 1.0
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1 (got a={a}, b={b}, x={x})")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-tailed p-value P(|T| >= |t|) of Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive (got {df})")
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) of Student's t distribution."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


@dataclass(frozen=True)
class TTest:
    """Result of a paired t-test of a - b."""

    statistic: float
    df: int
    pvalue: float
    mean_difference: float
    n: int


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Two-tailed paired t-test of equal means (what the paper reports; scipy.stats.ttest_rel equivalent).

    Equal differences give t = ±inf, p = 0 (or t = p = nan when all differences are zero, as scipy does).
    """
    if len(a) != len(b):
        raise EvaluationError(f"paired t-test needs the same number of values on both sides (got {len(a)} and "
                              f"{len(b)})")
    if len(a) < 2:
        raise EvaluationError(f"paired t-test needs at least 2 pairs (got {len(a)})")
    differences = [float(x) - float(y) for x, y in zip(a, b)]
    if not all(math.isfinite(d) for d in differences):
        raise EvaluationError("paired t-test values must be finite numbers (drop n/a pairs first)")
    n = len(differences)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    if variance <= (1e-14 * max(1.0, abs(mean))) ** 2:
        t = float("nan") if mean == 0 else math.copysign(float("inf"), mean)
    else:
        t = mean / math.sqrt(variance / n)
    return TTest(statistic=t, df=n - 1, pvalue=t_two_sided_p(t, n - 1), mean_difference=mean, n=n)


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1 by default, as the paper's mean ± std over folds)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) - ddof <= 0:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))


def format_p(p: float) -> str:
    """The paper's notation: p<0.01, p<0.05 (when 2-decimal rounding would hide significance), else p=0.06."""
    if p is None or math.isnan(p):
        return "p=n/a"
    if p < 0.01:
        return "p<0.01"
    rounded = round(p, 2)
    if p < 0.05 <= rounded:
        return "p<0.05"
    return f"p={rounded:.2f}"
