"""Eqs. 3, 4 against numpy references."""
import jax
from jax.test_util import check_grads
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import prototypes


def ref_ema(protos, seen, feats, labels, rho, mask=None):
  protos, seen = protos.copy(), seen.copy()
  mask = np.ones(len(labels)) if mask is None else mask
  for c in range(protos.shape[0]):
    idx = [i for i in range(len(labels)) if labels[i] == c and mask[i] > 0]
    if not idx:
      continue
    mean = feats[idx].mean(0)
    protos[c] = rho * protos[c] + (1 - rho) * mean if seen[c] else mean
    seen[c] = True
  return protos, seen


def ref_pra(feats, labels, protos, tau_p, cosine=False):
  if cosine:
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    protos = protos / np.linalg.norm(protos, axis=1, keepdims=True)
  s = feats @ protos.T / tau_p
  s = s - s.max(1, keepdims=True)
  logp = s - np.log(np.exp(s).sum(1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), labels])


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  return rng.normal(size=(8, 6)).astype(np.float32), np.array([0, 1, 1, 3, 0, 1, 3, 3])


def test_first_update_takes_batch_mean_and_absent_class_keeps_prototype(data):
  feats, labels = data
  bank = prototypes.init_bank(5, 6)
  bank = prototypes.ema_update(bank, feats, labels, rho=0.9)
  np.testing.assert_allclose(bank.protos[1], feats[labels == 1].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(bank.seen, [True, True, False, True, False])
  np.testing.assert_array_equal(bank.protos[2], 0.0)   # never seen: untouched


def test_ema_matches_numpy_over_several_batches(data):
  feats, labels = data
  rng = np.random.default_rng(1)
  bank = prototypes.init_bank(5, 6)
  ref_p, ref_s = np.zeros((5, 6)), np.zeros(5, bool)
  update = jax.jit(prototypes.ema_update, static_argnums=())
  for _ in range(4):
    f = rng.normal(size=feats.shape).astype(np.float32)
    y = rng.integers(0, 5, size=len(labels))
    mask = (rng.random(len(y)) > 0.25).astype(np.float32)
    bank = update(bank, f, y, 0.8, mask)
    ref_p, ref_s = ref_ema(ref_p, ref_s, f, y, 0.8, mask)
  np.testing.assert_allclose(bank.protos, ref_p, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(bank.seen, ref_s)


def test_ema_has_no_gradient_into_features(data):
  feats, labels = data
  bank = prototypes.init_bank(5, 6)
  g = jax.grad(lambda f: prototypes.ema_update(bank, f, labels, 0.9).protos.sum())(feats)
  np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_pra_matches_numpy(data, similarity):
  feats, labels = data
  protos = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
  got = prototypes.pra_loss(feats, labels, protos, 0.5, similarity)
  np.testing.assert_allclose(got, ref_pra(feats, labels, protos, 0.5, similarity == "cosine"),
                             rtol=1e-5)


def test_pra_unseen_prototypes_masked(data):
  feats, labels = data
  protos = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
  seen = np.array([True, True, False, False, True])
  got = prototypes.pra_loss(feats, labels, protos, 0.5, "dot", seen=jnp.asarray(seen))
  keep = seen[labels]
  sub = np.flatnonzero(seen)                     # softmax over seen classes only
  remap = {c: i for i, c in enumerate(sub)}
  want = ref_pra(feats[keep], np.array([remap[c] for c in labels[keep]]), protos[sub], 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_pra_masked_equals_subset(data):
  feats, labels = data
  protos = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
  mask = np.array([1, 0, 1, 1, 0, 1, 1, 0], np.float32)
  got = prototypes.pra_loss(feats, labels, protos, 0.5, "cosine", mask=mask)
  want = ref_pra(feats[mask > 0], labels[mask > 0], protos, 0.5, cosine=True)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_pra_gradient_only_into_features(data):
  feats, labels = data
  protos = jnp.asarray(np.random.default_rng(5).normal(size=(5, 6)), jnp.float32)
  gf, gp = jax.grad(lambda f, p: prototypes.pra_loss(f, labels, p, 0.5), argnums=(0, 1))(
      feats, protos)
  assert np.abs(gf).sum() > 0
  np.testing.assert_array_equal(gp, 0.0)
  check_grads(lambda f: prototypes.pra_loss(f, labels, protos, 0.5, "cosine"),
                            (feats,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
