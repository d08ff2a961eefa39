"""BML-MI: balanced multimodal learning via mutual information (Xie & Sanguinetti, arXiv
2511.00987) — an audio-visual reconstruction.

METHODS.md §4. The paper (multi-omics, graph encoders) is known only from its abstract and
summaries; the variant below is METHODS.md §4.3's guess, listed in docs/FIDELITY.md (Baselines).
Do not label its results as a reproduction.

Stages (host level):
  0  unimodal models (the library's `unimodal` method, shared with the IIB phase); the teacher is
     the modality with the best validation macro-F1 (`macro_f1`, `choose_teacher`).
  1  `stage="distill"`: for each student s ≠ t, distil only if Î(z_t; z_s) > Î(z_s; y)
     (`estimate_infonce`, `estimate_label_mi`, `should_distill`); the student minimises
     (1 − κ) CE(ℓ_s, y) + κ T² KL(softmax(ℓ_t/T) ‖ softmax(ℓ_s/T)) with the teacher in inference
     mode and frozen. Students that do not distil are not trained in this stage.
  2  `stage="joint"`: L = w_F CE(ℓ_F, y) + Σ_m w_m CE(ℓ_m, y), the weights in the state,
     recomputed after every epoch by `calibrated_weights`:
     w_m ∝ exp((1 − F1_m)/T_w) · (1 − Î_m), Î_m = clip(I(z_m; z_t)/H(y), 0, 1), Î_t = 0,
     Σ_m w_m = M, w_F = 1.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

DEFAULTS = {
    "stage": "joint",               # "distill" (stage 1) or "joint" (stage 2)
    "kappa": 0.5,                   # κ, weight of the distillation term
    "temperature": 4.0,             # T of the distillation softmax
    "weight_temperature": 0.5,      # T_w of the loss weights
    "fused_weight": 1.0,            # w_F
    "fusion": "concat",
    "critic_epochs": 1,             # InfoNCE critic: passes over the training features
    "critic_batch": 256,            # InfoNCE critic: negatives per example (bound ≤ log batch)
    "probe_steps": 300,             # linear probe for I(z; y): full-batch Adam steps
    "distill_epochs": 10,           # runner: epochs of stage 1 (not published; guess)
}


class BMLState(struct.PyTreeNode):
  """BML-MI's state (all set by the runner between phases).

  Attributes:
    teacher: int32 scalar, the teacher modality t.
    distill: [M] 1 for students that distil in stage 1, else 0 (0 for the teacher).
    weights: [M] unimodal loss weights w_m of stage 2.
    fused_weight: scalar w_F.
  """
  teacher: jax.Array
  distill: jax.Array
  weights: jax.Array
  fused_weight: jax.Array


def with_teacher(state: BMLState, teacher: int, distill) -> BMLState:
  """The method state after the teacher choice and the MI test of stage 1."""
  distill = np.asarray(distill, np.float32).copy()
  distill[teacher] = 0.0
  return state.replace(teacher=jnp.asarray(teacher, jnp.int32), distill=jnp.asarray(distill))


def with_weights(state: BMLState, weights, fused_weight: float | None = None) -> BMLState:
  """The method state with new stage-2 loss weights ([M], and optionally w_F)."""
  state = state.replace(weights=jnp.asarray(weights, jnp.float32))
  if fused_weight is not None:
    state = state.replace(fused_weight=jnp.asarray(fused_weight, jnp.float32))
  return state


# ------------------------------------------------------------------------------------------------
# Host-level estimates.


def macro_f1(labels, predictions, num_classes: int) -> float:
  """Macro-F1 over the classes present in the labels or the predictions.

  Per class F1 = 2TP / (2TP + FP + FN), averaged without weights.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  tp = np.diag(confusion).astype(np.float64)
  fp = confusion.sum(0) - tp
  fn = confusion.sum(1) - tp
  present = (confusion.sum(0) + confusion.sum(1)) > 0
  f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
  return float(f1[present].mean()) if present.any() else 0.0


def choose_teacher(f1) -> int:
  """The teacher: the modality with the best validation macro-F1."""
  return int(np.argmax(np.asarray(f1)))


