"""The balancing baselines: each method's defining rule against a numpy reference written from
METHODS.md, then every method's compiled step on a tiny problem (M = 3 where the method is defined
for more than two modalities)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from iib_jax import methods
from iib_jax.methods import (agm, base, bmlmi, gblending, ggdm, greedy, mmpareto, mslr, ogm_ge,
                             pmr, udi)
from iib_jax.models import build_model
from iib_jax.state import TrainState
from iib_jax.train import make_eval_step, make_train_step
from tests.helpers import separable_batch

RNG = np.random.default_rng(0)


def softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def kl(p, q):
  return (p * (np.log(p) - np.log(q))).sum(-1)


def ce(logits, labels):
  p = softmax(logits)
  return -np.log(p[np.arange(len(labels)), labels])


# ------------------------------------------------------------------------------------------------
# Base helpers


def test_scale_grad_keeps_value_and_scales_gradient():
  x = jnp.array([1.0, -2.0, 3.0])
  np.testing.assert_allclose(base.scale_grad(x, 0.3), x)
  g = jax.grad(lambda x: (base.scale_grad(x, 0.3) ** 2).sum())(x)
  np.testing.assert_allclose(g, 0.3 * 2 * np.asarray(x), rtol=1e-6)


def test_multi_loss_grads_equal_separate_gradients():
  params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}

  def losses(p):
    return jnp.stack([(p["a"] ** 2).sum() * p["b"], jnp.sin(p["b"]) + p["a"][0]]), None

  values, grads, _ = base.multi_loss_grads(losses, params)
  for k in range(2):
    expected = jax.grad(lambda p: losses(p)[0][k])(params)
    for leaf, ref in zip(jax.tree.leaves(jax.tree.map(lambda g: g[k], grads)),
                         jax.tree.leaves(expected)):
      np.testing.assert_allclose(leaf, ref, rtol=1e-6)
  np.testing.assert_allclose(values, losses(params)[0])


def test_in_window_is_inclusive_and_open_ended():
  epochs = jnp.arange(6)
  np.testing.assert_array_equal(base.in_window(epochs, 1, 3), [0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(base.in_window(epochs, 2, -1), [0, 0, 1, 1, 1, 1])


# ------------------------------------------------------------------------------------------------
# MSLR (METHODS.md §6.2, AGM repository rule)


def ref_mslr(initial, accuracies, memory=5):
  """c_m(e+1) = c_m^0 · A_m(e)/mean(memory_m) when the memory holds `memory` values, else c^0."""
  history, out = [], []
  for acc in accuracies:
    if len(history) == memory:
      factors = np.asarray(initial) * np.asarray(acc) / np.mean(history, axis=0)
      history = history[1:]
    else:
      factors = np.asarray(initial, np.float64)
    history.append(np.asarray(acc, np.float64))
    out.append(factors)
  return out


def test_mslr_dynamic_factors_match_the_agm_repository_rule():
  accs = RNG.uniform(0.3, 0.9, size=(9, 3))
  state = mslr.initial_state((0.9, 1.0, 1.1), 5)
  update = jax.jit(mslr.end_of_epoch, static_argnums=2)
  for acc, ref in zip(accs, ref_mslr((0.9, 1.0, 1.1), accs)):
    state = update(state, acc, "dynamic")
    np.testing.assert_allclose(state.factors, ref, rtol=1e-5)
  keep = mslr.end_of_epoch(state, accs[0], "keep")
  np.testing.assert_allclose(keep.factors, [0.9, 1.0, 1.1], rtol=1e-6)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_mslr_scales_each_branch_and_its_fusion_block(fusion):
  mods, d, c = ("a", "b"), 4, 3
  branch = {"encoder": {"k": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((d, c))}}
  fus = ({"heads": {"kernel": jnp.ones((2, d, c)), "bias": jnp.ones((2, c))}} if fusion == "sum"
         else {"kernel": jnp.ones((2 * d, c)), "bias": jnp.ones((c,))})
  grads = mslr.scale_branches({"a": branch, "b": branch, "fusion": fus}, mods,
                              jnp.array([0.5, 2.0]), fusion)
  np.testing.assert_allclose(grads["a"]["encoder"]["k"], 0.5)
  np.testing.assert_allclose(grads["b"]["head"]["kernel"], 2.0)
  if fusion == "sum":
    np.testing.assert_allclose(grads["fusion"]["heads"]["kernel"][0], 0.5)
    np.testing.assert_allclose(grads["fusion"]["heads"]["bias"][1], 2.0)
  else:
    np.testing.assert_allclose(grads["fusion"]["kernel"][:d], 0.5)
    np.testing.assert_allclose(grads["fusion"]["kernel"][d:], 2.0)
    np.testing.assert_allclose(grads["fusion"]["bias"], 1.0)      # shared: base rate


# ------------------------------------------------------------------------------------------------
# G-Blending (METHODS.md §7.2)


def test_gblending_weights_follow_gain_over_squared_overfitting():
  t0, v0 = np.array([2.0, 2.2, 1.9]), np.array([2.1, 2.3, 2.0])
  t1, v1 = np.array([1.0, 1.8, 0.6]), np.array([1.6, 2.0, 1.5])
  g = v0 - v1
  o = (v1 - t1) - (v0 - t0)
  ref = (g / o ** 2) / (g / o ** 2).sum()
  np.testing.assert_allclose(gblending.blend_weights(t0, v0, t1, v1), ref, rtol=1e-5)
  # A branch whose validation loss rose gets no weight ("clip") or |ΔG| ("abs").
  v1_bad = v1.copy()
  v1_bad[1] = 2.5
  w = gblending.blend_weights(t0, v0, t1, v1_bad)
  assert w[1] == 0 and abs(w.sum() - 1) < 1e-6
  o_bad = (v1_bad - t1) - (v0 - t0)
  raw = np.abs(v0 - v1_bad) / o_bad ** 2
  np.testing.assert_allclose(gblending.blend_weights(t0, v0, t1, v1_bad, gain="abs"),
                             raw / raw.sum(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# OGM-GE (METHODS.md §8.2)


def ref_ogm(unimodal_logits, labels, alpha):
  s = np.array([softmax(l)[np.arange(len(labels)), labels].sum() for l in unimodal_logits])
  if len(s) == 2:
    ratio_v = s[1] / s[0]
    if ratio_v > 1:
      return np.array([1.0, 1 - np.tanh(alpha * ratio_v)]), s
    return np.array([1 - np.tanh(alpha / ratio_v), 1.0]), s
  ratio = s / s.min()
  return np.where(ratio > 1, 1 - np.tanh(alpha * ratio), 1.0), s


@pytest.mark.parametrize("num,shift", [(2, 0), (2, 1), (3, 2)])
def test_ogm_coefficients_match_official_rule(num, shift):
  labels = RNG.integers(0, 4, 10)
  logits = RNG.normal(size=(num, 10, 4))
  logits[shift % num, np.arange(10), labels] += 2.0       # this modality dominates
  ref_k, ref_s = ref_ogm(logits, labels, 0.8)
  s = ogm_ge.scores(jnp.asarray(logits), jnp.asarray(labels))
  k, _ = ogm_ge.coefficients(s, 0.8)
  np.testing.assert_allclose(s, ref_s, rtol=1e-5)
  np.testing.assert_allclose(k, ref_k, rtol=1e-5)
  assert k[shift % num] < 1


def test_ogm_modulates_encoder_kernels_and_adds_gradient_scaled_noise():
  g = {"a": {"encoder": {"conv": {"kernel": jnp.asarray(RNG.normal(0, 2.0, (3, 3, 40, 40)))},
                         "bn": {"scale": jnp.ones(40)}},
             "head": {"kernel": jnp.ones((4, 3))}},
       "b": {"encoder": {"conv": {"kernel": jnp.ones((3, 5, 5))}},
             "head": {"kernel": jnp.ones((4, 3))}},
       "fusion": {"kernel": jnp.ones((8, 3))}}
  k = jnp.array([0.25, 1.0])
  plain = ogm_ge.modulate(g, ("a", "b"), k, jnp.array(True), None)
  np.testing.assert_allclose(plain["a"]["encoder"]["conv"]["kernel"],
                             0.25 * g["a"]["encoder"]["conv"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(plain["a"]["encoder"]["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(plain["a"]["head"]["kernel"], 1.0)
  np.testing.assert_array_equal(plain["fusion"]["kernel"], 1.0)
  noisy = ogm_ge.modulate(g, ("a", "b"), k, jnp.array(True), jax.random.key(0))
  noise = noisy["a"]["encoder"]["conv"]["kernel"] - plain["a"]["encoder"]["conv"]["kernel"]
  ref_std = np.std(np.asarray(g["a"]["encoder"]["conv"]["kernel"]), ddof=1)
  assert abs(float(np.std(noise)) / ref_std - 1) < 0.05
  # A constant gradient has std 0: its noise has std 1e-8, also on the unmodulated modality.
  assert float(jnp.abs(noisy["b"]["encoder"]["conv"]["kernel"] - 1.0).max()) < 1e-6
  off = ogm_ge.modulate(g, ("a", "b"), k, jnp.array(False), jax.random.key(0))
  np.testing.assert_array_equal(off["a"]["encoder"]["conv"]["kernel"],
                                g["a"]["encoder"]["conv"]["kernel"])


# ------------------------------------------------------------------------------------------------
# Greedy (METHODS.md §9.3; the official callback's state machine)


class RefGreedy:
  """`Bias_Mitigation_Strong` for two modalities, transcribed."""

  def __init__(self, epsilon, window):
    self.eps, self.q = epsilon, window
    self.mb, self.mm = np.zeros(2), np.zeros(2)
    self.curation, self.caring, self.step = False, 0, 0

  def on_backward_end(self, main, bypass, unlock):
    if unlock:
      if not self.curation:
        self.mb += bypass
        self.mm += main
        d = np.log10(self.mb[0] / self.mm[0]) - np.log10(self.mb[1] / self.mm[1])
        if abs(d) > self.eps:
          self.curation, self.step = True, 0
          self.caring = 0 if d > 0 else 1
        else:
          self.curation = False
      else:
        self.step += 1
        if self.step == self.q:
          self.curation = False
    else:
      self.mb += bypass
      self.mm += main
      self.curation = False


def test_greedy_curation_state_machine_matches_the_official_callback():
  ref = RefGreedy(0.05, 3)
  state = greedy.initial_state(2, 3)
  step = jax.jit(greedy.next_curation, static_argnums=(4, 5))
  rng = np.random.default_rng(5)
  for t in range(40):
    main, bypass = rng.uniform(0.5, 1.5, 2), rng.uniform(0.5, 1.5, 2)
    unlock = t >= 4
    ref.on_backward_end(main, bypass, unlock)
    fields, _ = step(state, jnp.asarray(main, jnp.float32), jnp.asarray(bypass, jnp.float32),
                     jnp.asarray(unlock), 0.05, 3)
    state = state.replace(**fields)
    assert bool(state.curating) == ref.curation, t
    if ref.curation:
      assert int(state.caring) == ref.caring, t
    np.testing.assert_allclose(state.main_sum, ref.mm, rtol=1e-5)


def test_greedy_learning_speed_and_curated_gradient():
  params = {"w": jnp.array([3.0, 4.0])}
  np.testing.assert_allclose(greedy.learning_speed({"w": jnp.array([1.0, 0.0])}, params), 1 / 25)
  partial = jnp.asarray(RNG.normal(size=(3, 5, 4)), jnp.float32)
  labels = jnp.array([0, 1, 2, 3, 0])
  mean = jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32)
  grad = jax.grad(lambda p: greedy.curated_loss(p, p.sum(0), labels, None, jnp.array(True),
                                                jnp.array(1), mean))(partial)
  const = np.asarray(mean[0] + mean[2])
  ref_caring = jax.grad(lambda x: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      x + const, labels)))(partial[1])
  ref_other = jax.grad(lambda x: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      partial[1] + partial[2] + x, labels)))(partial[0])
  np.testing.assert_allclose(grad[1], ref_caring, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad[0], ref_other, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# PMR (METHODS.md §10.2–10.3)


def test_pmr_prototype_terms_match_numpy():
  feats = RNG.normal(size=(2, 6, 5)).astype(np.float32)
  protos = RNG.normal(size=(2, 3, 5)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0, 2])
  valid = np.ones((2, 3), bool)
  pce, score = pmr.prototype_terms(feats, protos, valid, labels)
  for m in range(2):
    logits = -np.linalg.norm(feats[m][:, None] - protos[m][None], axis=-1)
    np.testing.assert_allclose(pce[m], ce(logits, labels).mean(), rtol=1e-5)
    np.testing.assert_allclose(score[m], softmax(logits)[np.arange(6), labels].sum(), rtol=1e-5)
  # An invalid prototype leaves the softmax, and its class's examples do not count.
  valid[1, 2] = False
  pce, _ = pmr.prototype_terms(feats, protos, valid, labels)
  logits = -np.linalg.norm(feats[1][:, None, :] - protos[1][None, :2], axis=-1)
  keep = labels != 2
  np.testing.assert_allclose(pce[1], ce(logits[keep], labels[keep]).mean(), rtol=1e-5)


def test_pmr_coefficient_switch():
  np.testing.assert_allclose(pmr.pce_coefficients(jnp.array([3.0, 2.0]), 1.5), [0, 1.5])
  np.testing.assert_allclose(pmr.pce_coefficients(jnp.array([2.0, 3.0]), 1.5), [1.5, 0])
  np.testing.assert_allclose(pmr.pce_coefficients(jnp.array([2.0, 2.0]), 1.5), [0, 0])
  np.testing.assert_allclose(pmr.pce_coefficients(jnp.array([2.0, 3.0, 1.0]), 1.0), [1, 0, 1])


def test_pmr_prototype_momentum_starts_after_the_plain_passes():
  state = pmr.initial_state(1, 3, 2)
  feats = [RNG.normal(size=(1, 8, 2)).astype(np.float32) for _ in range(3)]
  labels = [np.array([0, 0, 1, 1, 0, 1, 0, 1]), np.array([0, 1, 2, 0, 1, 2, 0, 1]),
            np.array([0, 0, 0, 2, 2, 2, 0, 2])]
  ref = np.zeros((3, 2))
  for i, (f, y) in enumerate(zip(feats, labels)):
    sums, counts = pmr.prototype_sums(f, y, 3)
    state = pmr.set_prototypes(state, sums, counts, 0.2, plain_passes=2)
    for c in range(3):
      if (y == c).any():
        mean = f[0][y == c].mean(0)
        ref[c] = 0.8 * mean + 0.2 * ref[c] if i >= 2 else mean
  np.testing.assert_allclose(state.protos[0], ref, rtol=1e-5)   # class 1 absent at pass 3: kept
  assert bool(state.valid.all()) and int(state.passes) == 3


# ------------------------------------------------------------------------------------------------
# AGM (METHODS.md §11.2)


def test_agm_shapley_matches_official_and_balancemm_formulas():
  f = {s: jnp.asarray(RNG.normal(size=(4, 3))) for s in agm.subsets(2)}
  m = agm.shapley(f, 2)
  full, no_v, no_a = f[(0, 1)], f[(0,)], f[(1,)]
  np.testing.assert_allclose(m[0], 0.5 * (full - no_a + no_v), rtol=1e-6)
  np.testing.assert_allclose(m[1], 0.5 * (full - no_v + no_a), rtol=1e-6)
  f = {s: jnp.asarray(RNG.normal(size=(4, 3))) for s in agm.subsets(3)}
  m = agm.shapley(f, 3)
  avt, av, at, vt = f[(0, 1, 2)], f[(0, 1)], f[(0, 2)], f[(1, 2)]
  a, v, t = f[(0,)], f[(1,)], f[(2,)]
  np.testing.assert_allclose(m[0], avt / 3 - vt / 3 + (av - v + at - t) / 6 + a / 3, rtol=1e-5)
  np.testing.assert_allclose(m[2], avt / 3 - av / 3 + (vt - v + at - a) / 6 + t / 3, rtol=1e-5)
  np.testing.assert_allclose(m.sum(0), avt, rtol=1e-5, atol=1e-6)


def test_agm_coefficients_follow_the_official_direction():
  s, run = np.array([0.7, 1.3]), np.array([0.9, 1.0])
  r_a, r_v = np.exp(s[1] - s[0]), np.exp(s[0] - s[1])
  rh_a, rh_v = np.exp(run[1] - run[0]), np.exp(run[0] - run[1])
  ref = np.exp(1.5 * np.minimum([rh_a - r_a, rh_v - r_v], 10))
  np.testing.assert_allclose(agm.coefficients(jnp.asarray(s), jnp.asarray(run), 1.5, 10.0), ref,
                             rtol=1e-5)
  s3 = np.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(agm.ratios(jnp.asarray(s3)), np.exp(1.5 * (s3.mean() - s3)), rtol=1e-5)
  out = agm.running_mean(jnp.asarray(run), jnp.asarray(s), 4)
  np.testing.assert_allclose(out, run * 3 / 4 + s / 4, rtol=1e-6)
  logits = RNG.normal(size=(2, 5, 3))
  labels = np.array([0, 1, 2, 0, 1])
  ref_s = [np.mean(-np.log(np.maximum(softmax(l)[np.arange(5), labels], 1e-8))) for l in logits]
  np.testing.assert_allclose(agm.scores(jnp.asarray(logits), jnp.asarray(labels)), ref_s, rtol=1e-5)


def test_agm_clips_the_global_norm_only_when_a_fusion_entry_leaves_the_band():
  small = {"fusion": {"kernel": jnp.full((2, 2), 0.5)}, "a": {"w": jnp.full((10,), 3.0)}}
  out, hit = agm.clip_if_fusion_exceeds(small, 1.0, 1.0)
  assert not bool(hit) and float(out["a"]["w"][0]) == 3.0
  big = {"fusion": {"kernel": jnp.full((2, 2), 1.5)}, "a": {"w": jnp.full((10,), 3.0)}}
  out, hit = agm.clip_if_fusion_exceeds(big, 1.0, 1.0)
  assert bool(hit)
  np.testing.assert_allclose(float(optax.tree_utils.tree_norm(out)), 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# MMPareto (METHODS.md §12.2)


def ref_mmpareto(gf, gu, gamma):
  """Per-encoder rule on a single tensor (per-tensor norms = whole-vector norms here)."""
  a, b, d = gf @ gf, gf @ gu, gu @ gu
  cos = b / np.sqrt(a * d)
  if cos > 0:
    kf = ku = 0.5
  else:
    c = 0.999 if b >= a else 0.001 if b >= d else (d - b) / (a + d - 2 * b)
    kf, ku = c, 1 - c
  n = 2 * (kf * gf + ku * gu)
  t = gf + gu
  scale = np.linalg.norm(t) / np.linalg.norm(n) if np.linalg.norm(t) > np.linalg.norm(n) else 1
  return gamma * scale * n


@pytest.mark.parametrize("case", ["agree", "conflict"])
def test_mmpareto_combination_matches_numpy(case):
  gf = RNG.normal(size=6)
  if case == "agree":
    gu = gf + 0.3 * RNG.normal(size=6)
  else:
    gu = -0.5 * gf + RNG.normal(size=6)
    gu = gu - max(0.0, gu @ gf / (gf @ gf) + 0.2) * gf        # cos < 0: the min-norm point
  out, cos, _ = mmpareto.combine({"w": jnp.asarray(gf)}, {"w": jnp.asarray(gu)},
                                 {"w": jnp.asarray(gf + gu)}, 1.5)
  assert (float(cos) > 0) == (case == "agree")
  np.testing.assert_allclose(out["w"], ref_mmpareto(gf, gu, 1.5), rtol=1e-4, atol=1e-6)


def test_mmpareto_min_norm_branches():
  np.testing.assert_allclose(mmpareto.min_norm_coefficient(1.0, 1.5, 4.0), 0.999)
  np.testing.assert_allclose(mmpareto.min_norm_coefficient(4.0, 1.5, 1.0), 0.001)
  np.testing.assert_allclose(mmpareto.min_norm_coefficient(2.0, -1.0, 3.0), 4.0 / 7.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# GGDM (METHODS.md §13.2)


def test_ggdm_alignment_and_beliefs_match_numpy():
  logits = RNG.normal(size=(2, 5, 4))
  p = softmax(logits)
  r = 0.5 * (p[0] + p[1])
  np.testing.assert_allclose(ggdm.alignment_loss(jnp.asarray(logits)),
                             np.mean(0.5 * kl(r, p[0]) + 0.5 * kl(r, p[1])), rtol=1e-5)
  np.testing.assert_allclose(ggdm.alignment_loss(jnp.asarray(logits), kind="js"),
                             np.mean(0.5 * kl(p[0], r) + 0.5 * kl(p[1], r)), rtol=1e-5)
  e = np.log1p(np.exp(logits))
  b = 10 * (e / (e + 1).sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(ggdm.beliefs(jnp.asarray(logits)), np.where(b < 0.1, 0.5, b),
                             rtol=1e-5)


def test_ggdm_volume_and_ratios_match_numpy():
  x1, x2, x3 = RNG.normal(size=7), RNG.normal(size=7), RNG.normal(size=4)
  g = np.array([[x1 @ x1, x1 @ x2, x1.sum() * x3.sum()],
                [x1 @ x2, x2 @ x2, x2.sum() * x3.sum()],
                [x1.sum() * x3.sum(), x2.sum() * x3.sum(), x3 @ x3]])
  tree = lambda x: {"a": jnp.asarray(x[:3]), "b": jnp.asarray(x[3:])}
  np.testing.assert_allclose(ggdm.volume(tree(x1), tree(x2), {"c": jnp.asarray(x3)}),
                             np.sqrt(abs(np.linalg.det(g))), rtol=1e-4)
  q = 2.0 / 3.0
  np.testing.assert_allclose(ggdm.ratios(jnp.float32(2.0), jnp.float32(1.0)),
                             [1 - np.tanh(q), 1 - np.tanh(1 - q)], rtol=1e-6)
  np.testing.assert_allclose(ggdm.ratios(jnp.float32(0.2), jnp.float32(1.0)),
                             [1.0, 1 - np.tanh(1 - 0.2 / 1.2)], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# UDI (METHODS.md §3.3, reconstruction)


def test_udi_consistency_and_redundancy_match_numpy():
  la, lm = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
  p, q = softmax(la), softmax(lm)
  r = 0.5 * (p + q)
  np.testing.assert_allclose(udi.js_divergence(jnp.asarray(la), jnp.asarray(lm)),
                             0.5 * kl(p, r) + 0.5 * kl(q, r), rtol=1e-5)
  z, a = RNG.normal(size=(16, 5)), RNG.normal(size=(16, 3))
  zs = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  as_ = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
  corr = zs.T @ as_ / 16
  np.testing.assert_allclose(udi.redundancy_loss(jnp.asarray(z), jnp.asarray(a)),
                             (corr ** 2).sum() / 15, rtol=1e-4)


def test_udi_anchor_choice_breaks_near_ties_by_entropy():
  assert udi.choose_anchor([0.70, 0.60], [0.5, 0.2]) == 0
  assert udi.choose_anchor([0.700, 0.697], [0.5, 0.2]) == 1
  assert udi.choose_anchor([0.5, 0.8, 0.797], [0.1, 0.6, 0.7]) == 1


def test_udi_dynamic_weights_are_an_ema_of_gradient_alignment():
  g_ce, g_js, g_comp = np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([-1.0, 0.0])
  per_task = {"a": {"w": jnp.asarray(np.stack([g_ce, g_js, g_comp]))}}
  cons, comp, cos_js, cos_comp = udi.dynamic_weights(per_task, ("a",), jnp.array([1.0]),
                                                     jnp.array([0.5]), 0.9)
  np.testing.assert_allclose(cos_js, [1 / np.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(cons, [0.9 + 0.1 * (1 + 1 / np.sqrt(2)) / 2], rtol=1e-6)
  np.testing.assert_allclose(comp, [0.45], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# BML-MI (METHODS.md §4.3, reconstruction)


def test_bmlmi_calibrated_weights_match_numpy():
  f1, mi, h = np.array([0.8, 0.5, 0.6]), np.array([2.0, 0.3, 1.5]), 1.2
  hat = np.clip(mi / h, 0, 1)
  hat[0] = 0
  raw = np.exp((1 - f1) / 0.5) * (1 - hat)
  np.testing.assert_allclose(bmlmi.calibrated_weights(f1, mi, h, teacher=0),
                             3 * raw / raw.sum(), rtol=1e-5)


def test_bmlmi_macro_f1_and_label_entropy():
  y = np.array([0, 0, 1, 1, 2, 2])
  pred = np.array([0, 1, 1, 1, 2, 0])
  f1 = [2 * 1 / (2 + 1 + 1), 2 * 2 / (4 + 1 + 0), 2 * 1 / (2 + 0 + 1)]
  np.testing.assert_allclose(bmlmi.macro_f1(y, pred, 4), np.mean(f1), rtol=1e-6)
  np.testing.assert_allclose(bmlmi.label_entropy(y, 4), np.log(3), rtol=1e-6)
  assert bmlmi.choose_teacher([0.4, 0.7, 0.5]) == 1


def test_bmlmi_distillation_loss_matches_numpy():
  ls, lt = RNG.normal(size=(2, 5, 3)), RNG.normal(size=(5, 3))
  y = np.array([0, 1, 2, 1, 0])
  got = bmlmi.distillation_loss(jnp.asarray(ls), jnp.asarray(lt), jnp.asarray(y), 0.5, 4.0)
  for m in range(2):
    ref = 0.5 * ce(ls[m], y) + 0.5 * 16 * kl(softmax(lt / 4), softmax(ls[m] / 4))
    np.testing.assert_allclose(got[m], ref.mean(), rtol=1e-5)


def test_bmlmi_mutual_information_estimates_order_dependent_pairs_first():
  z = RNG.normal(size=(512, 4)).astype(np.float32)
  dependent = z + 0.3 * RNG.normal(size=z.shape).astype(np.float32)
  independent = RNG.normal(size=z.shape).astype(np.float32)
  high = bmlmi.estimate_infonce(z, dependent, batch_size=128, epochs=20, learning_rate=1e-2)
  low = bmlmi.estimate_infonce(z, independent, batch_size=128, epochs=20, learning_rate=1e-2)
  assert high > 1.0 and low < 0.3, (high, low)
  scores = RNG.normal(size=(6, 6))
  ref = np.log(6) + np.mean(np.diag(scores) - np.log(np.exp(scores).sum(1)))
  np.testing.assert_allclose(bmlmi.infonce_bound(jnp.asarray(scores)), ref, rtol=1e-5)
  labels = RNG.integers(0, 3, 300)
  informative = np.eye(3)[labels] * 3 + RNG.normal(size=(300, 3))
  assert bmlmi.estimate_label_mi(informative, labels, 3) > 0.5 * bmlmi.label_entropy(labels, 3)
  assert bmlmi.estimate_label_mi(RNG.normal(size=(300, 3)), labels, 3) < 0.1
  assert bmlmi.should_distill(0.8, 0.5) and not bmlmi.should_distill(0.2, 0.5)


# ------------------------------------------------------------------------------------------------
# Every method's compiled step on a tiny problem


MODALITIES = ("audio", "aux", "extra")       # three MLP branches: the cheapest to compile
STEPS_PER_EPOCH = 2
BATCH = 8
_PARAMS = {}


def vectors(batch, modalities):
  """The separable batch with each modality's [B, 40, 16] input flattened to a vector."""
  return {k: v.reshape(len(v), -1) if k in modalities else v for k, v in batch.items()}


