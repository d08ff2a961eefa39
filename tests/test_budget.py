"""Eqs. 1, 2, 5 against numpy references and hand-worked values."""
import jax
import numpy as np
import pytest

from iib_jax import budget


def ref_normalized_entropy(p):
  p = np.asarray(p, np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return -plogp.sum(-1) / np.log(p.shape[-1])


def ref_softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


def test_normalized_entropy_matches_numpy():
  p = np.random.default_rng(0).dirichlet(np.ones(5), size=7)
  p[0] = [1.0, 0, 0, 0, 0]                      # 0·log 0 counts as 0
  np.testing.assert_allclose(budget.normalized_entropy(p), ref_normalized_entropy(p), rtol=1e-5,
                             atol=1e-7)


def test_entropy_worked_value_and_extremes():
  assert float(budget.normalized_entropy(np.array([0.7, 0.2, 0.1]))) == pytest.approx(0.72985,
                                                                                       abs=1e-5)
  assert float(budget.normalized_entropy(np.eye(4)[2])) == 0.0
  assert float(budget.normalized_entropy(np.full(6, 1 / 6))) == pytest.approx(1.0, abs=1e-6)


def test_entropy_from_logits_matches_probs():
  logits = np.random.default_rng(1).normal(size=(3, 8, 5)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(budget.normalized_entropy_from_logits(logits),
                             ref_normalized_entropy(probs), rtol=1e-5, atol=1e-6)


def test_entropy_gradient_finite_at_zero_and_one():
  g = jax.grad(lambda p: budget.normalized_entropy(p))(np.array([1.0, 0.0, 0.0], np.float32))
  assert np.all(np.isfinite(g))


def test_information_budget_is_mean_confidence_and_honours_mask():
  p = np.random.default_rng(2).dirichlet(np.ones(4), size=10)
  np.testing.assert_allclose(budget.information_budget(p),
                             np.mean(1 - ref_normalized_entropy(p)), rtol=1e-5)
  mask = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], np.float32)
  np.testing.assert_allclose(budget.information_budget(p, mask),
                             np.mean(1 - ref_normalized_entropy(p[mask > 0])), rtol=1e-5)


def test_relative_budget_worked_example():
  beta = np.asarray(budget.relative_budget(np.array([0.60, 0.45]), tau=0.07))
  np.testing.assert_allclose(beta, [0.89500, 0.10500], atol=1e-5)
  strength = np.asarray(budget.alignment_strength(beta))
  np.testing.assert_allclose(strength, [0.0, 0.78999], atol=1e-5)
  assert int(budget.anchor_index(beta)) == 0


def test_relative_budget_three_modalities():
  b = np.array([0.3, 0.8, 0.55])
  beta = np.asarray(budget.relative_budget(b, 0.2))
  np.testing.assert_allclose(beta, ref_softmax(b / 0.2), rtol=1e-5)
  assert beta.sum() == pytest.approx(1.0, abs=1e-6)
  strength = np.asarray(budget.alignment_strength(beta))
  np.testing.assert_allclose(strength, np.maximum(beta.max() - beta, 0), rtol=1e-5, atol=1e-7)
  assert strength[int(budget.anchor_index(beta))] == 0.0
