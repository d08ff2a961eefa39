"""The whole IIBalance objective (Eqs. 3–13) against a numpy reference written from the paper."""
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import methods, prototypes

M, B, C, D = 3, 8, 4, 6


def ref_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_ce(logits, labels):
  return -ref_log_softmax(logits)[np.arange(len(labels)), labels]


def ref_iibalance_loss(feats, logits, fused, weights, labels, protos, seen, budgets, epoch, opts):
  beta = np.exp(np.asarray(budgets) / opts["tau"])
  beta = beta / beta.sum()
  anchor = int(np.argmax(beta))
  lam = np.maximum(beta[anchor] - beta, 0)
  stage_one = sum(ref_ce(logits[m], labels).mean() for m in range(M))
  for m in range(M):
    if m == anchor:
      continue
    z, p = feats[m], protos
    if opts["similarity"] == "cosine":
      z = z / np.linalg.norm(z, axis=1, keepdims=True)
      p = p / np.linalg.norm(p, axis=1, keepdims=True)
    s = z @ p.T / opts["tau_p"]
    s = np.where(seen[None], s, -np.inf)
    keep = seen[labels]
    nll = -ref_log_softmax(s)[np.arange(B), labels]
    stage_one += lam[m] * nll[keep].mean()
  ce_m = np.stack([ref_ce(logits[m], labels) for m in range(M)], 1)
  stage_two = ref_ce(fused, labels).mean() + opts["gamma"] * (weights * ce_m).sum(1).mean()
  w = opts["lambda_start"] * (1 - epoch / opts["epochs"])
  return w * stage_one + (1 - w) * stage_two, anchor


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_iibalance_loss_matches_numpy(similarity):
  rng = np.random.default_rng(0)
  budgets = (0.45, 0.62, 0.50)
  spec = methods.MethodSpec(("a", "b", "c"), C, D, steps_per_epoch=10, total_epochs=20,
                            budgets=budgets)
  opts = {"tau": 0.07, "tau_p": 0.5, "gamma": 0.3, "lambda_start": 0.8, "rho": 0.9,
          "similarity": similarity, "epochs": 20}
  method = methods.get_method("iibalance", {k: v for k, v in opts.items() if k != "epochs"}, spec)
  state = method.init_state()
  protos = rng.normal(size=(C, D)).astype(np.float32)
  seen = np.array([True, True, False, True])
  state = state.replace(bank=prototypes.PrototypeBank(jnp.asarray(protos), jnp.asarray(seen)))
  feats = rng.normal(size=(M, B, D)).astype(np.float32)
  logits = rng.normal(size=(M, B, C)).astype(np.float32)
  fused = rng.normal(size=(B, C)).astype(np.float32)
  weights = rng.dirichlet(np.ones(M), size=B).astype(np.float32)
  labels = rng.integers(0, C, B)
  outputs = {"features": feats, "logits": logits, "fused_logits": fused, "weights": weights}
  batch = {"label": jnp.asarray(labels), "mask": jnp.ones(B)}
  step = jnp.int32(10 * 7 + 3)                                  # epoch 7
  loss, aux = method.loss(outputs, batch, state, step)
  want, anchor = ref_iibalance_loss(feats, logits, fused, weights, labels, protos, seen, budgets,
                                    7, opts)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert int(state.anchor) == anchor == 1
  # The bank update in aux is Eq. 3 on the anchor's features.
  new = aux["bank"]
  for c in range(C):
    sel = labels == c
    if sel.any():
      mean = feats[anchor][sel].mean(0)
      expect = 0.9 * protos[c] + 0.1 * mean if seen[c] else mean
      np.testing.assert_allclose(new.protos[c], expect, rtol=1e-5, atol=1e-6)


def test_lambda_schedule_per_step():
  spec = methods.MethodSpec(("a", "b"), C, D, steps_per_epoch=4, total_epochs=2, budgets=(0.5, 0.4))
  for schedule, want in (("epoch", 1.0 * (1 - 0 / 2)), ("step", 1.0 * (1 - (3 / 4) / 2))):
    method = methods.get_method("iibalance", {"lambda_schedule": schedule}, spec)
    rng = np.random.default_rng(1)
    outputs = {"features": rng.normal(size=(2, B, D)), "logits": rng.normal(size=(2, B, C)),
               "fused_logits": rng.normal(size=(B, C)), "weights": np.full((B, 2), 0.5)}
    batch = {"label": jnp.asarray(rng.integers(0, C, B))}
    _, aux = method.loss(outputs, batch, method.init_state(), jnp.int32(3))
    assert float(aux["metrics"]["stage_weight"]) == pytest.approx(want)


def test_uniform_prior_ablation_keeps_anchor_and_strength():
  spec = methods.MethodSpec(("a", "b"), C, D, 1, 1, budgets=(0.6, 0.45))
  state = methods.get_method("iibalance", {"prior": "uniform"}, spec).init_state()
  np.testing.assert_allclose(state.beta, [0.5, 0.5])
  np.testing.assert_allclose(state.strength, [0.0, 0.78999], atol=1e-5)
  assert int(state.anchor) == 0
  state = methods.get_method("iibalance", {"stage_one": False}, spec).init_state()
  np.testing.assert_array_equal(state.strength, 0.0)


def test_iibalance_without_budgets_is_a_clear_error():
  spec = methods.MethodSpec(("a", "b"), C, D, 1, 1)
  with pytest.raises(ValueError, match="budgets"):
    methods.get_method("iibalance", {}, spec).init_state()
  with pytest.raises(ValueError, match="unknown method 'nope'"):
    methods.get_method("nope", {}, spec)


