"""Eqs. 6–13 against numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import fusion, losses


def ref_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_ce(logits, labels):
  lp = ref_log_softmax(np.asarray(logits, np.float64))
  return -np.take_along_axis(lp, labels[..., None] if lp.ndim == 2 else
                             np.broadcast_to(labels, lp.shape[:-1])[..., None], -1)[..., 0]


def ref_entropy(p):
  return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1) / np.log(p.shape[-1])


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


RNG = np.random.default_rng(0)
M, B, C, D = 3, 6, 4, 5


def test_fusion_weights_match_direct_formula():
  beta = np.array([0.6, 0.3, 0.1])
  u = RNG.random((B, M))
  g = RNG.normal(size=(B, M))
  alpha = beta[None] * np.exp(-u) * sigmoid(g)
  want = alpha / alpha.sum(1, keepdims=True)
  got = fusion.fusion_weights(beta, u, g)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got).sum(1), 1.0, rtol=1e-6)


def test_fusion_weights_finite_with_tiny_prior():
  beta = np.array([1.0 - 2e-30, 1e-30, 1e-30], np.float32)
  w = np.asarray(fusion.fusion_weights(beta, RNG.random((B, M)), RNG.normal(size=(B, M))))
  assert np.all(np.isfinite(w)) and np.allclose(w.sum(1), 1.0)


def test_fuse_is_weighted_sum():
  w = RNG.dirichlet(np.ones(M), size=B)
  z = RNG.normal(size=(M, B, D)).astype(np.float32)
  want = sum(w[:, m:m + 1] * z[m] for m in range(M))
  np.testing.assert_allclose(fusion.fuse(jnp.asarray(w), jnp.asarray(z)), want, rtol=1e-5)


def test_gate_input_layout():
  u = RNG.random((B, M)).astype(np.float32)
  z = [RNG.normal(size=(B, D)).astype(np.float32) for _ in range(M)]
  phi = np.asarray(fusion.gate_input(u, z, "identity"))
  np.testing.assert_allclose(phi, np.concatenate([u] + z, 1))
  phi = np.asarray(fusion.gate_input(u, z, "mean"))
  np.testing.assert_allclose(phi, np.concatenate([u] + [x.mean(1, keepdims=True) for x in z], 1),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="pool"):
    fusion.gate_input(u, z, "max")


def test_permuting_modalities_permutes_weights():
  beta = np.array([0.5, 0.3, 0.2])
  u, g = RNG.random((B, M)), RNG.normal(size=(B, M))
  perm = [2, 0, 1]
  w = np.asarray(fusion.fusion_weights(beta, u, g))
  wp = np.asarray(fusion.fusion_weights(beta[perm], u[:, perm], g[:, perm]))
  np.testing.assert_allclose(wp, w[:, perm], rtol=1e-5)


def test_stage_one_matches_numpy():
  logits = RNG.normal(size=(M, B, C))
  labels = RNG.integers(0, C, B)
  pra = RNG.random(M)
  strength = np.array([0.0, 0.4, 0.7])
  want = sum(ref_ce(logits[m], labels).mean() for m in range(M)) + (strength * pra).sum()
  np.testing.assert_allclose(losses.stage_one(logits, labels, pra, strength), want, rtol=1e-5)


def test_stage_two_matches_numpy_and_masking_equals_subset():
  fused = RNG.normal(size=(B, C))
  logits = RNG.normal(size=(M, B, C))
  labels = RNG.integers(0, C, B)
  w = RNG.dirichlet(np.ones(M), size=B)
  gamma = 0.5
  ce_m = np.stack([ref_ce(logits[m], labels) for m in range(M)], 1)     # [B, M]
  want = ref_ce(fused, labels).mean() + gamma * (w * ce_m).sum(1).mean()
  np.testing.assert_allclose(losses.stage_two(fused, logits, w, labels, gamma), want, rtol=1e-5)
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  keep = mask > 0
  sub = losses.stage_two(fused[keep], logits[:, keep], w[keep], labels[keep], gamma)
  np.testing.assert_allclose(losses.stage_two(fused, logits, w, labels, gamma, mask), sub,
                             rtol=1e-5)


def test_stage_two_weight_gradient_option():
  fused = jnp.asarray(RNG.normal(size=(B, C)))
  logits = jnp.asarray(RNG.normal(size=(M, B, C)))
  labels = RNG.integers(0, C, B)
  w = jnp.asarray(RNG.dirichlet(np.ones(M), size=B))
  grad = lambda detach: jax.grad(
      lambda w: losses.stage_two(fused, logits, w, labels, 0.5, detach_weights=detach))(w)
  np.testing.assert_array_equal(grad(True), 0.0)
  ce_m = np.stack([ref_ce(np.asarray(logits[m]), labels) for m in range(M)], 1)
  np.testing.assert_allclose(grad(False), 0.5 * ce_m / B, rtol=1e-5)


def test_stage_weight_and_total():
  assert float(losses.stage_weight(0, 50, 1.0)) == pytest.approx(1.0)
  assert float(losses.stage_weight(25, 50, 0.8)) == pytest.approx(0.4)
  assert float(losses.stage_weight(49, 50, 1.0)) == pytest.approx(0.02)
  assert float(losses.total_loss(2.0, 4.0, 0.25)) == pytest.approx(0.25 * 2 + 0.75 * 4)


def test_masked_mean():
  v = np.array([1.0, 2.0, 3.0, 4.0])
  assert float(losses.masked_mean(v, np.array([1, 0, 1, 0]))) == pytest.approx(2.0)
  assert float(losses.masked_mean(v)) == pytest.approx(2.5)


def test_masked_mean_with_a_mask_per_leading_index_normalises_each_row_by_its_own_count():
  v = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]])
  mask = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], np.float32)
  # By hand: (1 + 3) / 2, (20 + 30 + 40) / 3, and 0 for a row where nothing counts.
  np.testing.assert_allclose(losses.masked_mean(v, mask), [2.0, 30.0, 0.0], rtol=1e-6)
  # One [B] mask is still shared by every row.
  np.testing.assert_allclose(losses.masked_mean(v, mask[0]), [2.0, 20.0, 6.0], rtol=1e-6)


def test_stage_two_leaves_removed_modalities_out_of_the_auxiliary_sum_only():
  fused = RNG.normal(size=(B, C))
  logits = RNG.normal(size=(M, B, C))
  labels = RNG.integers(0, C, B)
  w = RNG.dirichlet(np.ones(M), size=B)
  present = np.ones((M, B), np.float32)
  present[0, [1, 4]] = present[2, 0] = 0.0
  ce_m = np.stack([ref_ce(logits[m], labels) for m in range(M)], 1)     # [B, M]
  want = ref_ce(fused, labels).mean() + 0.5 * (w * ce_m * present.T).sum(1).mean()
  np.testing.assert_allclose(losses.stage_two(fused, logits, w, labels, 0.5, present=present),
                             want, rtol=1e-5)
