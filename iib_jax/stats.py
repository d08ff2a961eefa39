"""Statistics that separate methods: mean ± std, and paired differences over seeds.

Every comparison in the tables is paired by seed: method A and the reference (joint training) ran
with the same seed, data and start, so the per-seed difference d_i = a_i − b_i removes the
seed-to-seed spread that the two share. Over n seeds:

  mean  d̄ = Σ d_i / n
  std   s = sqrt(Σ (d_i − d̄)² / (n − 1))                      (sample standard deviation)
  CI    d̄ ± t_{(1 + confidence) / 2, n − 1} · s / sqrt(n)     (Student t, n − 1 degrees of freedom)
  wins  #{d_i > tolerance}, ties #{|d_i| ≤ tolerance}, losses #{d_i < −tolerance}

A method is called better (worse) than the reference only when the whole interval lies above
(below) zero; with fewer than two seeds there is no interval and the verdict is "undetermined".

numpy only (no scipy): the t quantile is computed here from the regularised incomplete beta
function.

  d = stats.paired_difference(acc["iibalance"], acc["joint"])      # sequences over seeds
  stats.format_paired(d, scale=100)    # '+2.31 [−0.40, +5.02] (4/5)'
  stats.verdict(d)                     # 'no difference'
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence, Union

import numpy as np

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no difference"
UNDETERMINED = "undetermined"      # fewer than two seeds: no interval
MINUS = "\u2212"                   # the typographic minus of the tables

Values = Union[Sequence[float], np.ndarray, Mapping[Any, float]]


# ------------------------------------------------------------------------------------------------
# Student's t quantile.


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz's method)."""
  tiny = 1e-300
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 400):
    m2 = 2 * m
    aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    h *= d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    delta = d * c
    h *= delta
    if abs(delta - 1.0) < 1e-15:
      break
  return h


def _betainc(a: float, b: float, x: float) -> float:
  """Regularised incomplete beta function I_x(a, b) for x in [0, 1]."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
               + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
  """P(T ≤ t) for Student's t with `df` degrees of freedom (df > 0)."""
  if df <= 0:
    raise ValueError(f"degrees of freedom must be positive, got {df}")
  x = df / (df + t * t)
  tail = 0.5 * _betainc(df / 2.0, 0.5, x)        # P(T > |t|)
  return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
  """The p-quantile of Student's t with `df` degrees of freedom: t_cdf(t_quantile(p, df)) = p.

  Bisection on `t_cdf` to double precision (the quantile is needed a few times per table).
  """
  if not 0.0 < p < 1.0:
    raise ValueError(f"p must lie in (0, 1), got {p}")
  if p == 0.5:
    return 0.0
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < p:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if t_cdf(mid, df) < p:
      lo = mid
    else:
      hi = mid
    if hi - lo <= 1e-13 * max(1.0, hi):
      break
  return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# Mean ± std and paired differences.


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
  x = np.asarray(values, np.float64).reshape(-1)
  bad = np.flatnonzero(~np.isfinite(x))
  if bad.size:
    raise ValueError(f"{what} has non-finite values at positions {bad.tolist()}: {x[bad].tolist()}")
  return x


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
  """(mean, sample standard deviation (ddof = 1), n) of per-seed values.

  n = 1 gives std NaN (one seed has no spread); n = 0 gives mean and std NaN.
  """
  x = _as_array(values, "values")
  n = int(x.size)
  if n == 0:
    return math.nan, math.nan, 0
  mean = float(x.mean())
  return mean, (float(x.std(ddof=1)) if n > 1 else math.nan), n


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """The per-seed difference a − b summarised over seeds.

  Attributes:
    mean: d̄, the mean difference (NaN for n = 0).
    std: s, the sample standard deviation of the differences (NaN for n < 2).
    n: number of paired seeds.
    low, high: the confidence interval d̄ ∓ t·s/√n (NaN for n < 2).
    wins, ties, losses: seeds with d > tolerance, |d| ≤ tolerance, d < −tolerance.
    confidence: the interval's coverage, e.g. 0.95.
  """
  mean: float
  std: float
  n: int
  low: float
  high: float
  wins: int
  ties: int
  losses: int
  confidence: float = 0.95

  @property
  def has_interval(self) -> bool:
    return self.n >= 2

  @property
  def verdict(self) -> str:
    return verdict(self)