# ---------------------------------------------------------------------------------------------
# Train-time damage: `present` [B, M] (0 = the modality's input was zeroed).


def ref_damaged_loss(feats, logits, fused, weights, labels, protos, seen, beta, strength, anchor,
                     kept, opts, epoch, epochs):
  """The objective with modality m's own terms over the examples where it was kept (kept[m]):
  its CE mean and PRA mean over those, Eq. 11's auxiliary term without the removed (m, i), the
  fused CE over every example; the anchor's EMA over its kept examples."""
  stage_one = 0.0
  for m in range(M):
    k = kept[m].astype(bool)
    stage_one += ref_ce(logits[m][k], labels[k]).mean()
    if m != anchor:
      z, p = feats[m], protos
      if opts["similarity"] == "cosine":
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
      s = np.where(seen[None], z @ p.T / opts["tau_p"], -np.inf)
      nll = -ref_log_softmax(s)[np.arange(B), labels]
      counted = k & seen[labels]
      stage_one += strength[m] * nll[counted].mean()
  ce_m = np.stack([ref_ce(logits[m], labels) for m in range(M)], 1)            # [B, M]
  aux = (weights * ce_m * kept.T).sum(1).mean()
  stage_two = ref_ce(fused, labels).mean() + opts["gamma"] * aux
  w = opts["lambda_start"] * (1 - epoch / epochs)
  loss = w * stage_one + (1 - w) * stage_two
  bank = protos.copy()
  k = kept[anchor].astype(bool)
  for c in range(C):
    sel = k & (labels == c)
    if sel.any():
      mean = feats[anchor][sel].mean(0)
      bank[c] = opts["rho"] * protos[c] + (1 - opts["rho"]) * mean if seen[c] else mean
  return loss, bank


def test_removed_modalities_leave_their_own_terms_and_the_anchor_prototypes():
  rng = np.random.default_rng(5)
  budgets = (0.45, 0.62, 0.50)                                # anchor: modality 1
  spec = methods.MethodSpec(("a", "b", "c"), C, D, steps_per_epoch=10, total_epochs=20,
                            budgets=budgets)
  opts = {"tau": 0.07, "tau_p": 0.5, "gamma": 0.3, "lambda_start": 0.8, "rho": 0.9,
          "similarity": "cosine"}
  method = methods.get_method("iibalance", opts, spec)
  state = method.init_state()
  protos = rng.normal(size=(C, D)).astype(np.float32)
  seen = np.array([True, True, False, True])
  state = state.replace(bank=prototypes.PrototypeBank(jnp.asarray(protos), jnp.asarray(seen)))
  feats = rng.normal(size=(M, B, D)).astype(np.float32)
  logits = rng.normal(size=(M, B, C)).astype(np.float32)
  fused = rng.normal(size=(B, C)).astype(np.float32)
  weights = rng.dirichlet(np.ones(M), size=B).astype(np.float32)
  labels = np.array([0, 1, 3, 0, 1, 3, 0, 2])
  present = np.ones((B, M), np.float32)
  present[[0, 2, 5], 1] = 0.0                                 # the anchor removed thrice
  present[[1, 6], 0] = 0.0
  present[7, 2] = 0.0
  outputs = {"features": feats, "logits": logits, "fused_logits": fused, "weights": weights}
  batch = {"label": jnp.asarray(labels), "present": jnp.asarray(present)}   # a training batch
  loss, aux = method.loss(outputs, batch, state, jnp.int32(10 * 7 + 3))
  want, bank = ref_damaged_loss(feats, logits, fused, weights, labels, protos, seen,
                                np.asarray(state.beta), np.asarray(state.strength), 1,
                                present.T, {**opts}, 7, 20)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(aux["bank"].protos, bank, rtol=1e-5, atol=1e-6)
  # Class 3's anchor examples (2 and 5) were both removed: its prototype stays as it was.
  np.testing.assert_array_equal(aux["bank"].protos[3], protos[3])
  # The unimodal CE of each modality is the mean over its kept examples only.
  ce = np.asarray(aux["metrics"]["ce_unimodal"])
  for m in range(M):
    k = present[:, m] > 0
    np.testing.assert_allclose(ce[m], ref_ce(logits[m][k], labels[k]).mean(), rtol=1e-5)
  # With padding too (an evaluation-style mask), an example counts where mask × present is 1.
  mask = np.ones(B, np.float32)
  mask[3] = 0.0
  masked = methods.base.unimodal_ce(jnp.asarray(logits), {"label": jnp.asarray(labels),
                                                          "mask": jnp.asarray(mask),
                                                          "present": jnp.asarray(present)})
  for m in range(M):
    k = (present[:, m] > 0) & (mask > 0)
    np.testing.assert_allclose(masked[m], ref_ce(logits[m][k], labels[k]).mean(), rtol=1e-5)


def test_a_batch_without_present_is_computed_as_before():
  # No `present`: the per-modality weights are the batch's mask itself (the same code path).
  batch = {"label": jnp.zeros(4, jnp.int32), "mask": jnp.array([1.0, 1.0, 0.0, 1.0])}
  assert methods.base.modality_mask(batch) is batch["mask"]
  assert methods.base.modality_mask({"label": batch["label"]}) is None
  kept = methods.base.modality_mask({**batch, "present": jnp.array([[1.0, 0.0]] * 4)})
  np.testing.assert_array_equal(kept, [[1, 1, 0, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(methods.base.modality_row(kept, jnp.int32(0)), [1, 1, 0, 1])
