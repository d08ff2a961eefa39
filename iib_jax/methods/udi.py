"""UDI: unidirectional dynamic interaction (Wang et al., arXiv 2509.02281) — a reconstruction.

METHODS.md §3. Only the abstract and reviews are available; everything beyond "train each modality
alone, freeze the best (anchor), train the others under its guidance with a JS consistency loss
and an MI-derived complementary loss whose weights adapt to gradient alignment" is a guess, listed
in docs/FIDELITY.md (Baselines). Results of this reconstruction are not a reproduction.

Stages (host level, `train`):
  A  every modality alone (the runner's unimodal phase, shared with IIBalance's budgets);
     `choose_anchor` from validation accuracy and mean predictive entropy.
  B  `stage="follower"`: the anchor runs in inference mode and receives no gradient; every
     follower m ≠ a minimises
       CE(f_m(z_m), y) + w_cons,m JS(p_a ‖ p_m) + w_comp,m ‖corr(BN(z_m), BN(sg z_a))‖_F² / d²
     with w_cons,m ← ρ w_cons,m + (1 − ρ)(1 + cos(∇_{θ_m} JS, ∇_{θ_m} CE))/2 and likewise w_comp,m
     (stop-gradient, this step's EMA value used for this step's gradient). The three losses'
     gradients come from one `vjp`, vmapped over three cotangents.
  C  `stage="fusion"`: encoders frozen (inference mode); only the fused head Linear([z_1; …; z_M])
     is trained with CE. Option `prediction="mean_logits"` predicts with the mean unimodal logits.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  stage: str = "follower"             # "follower" (stage B) or "fusion" (stage C)
  supervised: bool = True             # keep the follower's CE (a follower without labels collapses)
  dynamic: bool = True                # gradient-alignment weights; False: fixed weights below
  consistency_weight: float = 1.0     # w_cons when fixed, and its initial EMA value
  complementary_weight: float = 1.0   # w_comp when fixed, and its initial EMA value
  weight_momentum: float = 0.9        # EMA momentum of the dynamic weights
  tie_tolerance: float = 0.005        # anchor choice: accuracies this close count as tied
  prediction: str = "head"            # "head" (stage-C fused head) or "mean_logits"
  follower_init: str = "unimodal"     # followers start from stage A ("unimodal") or "random"
  fusion_epochs: int = 5              # epochs of stage C (not published; guess)

  def validate(self, modalities):
    base.one_of("stage", self.stage, ("follower", "fusion"))
    base.one_of("prediction", self.prediction, ("head", "mean_logits"))
    base.one_of("follower_init", self.follower_init, ("unimodal", "random"))
    base.require(self.fusion_epochs >= 0, "fusion_epochs", self.fusion_epochs, "an integer ≥ 0")
    base.require_modalities("udi", modalities)


class UDIState(struct.PyTreeNode):
  """UDI's state.

  Attributes:
    anchor: int32 scalar, the frozen anchor modality (set by the runner after stage A).
    consistency_weight: [M] w_cons per modality (the anchor's entry is unused).
    complementary_weight: [M] w_comp per modality.
  """
  anchor: jax.Array
  consistency_weight: jax.Array
  complementary_weight: jax.Array


def with_anchor(state: UDIState, anchor: int) -> UDIState:
  """The method state with the anchor chosen after stage A."""
  return state.replace(anchor=jnp.asarray(anchor, jnp.int32))


def choose_anchor(accuracy, entropy, tolerance: float = 0.005) -> int:
  """The anchor: best standalone validation accuracy; near-ties go to the lower entropy.

  Args:
    accuracy: [M] validation accuracies of the unimodal models.
    entropy: [M] mean predictive entropy of each model on validation (any fixed normalisation).
    tolerance: accuracies within this of the best are tied (0.005 = half a point).

  Returns:
    The anchor index.
  """
  accuracy, entropy = np.asarray(accuracy, np.float64), np.asarray(entropy, np.float64)
  tied = accuracy >= accuracy.max() - tolerance
  return int(np.argmin(np.where(tied, entropy, np.inf)))


def js_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """JS(p ‖ q) = ½KL(p ‖ r) + ½KL(q ‖ r), r = ½(p + q), per example over the last axis."""
  logp = jax.nn.log_softmax(jnp.asarray(logits_p, jnp.float32), -1)
  logq = jax.nn.log_softmax(jnp.asarray(logits_q, jnp.float32), -1)
  p, q = jnp.exp(logp), jnp.exp(logq)
  logr = jnp.log(jnp.maximum(0.5 * (p + q), 1e-30))
  return 0.5 * (p * (logp - logr)).sum(-1) + 0.5 * (q * (logq - logr)).sum(-1)


def _standardize(z: jax.Array, mask: jax.Array, eps: float = 1e-5) -> jax.Array:
  weight = mask[:, None] / jnp.maximum(mask.sum(), 1.0)
  mean = (z * weight).sum(0)
  var = (jnp.square(z - mean) * weight).sum(0)
  return (z - mean) / jnp.sqrt(var + eps)


def redundancy_loss(z: jax.Array, anchor: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """‖corr(BN(z), BN(sg anchor))‖_F² / d²: cross-correlation of standardised features.

  Args:
    z: [B, d] follower features.
    anchor: [B, d] anchor features (no gradient).
    mask: optional [B].

  Returns:
    scalar in [0, 1] (0: decorrelated).
  """
  z = jnp.asarray(z, jnp.float32)
  mask = jnp.ones(z.shape[:1], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  a = _standardize(jax.lax.stop_gradient(jnp.asarray(anchor, jnp.float32)), mask)
  zs = _standardize(z, mask)
  corr = jnp.einsum("bi,bj->ij", zs * mask[:, None], a) / jnp.maximum(mask.sum(), 1.0)
  return jnp.sum(corr * corr) / (z.shape[-1] * anchor.shape[-1])


def follower_losses(outputs, anchor_logits, anchor_feats, batch, supervised: bool = True):
  """[3, M]: per modality CE, JS to the anchor and redundancy with the anchor."""
  mask = batch.get("mask")
  ce = base.unimodal_ce(outputs["logits"], batch)
  if not supervised:
    ce = jnp.zeros_like(ce)
  js = losses.masked_mean(jax.vmap(lambda l: js_divergence(anchor_logits, l))(outputs["logits"]),
                          mask)
  comp = jax.vmap(lambda z: redundancy_loss(z, anchor_feats, mask))(outputs["features"])
  return jnp.stack([ce, js, comp])


def dynamic_weights(per_task, modalities, previous_cons, previous_comp, momentum: float):
  """EMA of (1 + cos)/2 between each follower's auxiliary and CE gradients.

  Args:
    per_task: gradients with a leading axis of 3 (CE, JS, redundancy).
    modalities: names in M-axis order.
    previous_cons, previous_comp: [M] current weights.
    momentum: ρ.

  Returns:
    ([M] new w_cons, [M] new w_comp, [M] cos(JS, CE), [M] cos(redundancy, CE)).
  """
  cos_js, cos_comp = [], []
  for m in modalities:
    g = [jax.tree.map(lambda x, k=k: x[k], per_task[m]) for k in range(3)]
    norm_ce = jnp.sqrt(base.tree_sq_norm(g[0]))
    for aux_grad, out in ((g[1], cos_js), (g[2], cos_comp)):
      denom = norm_ce * jnp.sqrt(base.tree_sq_norm(aux_grad))
      out.append(base.tree_vdot(g[0], aux_grad) / jnp.maximum(denom, 1e-20))
  cos_js, cos_comp = jnp.stack(cos_js), jnp.stack(cos_comp)
  cons = momentum * previous_cons + (1.0 - momentum) * 0.5 * (1.0 + cos_js)
  comp = momentum * previous_comp + (1.0 - momentum) * 0.5 * (1.0 + cos_comp)
  return cons, comp, cos_js, cos_comp


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities, num = spec.modalities, spec.num_modalities

  def init_state() -> UDIState:
    return UDIState(anchor=jnp.zeros((), jnp.int32),
                    consistency_weight=jnp.full((num,), opts.consistency_weight, jnp.float32),
                    complementary_weight=jnp.full((num,), opts.complementary_weight,
                                                  jnp.float32))

  def fusion_loss(outputs, batch):
    return losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                              batch.get("mask"))

  def fusion_grads(forward, params, batch, state, step):
    del state, step

    def loss_fn(fusion_params):
      # Inference mode: the encoders are frozen, BatchNorm statistics included.
      outputs, batch_stats = forward({**params, "fusion": fusion_params}, batch, train=False)
      return fusion_loss(outputs, batch), batch_stats

    (value, batch_stats), fusion_grad = jax.value_and_grad(loss_fn, has_aux=True)(
        params["fusion"])
    grads = {**jax.tree.map(jnp.zeros_like, params), "fusion": fusion_grad}
    return value, grads, batch_stats, {"metrics": {"loss_fused": value}}

  def follower_grads(forward, params, batch, state: UDIState, step):
    del step
    frozen, old_stats = forward(params, batch, train=False)
    anchor_logits = jax.lax.stop_gradient(jnp.take(frozen["logits"], state.anchor, axis=0))
    anchor_feats = jax.lax.stop_gradient(jnp.take(frozen["features"], state.anchor, axis=0))
    follower = 1.0 - jax.nn.one_hot(state.anchor, num)                        # [M]

    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      parts = follower_losses(outputs, anchor_logits, anchor_feats, batch, opts.supervised)
      return (parts * follower).sum(-1), (batch_stats, parts)                # [3]

    if opts.dynamic:
      _, per_task, (batch_stats, parts) = base.multi_loss_grads(loss_fn, params)
      cons, comp, cos_js, cos_comp = dynamic_weights(
          per_task, modalities, state.consistency_weight, state.complementary_weight,
          opts.weight_momentum)
      # The anchor has no auxiliary losses: its entries stay as they were.
      cons = jnp.where(follower > 0, cons, state.consistency_weight)
      comp = jnp.where(follower > 0, comp, state.complementary_weight)
      grads = {m: jax.tree.map(lambda g, i=i: g[0] + cons[i] * g[1] + comp[i] * g[2],
                               per_task[m]) for i, m in enumerate(modalities)}
      grads["fusion"] = jax.tree.map(lambda g: jnp.zeros_like(g[0]), per_task["fusion"])
      extra = {"udi_cos_consistency": cos_js * follower,
               "udi_cos_complementary": cos_comp * follower}
    else:
      cons, comp = state.consistency_weight, state.complementary_weight

      def objective(p):
        _, (batch_stats, parts) = loss_fn(p)
        weights = jnp.stack([jnp.ones((num,)), cons, comp]) * follower
        return (weights * parts).sum(), (batch_stats, parts)

      (_, (batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(params)
      extra = {}
    # The anchor is frozen: keep its BatchNorm statistics from before the step.
    is_anchor = {m: state.anchor == i for i, m in enumerate(modalities)}
    batch_stats = {k: (jax.tree.map(lambda new, old, a=is_anchor[k]: jnp.where(a, old, new), v,
                                    old_stats[k]) if k in is_anchor else v)
                   for k, v in batch_stats.items()}
    value = ((jnp.stack([jnp.ones((num,)), cons, comp]) * parts) * follower).sum()
    metrics = {"ce_unimodal": parts[0], "loss_consistency": parts[1] * follower,
               "loss_complementary": parts[2] * follower, "udi_consistency_weight": cons,
               "udi_complementary_weight": comp, **extra}
    return value, grads, batch_stats, {"metrics": metrics, "weights": (cons, comp)}

  def update_state(state: UDIState, aux, batch) -> UDIState:
    del batch
    if opts.stage != "follower" or not opts.dynamic:
      return state
    cons, comp = aux["weights"]
    return state.replace(consistency_weight=cons, complementary_weight=comp)

  def predict(outputs, state):
    del state
    logits = outputs["logits"]
    if opts.prediction == "mean_logits":
      return logits.mean(0), logits
    return outputs["fused_logits"], logits

  return base.Method(
      name="udi", init_state=init_state,
      compute_grads=fusion_grads if opts.stage == "fusion" else follower_grads,
      update_state=update_state, predict=predict,
      model={"fusion": "concat", "detach_heads": False})


def train(stages: base.Stages, opts: Options) -> dict[str, Any]:
  """A: the unimodal phase's models → the anchor; B: the followers under the frozen anchor;
  C: the fused head over frozen encoders. Each stage is an ordinary training of this method
  with its own `stage` option and frozen parameter groups; the last one runs in the run's
  workdir, so its directory looks like any other (checkpoints/best, results.json)."""
  modalities = stages.modalities
  source = stages.unimodal_dir

  def choose():
    outputs = stages.unimodal_outputs("validation")
    accuracy = np.mean(outputs["unimodal_pred"] == outputs["label"][:, None], axis=0)
    entropy = np.mean(outputs["unimodal_entropy"], axis=0)
    anchor = choose_anchor(accuracy, entropy, opts.tie_tolerance)
    return {"anchor": modalities[anchor], "source": source,
            "val_acc": dict(zip(modalities, map(float, accuracy))),
            "val_entropy": dict(zip(modalities, map(float, entropy)))}

  record = stages.record("udi", choose)
  anchor_name = record["anchor"]
  anchor = modalities.index(anchor_name)
  stages.log(f"[udi] anchor {anchor_name} (validation accuracy "
             + ", ".join(f"{m} {record['val_acc'][m]:.3f}" for m in modalities) + ")")
  with_fusion = opts.prediction == "head" and opts.fusion_epochs > 0
  follower_dir = (os.path.join(stages.workdir, "stages", "follower") if with_fusion
                  else stages.workdir)

  def follower_hooks(context):
    def before_training(state):
      groups = modalities if opts.follower_init == "unimodal" else (anchor_name,)
      state = stages.load_branches(state, source, groups)
      return state.replace(method=stages.put(with_anchor(state.method, anchor)))
    return base.Hooks(before_training=before_training)

  # Stage B selects on the mean of the unimodal logits: the fused head is not trained yet.
  follower = stages.train_stage({"methods.udi.stage": "follower",
                                 "methods.udi.prediction": "mean_logits"}, follower_dir,
                                frozen=(anchor_name, "fusion"), hooks=follower_hooks)
  record_b = {"anchor": anchor_name, "anchor_choice": record,
              "follower": {"dir": follower_dir, "best_epoch": follower["best_epoch"],
                           "test_best": follower["test_best"]}}
  if not with_fusion:
    return stages.finish(follower, record_b)

  def fusion_hooks(context):
    def before_training(state):
      state = stages.load_branches(state, follower_dir, modalities + ("fusion",))
      return state.replace(method=stages.put(with_anchor(state.method, anchor)))
    return base.Hooks(before_training=before_training)

  fused = stages.train_stage({"methods.udi.stage": "fusion", "optim.epochs": opts.fusion_epochs},
                             stages.workdir, frozen=modalities, hooks=fusion_hooks)
  return stages.finish(fused, record_b)


DEFINITION = base.Definition(
    name="udi", build=build, options=Options, train=train, display="UDI†",
    # Stage A is the runner's unimodal phase.
    needs_budgets=True,
    note="† reconstruction from the paper's abstract and reviews, not a reproduction "
         "(docs/FIDELITY.md).")