def label_entropy(labels, num_classes: int) -> float:
  """H(y) in nats from the label frequencies."""
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  p = counts / max(counts.sum(), 1.0)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def _standardize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return (x - x.mean(0)) / (x.std(0) + 1e-5)


def infonce_bound(scores: jax.Array) -> jax.Array:
  """InfoNCE lower bound on I(X; Y) from critic scores f(x_i, y_j) [N, N]:
  log N + mean_i (f_ii − logsumexp_j f_ij)."""
  n = scores.shape[0]
  return jnp.log(n) + jnp.mean(jnp.diag(scores) - jax.nn.logsumexp(scores, axis=1))


def estimate_infonce(x, y, *, batch_size: int = 256, epochs: int = 1,
                     learning_rate: float = 1e-3, seed: int = 0) -> float:
  """Î(X; Y) in nats with a bilinear critic f(x, y) = xᵀ W y trained to maximise InfoNCE.

  Args:
    x: [N, d_x] features (e.g. the teacher's z_t over the training set).
    y: [N, d_y] features paired with x (the student's z_s).
    batch_size: negatives per example; the bound cannot exceed log(batch_size).
    epochs: passes of critic training over the data.
    learning_rate: Adam step size.
    seed: shuffling seed.

  Returns:
    The bound averaged over minibatches after training (0 for W = 0).
  """
  x, y = _standardize(x), _standardize(y)
  n = min(batch_size, x.shape[0])
  batches = x.shape[0] // n
  tx = optax.adam(learning_rate)
  w = jnp.zeros((x.shape[1], y.shape[1]), jnp.float32)
  opt_state = tx.init(w)

  def bound(w, xb, yb):
    return infonce_bound(xb @ w @ yb.T)

  @jax.jit
  def step(w, opt_state, xb, yb):
    grad = jax.grad(lambda w: -bound(w, xb, yb))(w)
    updates, opt_state = tx.update(grad, opt_state, w)
    return optax.apply_updates(w, updates), opt_state

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(x.shape[0])
    for b in range(batches):
      idx = order[b * n:(b + 1) * n]
      w, opt_state = step(w, opt_state, x[idx], y[idx])
  evaluate = jax.jit(bound)
  values = [float(evaluate(w, x[b * n:(b + 1) * n], y[b * n:(b + 1) * n])) for b in range(batches)]
  return float(np.mean(values))


def estimate_label_mi(z, labels, num_classes: int, *, steps: int = 300,
                      learning_rate: float = 1e-2) -> float:
  """Î(Z; Y) ≈ H(y) − CE of a linear softmax probe fitted on (z, y), in nats, floored at 0."""
  z = _standardize(z)
  labels = np.asarray(labels)
  tx = optax.adam(learning_rate)
  params = (jnp.zeros((z.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,)))
  opt_state = tx.init(params)

  def ce(params):
    w, b = params
    return losses.cross_entropy(z @ w + b, labels).mean()

  @jax.jit
  def step(params, opt_state):
    grad = jax.grad(ce)(params)
    updates, opt_state = tx.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return max(label_entropy(labels, num_classes) - float(ce(params)), 0.0)


def should_distill(mi_teacher_student: float, mi_student_label: float) -> bool:
  """Cross-modal KD is attempted when I(z_t; z_s) > I(z_s; y) (the companion paper's criterion)."""
  return bool(mi_teacher_student > mi_student_label)