class Setup:
  """A method's model and compiled step; `fresh()` is a new state from cached initial params."""

  def __init__(self, name, options=None, modalities=MODALITIES, frozen=()):
    self.modalities = modalities
    spec = methods.MethodSpec(modalities, 3, 16, steps_per_epoch=STEPS_PER_EPOCH, total_epochs=4)
    self.method = methods.get_method(name, options or {}, spec)
    self.model = build_model(modalities, {m: "mlp" for m in modalities}, 3, feature_dim=16,
                             encoder_size="tiny", **self.method.model)
    # No weight decay: a parameter that does not move had a zero gradient.
    tx = optax.sgd(1e-2, momentum=0.9)
    self.tx = base.freeze_branches(tx, frozen) if frozen else tx
    self.train_step = make_train_step(self.model, self.tx, self.method)

  def fresh(self):
    key = (self.model.fusion, self.modalities)
    if key not in _PARAMS:
      example = vectors(separable_batch(np.random.default_rng(0), 2, modalities=self.modalities),
                        self.modalities)
      example = {m: example[m] for m in self.modalities}
      _PARAMS[key] = jax.jit(lambda r, b: self.model.init({"params": r}, b, train=False))(
          jax.random.key(0), example)
    variables = jax.tree.map(jnp.array, _PARAMS[key])     # copies: the step donates its input
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=self.tx.init(variables["params"]),
                      method=self.method.init_state(), rng=jax.random.key_data(jax.random.key(1)))

  def batches(self, n, seed=3):
    rng = np.random.default_rng(seed)
    return [vectors(separable_batch(rng, BATCH, modalities=self.modalities), self.modalities)
            for _ in range(n)]

  def run(self, state, n, seed=3):
    history = []
    for batch in self.batches(n, seed):
      state, metrics = self.train_step(state, batch)
      history.append(jax.device_get(metrics))
    return state, history