def _pair(a: Values, b: Values) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(a, Mapping) != isinstance(b, Mapping):
    raise ValueError("give both a and b as sequences over seeds, or both as {seed: value}")
  if isinstance(a, Mapping):
    if set(a) != set(b):
      raise ValueError(f"a and b must cover the same seeds: only in a {sorted(set(a) - set(b))}, "
                       f"only in b {sorted(set(b) - set(a))}")
    keys = sorted(a)
    a, b = [a[k] for k in keys], [b[k] for k in keys]
  x, y = _as_array(a, "a"), _as_array(b, "b")
  if x.shape != y.shape:
    raise ValueError(f"a and b must pair seed for seed: {x.size} values against {y.size}")
  return x, y


def paired_difference(a: Values, b: Values, *, confidence: float = 0.95,
                      tolerance: float = 1e-9) -> PairedDifference:
  """Summarises d_i = a_i − b_i over seeds (module docstring).

  Args:
    a: the method's per-seed values (e.g. test accuracies), a sequence or {seed: value}.
    b: the reference's values for the same seeds, in the same order (or the same keys).
    confidence: the interval's coverage.
    tolerance: |d_i| ≤ tolerance counts as a tie (float noise; one test example of 2000 is 5e-4).

  Returns:
    A PairedDifference. n = 0 gives NaN everywhere and zero counts; n = 1 gives the one
    difference as the mean, no std and no interval.

  Raises:
    ValueError: for unpaired inputs (different lengths or seeds) or non-finite values.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  x, y = _pair(a, b)
  d = x - y
  n = int(d.size)
  wins, losses = int((d > tolerance).sum()), int((d < -tolerance).sum())
  ties = n - wins - losses
  if n == 0:
    return PairedDifference(math.nan, math.nan, 0, math.nan, math.nan, 0, 0, 0, confidence)
  mean = float(d.mean())
  if n == 1:
    return PairedDifference(mean, math.nan, 1, math.nan, math.nan, wins, ties, losses, confidence)
  std = float(d.std(ddof=1))
  half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
  return PairedDifference(mean, std, n, mean - half, mean + half, wins, ties, losses, confidence)


def verdict(d: PairedDifference) -> str:
  """"better" / "worse" when the interval lies wholly above / below zero, "no difference" when it
  contains zero, "undetermined" without an interval (fewer than two seeds)."""
  if not d.has_interval:
    return UNDETERMINED
  if d.low > 0:
    return BETTER
  if d.high < 0:
    return WORSE
  return NO_DIFFERENCE


def compare_to(values: Mapping[str, Values], reference: str = "joint", **kwargs: Any
               ) -> dict[str, PairedDifference]:
  """The paired difference of every entry of `values` to `values[reference]`.

  Args:
    values: {method: per-seed values}; the reference itself is left out of the result.
    reference: the method every other is compared with.
    **kwargs: `paired_difference` options.
  """
  if reference not in values:
    raise ValueError(f"reference {reference!r} not among {sorted(values)}")
  return {name: paired_difference(v, values[reference], **kwargs)
          for name, v in values.items() if name != reference}


# ------------------------------------------------------------------------------------------------
# Table cells.


def _signed(x: float, digits: int, minus: str) -> str:
  text = f"{x:+.{digits}f}"
  if text[1:].strip("0.") == "":          # -0.00 and +0.00 both read ±0.00
    text = "+" + text[1:]
  return text.replace("-", minus)


def format_mean_std(values: Sequence[float] | np.ndarray, *, scale: float = 1.0,
                    digits: int = 2) -> str:
  """'79.17 ± 2.50' (mean ± sample std); '79.17' for one seed; '–' for none.

  Args:
    scale: multiplies the values first (100 turns accuracies into points).
  """
  mean, std, n = mean_std(np.asarray(values, np.float64) * scale)
  if n == 0:
    return "\u2013"
  if n == 1:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} \u00b1 {std:.{digits}f}"


def format_paired(d: PairedDifference, *, scale: float = 1.0, digits: int = 2,
                  minus: str = MINUS) -> str:
  """'+2.31 [−0.40, +5.02] (4/5)': mean difference, confidence interval, wins / seeds.

  One seed: '+2.31 (1/1)', no interval; no seed: '–'. Ties are not wins: with 3 wins, 1 tie and
  1 loss the count reads (3/5).

  Args:
    scale: multiplies the differences first (100 turns accuracies into points).
    minus: the minus sign ('-' for plain ASCII).
  """
  if d.n == 0:
    return "\u2013"
  count = f"({d.wins}/{d.n})"
  mean = _signed(d.mean * scale, digits, minus)
  if not d.has_interval:
    return f"{mean} {count}"
  low, high = _signed(d.low * scale, digits, minus), _signed(d.high * scale, digits, minus)
  return f"{mean} [{low}, {high}] {count}"
