"""iib_jax.stats against values worked out by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest

from iib_jax import stats


def test_t_quantile_matches_closed_forms_and_table():
  # df = 1 (Cauchy): t = tan(π (p − 1/2)); tan(0.475 π) = 12.706205.
  assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-10)
  # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t²)), so t = α sqrt(2 / (1 − α²)) with α = 2p − 1:
  # α = 0.95 gives 0.95 · sqrt(2 / 0.0975) = 4.302653.
  assert stats.t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / 0.0975), rel=1e-10)
  # Printed tables (e.g. Fisher & Yates): t_0.975 for 4, 9, 29 df; t_0.95 for 9 df.
  for p, df, expected in [(0.975, 4, 2.776445), (0.975, 9, 2.262157), (0.975, 29, 2.045230),
                          (0.95, 9, 1.833113)]:
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=2e-6)
  # Large df approaches the normal quantile 1.959964.
  assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
  assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776445, abs=2e-6)
  assert stats.t_quantile(0.5, 3) == 0.0


def test_t_quantile_matches_scipy_when_installed():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df in (1, 2, 3, 5, 7, 10, 19, 30, 57, 200):
    for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.001):
      assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8), (p, df)
      assert stats.t_cdf(scipy_stats.t.ppf(p, df), df) == pytest.approx(p, rel=1e-9)


def test_paired_difference_worked_example_interval_contains_zero():
  a = [0.80, 0.78, 0.82, 0.79, 0.81]
  b = [0.78, 0.79, 0.78, 0.76, 0.80]
  # d = [0.02, −0.01, 0.04, 0.03, 0.01]; Σd = 0.09, d̄ = 0.018.
  # d − d̄ = [0.002, −0.028, 0.022, 0.012, −0.008]; squares sum to
  # 4e-6 + 7.84e-4 + 4.84e-4 + 1.44e-4 + 6.4e-5 = 1.48e-3; / 4 = 3.7e-4; s = 0.0192354.
  # s / √5 = 0.00860233; t_0.975,4 = 2.776445; half width 0.0238839.
  # CI = [0.018 − 0.0238839, 0.018 + 0.0238839] = [−0.0058839, 0.0418839].
  d = stats.paired_difference(a, b)
  assert d.n == 5
  assert d.mean == pytest.approx(0.018, abs=1e-12)
  assert d.std == pytest.approx(math.sqrt(3.7e-4), rel=1e-9)
  assert d.low == pytest.approx(-0.0058839, abs=1e-7)
  assert d.high == pytest.approx(0.0418839, abs=1e-7)
  assert (d.wins, d.ties, d.losses) == (4, 0, 1)
  assert stats.verdict(d) == stats.NO_DIFFERENCE == d.verdict
  # In points: +1.80 [−0.59, +4.19], 4 wins of 5.
  assert stats.format_paired(d, scale=100) == "+1.80 [\u22120.59, +4.19] (4/5)"
  assert stats.format_paired(d, scale=100, minus="-") == "+1.80 [-0.59, +4.19] (4/5)"


def test_paired_difference_better_when_interval_is_above_zero():
  # d = [2, 3, 4]: d̄ = 3, s = 1, s / √3 = 0.577350; t_0.975,2 = 4.302653, half width 2.484138.
  # CI = [0.515862, 5.484138]: wholly above zero.
  d = stats.paired_difference([12.0, 13.0, 14.0], [10.0, 10.0, 10.0])
  assert (d.mean, d.std) == (pytest.approx(3.0), pytest.approx(1.0))
  assert (d.low, d.high) == (pytest.approx(0.515862, abs=1e-6), pytest.approx(5.484138, abs=1e-6))
  assert (d.wins, d.ties, d.losses) == (3, 0, 0)
  assert stats.verdict(d) == stats.BETTER
  assert stats.format_paired(d) == "+3.00 [+0.52, +5.48] (3/3)"


def test_paired_difference_worse_when_interval_is_below_zero():
  # d = [−1, −1.5, −2, −2.5]: d̄ = −1.75; squared deviations 0.5625 + 0.0625 + 0.0625 + 0.5625
  # = 1.25, / 3 = 0.416667, s = 0.645497; s / 2 = 0.322749; t_0.975,3 = 3.182446,
  # half width 1.027131; CI = [−2.777131, −0.722869].
  d = stats.paired_difference([1.0, 1.5, 2.0, 2.5], [2.0, 3.0, 4.0, 5.0])
  assert d.mean == pytest.approx(-1.75)
  assert d.std == pytest.approx(math.sqrt(1.25 / 3))
  assert (d.low, d.high) == (pytest.approx(-2.777131, abs=1e-6),
                             pytest.approx(-0.722869, abs=1e-6))
  assert (d.wins, d.ties, d.losses) == (0, 0, 4)
  assert stats.verdict(d) == stats.WORSE
  assert stats.format_paired(d) == "\u22121.75 [\u22122.78, \u22120.72] (0/4)"


def test_win_count_separates_ties_from_wins_and_losses():
  # d = [0, 1, −1, 0, 2]: 2 wins (1, 2), 2 ties (0, 0), 1 loss (−1).
  d = stats.paired_difference([5, 6, 4, 5, 7], [5, 5, 5, 5, 5])
  assert (d.wins, d.ties, d.losses) == (2, 2, 1)
  assert stats.format_paired(d).endswith("(2/5)")
  # Float noise below the tolerance is a tie: 0.1 + 0.2 − 0.3 = 5.6e-17.
  d = stats.paired_difference([0.1 + 0.2], [0.3])
  assert (d.wins, d.ties, d.losses) == (0, 1, 0)
  # A wider tolerance turns small differences into ties: d = [0.004, 0.02, −0.003].
  d = stats.paired_difference([0.504, 0.52, 0.497], [0.5, 0.5, 0.5], tolerance=0.005)
  assert (d.wins, d.ties, d.losses) == (1, 2, 0)


def test_identical_runs_give_a_zero_width_interval_and_no_difference():
  d = stats.paired_difference([0.7, 0.6], [0.7, 0.6])
  assert (d.mean, d.std, d.low, d.high) == (0.0, 0.0, 0.0, 0.0)
  assert stats.verdict(d) == stats.NO_DIFFERENCE
  assert stats.format_paired(d, scale=100) == "+0.00 [+0.00, +0.00] (0/2)"


def test_one_seed_has_no_interval_and_no_verdict():
  d = stats.paired_difference([0.55], [0.50])
  assert d.n == 1 and d.mean == pytest.approx(0.05)
  assert math.isnan(d.std) and math.isnan(d.low) and math.isnan(d.high)
  assert not d.has_interval
  assert stats.verdict(d) == stats.UNDETERMINED
  assert stats.format_paired(d, scale=100) == "+5.00 (1/1)"


def test_no_seed_gives_nan_and_a_dash():
  d = stats.paired_difference([], [])
  assert d.n == 0 and math.isnan(d.mean) and (d.wins, d.ties, d.losses) == (0, 0, 0)
  assert stats.verdict(d) == stats.UNDETERMINED
  assert stats.format_paired(d) == "\u2013"
  assert stats.format_mean_std([]) == "\u2013"


def test_seed_mappings_pair_by_seed_not_by_order():
  # Sorted by seed: a = [0.8, 0.9, 0.7], b = [0.75, 0.85, 0.7]; d = [0.05, 0.05, 0].
  d = stats.paired_difference({0: 0.8, 2: 0.7, 1: 0.9}, {1: 0.85, 0: 0.75, 2: 0.7})
  assert d.mean == pytest.approx(0.1 / 3)
  assert (d.wins, d.ties, d.losses) == (2, 1, 0)


def test_unpaired_or_non_finite_inputs_raise():
  with pytest.raises(ValueError, match="pair seed for seed"):
    stats.paired_difference([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match=r"only in a \[3\]"):
    stats.paired_difference({0: 1, 3: 2}, {0: 1, 1: 2})
  with pytest.raises(ValueError, match="non-finite values at positions \\[1\\]"):
    stats.paired_difference([1.0, float("nan")], [1.0, 1.0])
  with pytest.raises(ValueError, match="both as"):
    stats.paired_difference({0: 1.0}, [1.0])


def test_mean_std_and_its_cell():
  # [79, 81, 77.5]: mean 237.5 / 3 = 79.1667; deviations −0.1667, 1.8333, −1.6667; squares
  # 0.02778 + 3.36111 + 2.77778 = 6.16667; / 2 = 3.08333; std 1.75594.
  mean, std, n = stats.mean_std([79.0, 81.0, 77.5])
  assert (mean, std, n) == (pytest.approx(79.166667), pytest.approx(1.755942, abs=1e-6), 3)
  assert stats.format_mean_std([0.79, 0.81, 0.775], scale=100) == "79.17 \u00b1 1.76"
  assert stats.format_mean_std([0.5], scale=100) == "50.00"
  m, s, n = stats.mean_std([0.5])
  assert (m, n) == (0.5, 1) and math.isnan(s)


def test_compare_to_pairs_every_method_with_the_reference():
  values = {"joint": [0.70, 0.72, 0.71], "iibalance": [0.74, 0.75, 0.76], "ogm_ge": [0.70, 0.70,
                                                                                     0.73]}
  out = stats.compare_to(values, "joint")
  assert sorted(out) == ["iibalance", "ogm_ge"]
  np.testing.assert_allclose(out["iibalance"].mean, np.mean([0.04, 0.03, 0.05]))
  assert out["iibalance"].verdict == stats.BETTER
  with pytest.raises(ValueError, match="reference 'udi'"):
    stats.compare_to(values, "udi")