CASES = {
    "mslr": ({"initial_factors": (0.9, 1.0, 1.1)}, MODALITIES),
    "ogm_ge": ({"modulation_end": -1}, MODALITIES),
    "greedy": ({"start_epoch": 1, "epsilon": 0.0, "window": 2}, MODALITIES),
    "pmr": ({}, MODALITIES),
    "agm": ({}, MODALITIES),
    "mmpareto": ({}, MODALITIES),
    "ggdm": ({}, MODALITIES[:2]),
    "gblending": ({}, MODALITIES),
    "udi": ({}, MODALITIES),
    "udi_fusion": ({"stage": "fusion"}, MODALITIES),
    "bmlmi": ({}, MODALITIES),
    "bmlmi_distill": ({"stage": "distill"}, MODALITIES),
}
# The same with M = 2 (GGDM above is defined for two modalities only).
CASES.update({f"{name}_m2": ({**options, "initial_factors": (0.9, 1.1)} if name == "mslr"
                             else options, MODALITIES[:2])
              for name, (options, modalities) in list(CASES.items())
              if len(modalities) == 3 and "_" not in name.replace("ogm_ge", "ogm")})
FROZEN = {"udi": ("audio", "fusion"), "udi_m2": ("audio", "fusion"), "udi_fusion": MODALITIES,
          "bmlmi_distill": ("audio", "fusion")}