def calibrated_weights(f1, mi_with_teacher, label_entropy_nats: float, teacher: int,
                       temperature: float = 0.5) -> np.ndarray:
  """Stage-2 unimodal loss weights from validation macro-F1 and MI with the teacher.

  Args:
    f1: [M] validation macro-F1 of each unimodal head.
    mi_with_teacher: [M] Î(z_m; z_t) in nats (the teacher's entry is ignored).
    label_entropy_nats: H(y).
    teacher: t.
    temperature: T_w.

  Returns:
    [M] float32 weights w_m ∝ exp((1 − F1_m)/T_w)(1 − Î_m) with Σ w_m = M (uniform if all
    vanish).
  """
  f1 = np.asarray(f1, np.float64)
  normalised = np.clip(np.asarray(mi_with_teacher, np.float64) / max(label_entropy_nats, 1e-12),
                       0.0, 1.0)
  normalised[teacher] = 0.0
  raw = np.exp((1.0 - f1) / temperature) * (1.0 - normalised)
  if raw.sum() <= 0:
    return np.ones_like(raw, dtype=np.float32)
  return (raw.shape[0] * raw / raw.sum()).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Per-step pieces.


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      kappa: float, temperature: float, mask: jax.Array | None = None):
  """(1 − κ) CE(ℓ_s, y) + κ T² KL(softmax(ℓ_t/T) ‖ softmax(ℓ_s/T)), batch mean.

  Args:
    student_logits: [..., B, C].
    teacher_logits: [B, C] (no gradient).
    labels: [B].
    kappa, temperature: κ, T.
    mask: optional [B].

  Returns:
    [...] losses.
  """
  ce = losses.cross_entropy(student_logits, labels)
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature, -1)
  log_s = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / temperature, -1)
  kl = (jnp.exp(log_t) * (log_t - log_s)).sum(-1)
  return losses.masked_mean((1.0 - kappa) * ce + kappa * temperature ** 2 * kl, mask)


def build(options: Mapping[str, Any], spec: base.MethodSpec) -> base.Method:
  opts = {**DEFAULTS, **dict(options)}
  if opts["stage"] not in ("distill", "joint"):
    raise ValueError(f"methods.bmlmi.stage must be 'distill' or 'joint', got {opts['stage']!r}")
  if opts["fusion"] not in ("concat", "sum"):
    raise ValueError(f"methods.bmlmi.fusion must be 'concat' or 'sum', got {opts['fusion']!r}")
  modalities, num = spec.modalities, spec.num_modalities

  def init_state() -> BMLState:
    return BMLState(teacher=jnp.zeros((), jnp.int32), distill=jnp.zeros((num,), jnp.float32),
                    weights=jnp.ones((num,), jnp.float32),
                    fused_weight=jnp.asarray(opts["fused_weight"], jnp.float32))

  def joint_loss(outputs, batch, state: BMLState, step):
    del step
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    uni = base.unimodal_ce(outputs["logits"], batch)
    total = state.fused_weight * fused + (state.weights * uni).sum()
    return total, {"metrics": {"loss_fused": fused, "ce_unimodal": uni,
                               "bml_weights": state.weights}}

  def distill_loss(outputs, batch, state: BMLState, teacher_logits):
    kd = distillation_loss(outputs["logits"], teacher_logits, batch["label"], opts["kappa"],
                           opts["temperature"], batch.get("mask"))              # [M]
    return (state.distill * kd).sum(), kd

  def loss(outputs, batch, state: BMLState, step):
    if opts["stage"] == "joint":
      return joint_loss(outputs, batch, state, step)
    teacher_logits = jnp.take(outputs["logits"], state.teacher, axis=0)
    value, kd = distill_loss(outputs, batch, state, teacher_logits)
    return value, {"metrics": {"loss_distill": kd * state.distill}}

  def distill_grads(forward, params, batch, state: BMLState, step):
    del step
    frozen, old_stats = forward(params, batch, train=False)
    teacher_logits = jax.lax.stop_gradient(jnp.take(frozen["logits"], state.teacher, axis=0))

    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      value, kd = distill_loss(outputs, batch, state, teacher_logits)
      return value, (batch_stats, kd)

    (value, (batch_stats, kd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # Only distilling students train: the others keep their BatchNorm statistics.
    batch_stats = {k: (jax.tree.map(lambda new, old, i=modalities.index(k):
                                    jnp.where(state.distill[i] > 0, new, old), v, old_stats[k])
                       if k in modalities else v) for k, v in batch_stats.items()}
    return value, grads, batch_stats, {"metrics": {"loss_distill": kd * state.distill}}

  return base.Method(
      name="bmlmi", init_state=init_state, loss=loss,
      compute_grads=distill_grads if opts["stage"] == "distill" else None,
      model={"fusion": opts["fusion"], "detach_heads": False},
      needs_budgets=True)           # stage 0 is the runner's unimodal (IIB) phase