# Phase parameters the runner sets before a stage (METHODS.md §4.3: teacher and MI test).
PREPARE = {"bmlmi_distill": lambda s: bmlmi.with_teacher(s, 0, [0.0, 1.0, 1.0])}


@pytest.fixture(scope="module")
def setups():
  cache = {}

  def get(case):
    if case not in cache:
      options, modalities = CASES[case]
      method = case.removesuffix("_m2").removesuffix("_fusion").removesuffix("_distill")
      cache[case] = Setup(method, options, modalities,
                          FROZEN.get(case, ()))
    return cache[case]

  return get


def _changed(a, b):
  return any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_trains_without_recompiling(setups, case):
  setup = setups(case)
  state = setup.fresh()
  if case in PREPARE:
    state = state.replace(method=PREPARE[case](state.method))
  before = jax.device_get(state.params)
  state, history = setup.run(state, 5)   # crosses the epoch boundary at step 2
  assert setup.train_step._cache_size() == 1
  for metrics in history:
    for key, value in metrics.items():
      assert np.all(np.isfinite(value)), (case, key, value)
  assert int(state.step) == 5
  assert _changed(before, state.params)


def test_ggdm_and_greedy_reject_what_they_cannot_do():
  spec = methods.MethodSpec(MODALITIES, 3, 16, steps_per_epoch=2, total_epochs=4)
  with pytest.raises(ValueError, match="exactly two modalities"):
    methods.get_method("ggdm", {}, spec)
  with pytest.raises(ValueError, match="initial_factors"):
    methods.get_method("mslr", {}, spec)


def test_greedy_enters_curation_after_its_start_epoch(setups):
  setup = setups("greedy")
  state, history = setup.run(setup.fresh(), 5)
  curating = [float(m["greedy_curating"]) for m in history]
  # Epoch 0 (steps 0, 1) is locked; with ε = 0 the first unlocked step (2) starts a curation of
  # Q = 2 steps, which the state carries into steps 3 and 4.
  assert curating == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_gblending_probe_trains_only_its_branch(setups):
  setup = setups("gblending")
  state = setup.fresh()
  state = state.replace(method=gblending.with_weights(state.method, gblending.probe_weights(1, 3)))
  before = jax.device_get(state.params)
  state, _ = setup.run(state, 2)
  assert _changed(before["aux"], state.params["aux"])
  for key in ("audio", "extra", "fusion"):
    assert not _changed(before[key], state.params[key]), key
  loss_step = gblending.make_branch_loss_step(setup.model, setup.method)
  values = gblending.branch_losses(loss_step, state, setup.batches(2, seed=9))
  assert values.shape == (4,) and np.all(np.isfinite(values))
  before = jax.device_get(state.params)
  weights = gblending.estimate(setup.train_step, loss_step, state,
                               train_batches=lambda e: setup.batches(2, seed=10 + e),
                               holdout_batches=lambda: setup.batches(1, seed=20), epochs=1)
  assert weights.shape == (4,) and abs(weights.sum() - 1) < 1e-5 and (weights >= 0).all()
  assert not _changed(before, state.params)              # the probes ran on copies


def test_pmr_prototype_pass_enables_the_prototype_loss(setups):
  setup = setups("pmr")
  state = setup.fresh()
  step = pmr.make_prototype_step(setup.model, setup.method)
  state = pmr.prototype_pass(step, state, setup.batches(3, seed=7), momentum=0.2)
  assert bool(state.method.valid.all()) and int(state.method.passes) == 1
  _, history = setup.run(state, 1)
  assert float(np.sum(history[0]["pmr_beta"])) > 0
  assert np.all(history[0]["loss_pce"] > 0)


def test_udi_follower_stage_leaves_the_anchor_untouched(setups):
  setup = setups("udi")
  state = setup.fresh()
  before = jax.device_get((state.params, state.batch_stats))
  state, history = setup.run(state, 3)
  assert not _changed(before[0]["audio"], state.params["audio"])
  assert not _changed(before[1]["audio"], state.batch_stats["audio"])
  assert _changed(before[0]["aux"], state.params["aux"])
  assert history[-1]["udi_consistency_weight"].shape == (3,)


def test_bmlmi_distillation_trains_only_distilling_students(setups):
  setup = setups("bmlmi_distill")
  state = setup.fresh()
  state = state.replace(method=bmlmi.with_teacher(state.method, 0, [1.0, 1.0, 0.0]))
  before = jax.device_get((state.params, state.batch_stats))
  state, _ = setup.run(state, 2)
  assert _changed(before[0]["aux"], state.params["aux"])
  for m in ("audio", "extra"):
    assert not _changed(before[0][m], state.params[m]), m
    assert not _changed(before[1][m], state.batch_stats[m]), m


def test_agm_shapley_eval_step_runs(setups):
  setup = setups("agm")
  eval_step = make_eval_step(setup.model, setup.method)          # AGM's own `evaluate`
  out = eval_step(setup.fresh(), setup.batches(1)[0])
  assert out["unimodal_pred"].shape == (3, BATCH)
