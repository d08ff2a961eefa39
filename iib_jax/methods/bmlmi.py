"""BML-MI: balanced multimodal learning via mutual information (Xie & Sanguinetti, arXiv
2511.00987) — an audio-visual reconstruction.

METHODS.md §4. The paper (multi-omics, graph encoders) is known only from its abstract and
summaries; the variant below is METHODS.md §4.3's guess, listed in docs/FIDELITY.md (Baselines).
Do not label its results as a reproduction.

Stages (host level, `train`):
  0  unimodal models (the runner's unimodal phase, shared with IIBalance's budgets); the teacher is
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

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from iib_jax import loop, losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  stage: str = "joint"               # "distill" (stage 1) or "joint" (stage 2)
  kappa: float = 0.5                 # κ, weight of the distillation term
  temperature: float = 4.0           # T of the distillation softmax
  weight_temperature: float = 0.5    # T_w of the loss weights
  fused_weight: float = 1.0          # w_F
  fusion: str = "concat"
  critic_epochs: int = 1             # InfoNCE critic: passes over the training features
  critic_batch: int = 256            # InfoNCE critic: negatives per example (bound ≤ log batch)
  probe_steps: int = 300             # linear probe for I(z; y): full-batch Adam steps
  distill_epochs: int = 10           # epochs of stage 1 (not published; guess)

  def validate(self, modalities):
    base.one_of("stage", self.stage, ("distill", "joint"))
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.require(self.distill_epochs >= 0, "distill_epochs", self.distill_epochs,
                 "an integer ≥ 0")


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


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities, num = spec.modalities, spec.num_modalities

  def init_state() -> BMLState:
    return BMLState(teacher=jnp.zeros((), jnp.int32), distill=jnp.zeros((num,), jnp.float32),
                    weights=jnp.ones((num,), jnp.float32),
                    fused_weight=jnp.asarray(opts.fused_weight, jnp.float32))

  def joint_loss(outputs, batch, state: BMLState, step):
    del step
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    uni = base.unimodal_ce(outputs["logits"], batch)
    total = state.fused_weight * fused + (state.weights * uni).sum()
    return total, {"metrics": {"loss_fused": fused, "ce_unimodal": uni,
                               "bml_weights": state.weights}}

  def distill_loss(outputs, batch, state: BMLState, teacher_logits):
    kd = distillation_loss(outputs["logits"], teacher_logits, batch["label"], opts.kappa,
                           opts.temperature, batch.get("mask"))              # [M]
    return (state.distill * kd).sum(), kd

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

  distill = opts.stage == "distill"
  return base.Method(
      name="bmlmi", init_state=init_state, loss=None if distill else joint_loss,
      compute_grads=distill_grads if distill else None,
      model={"fusion": opts.fusion, "detach_heads": False})


def train(stages: base.Stages, opts: Options) -> dict[str, Any]:
  """0: the unimodal phase's models → teacher and MI test; 1: distillation into the students
  that pass it; 2: joint training with calibrated loss weights, re-calibrated after every epoch.
  Each stage is an ordinary training of this method with its own `stage` option."""
  modalities = stages.modalities
  num = len(modalities)
  classes = stages.data.num_classes
  source = stages.unimodal_dir
  seed = int(stages.config.seed)

  def decide():
    val = stages.unimodal_outputs("validation")
    f1 = [macro_f1(val["label"], val["unimodal_pred"][:, i], classes) for i in range(num)]
    teacher = choose_teacher(f1)
    z_train, y_train = stages.unimodal_features("train")
    z_val, y_val = stages.unimodal_features("validation")
    mi_teacher, mi_label, distill = [0.0] * num, [0.0] * num, []
    for s in range(num):
      if s != teacher:
        mi_teacher[s] = estimate_infonce(z_train[:, teacher], z_train[:, s],
                                         batch_size=opts.critic_batch,
                                         epochs=opts.critic_epochs, seed=seed)
        mi_label[s] = estimate_label_mi(z_val[:, s], y_val, classes, steps=opts.probe_steps)
      distill.append(s != teacher and should_distill(mi_teacher[s], mi_label[s]))
    return {"teacher": modalities[teacher], "source": source,
            "val_macro_f1": dict(zip(modalities, map(float, f1))),
            "mi_with_teacher": dict(zip(modalities, map(float, mi_teacher))),
            "mi_with_label": dict(zip(modalities, map(float, mi_label))),
            "distill": dict(zip(modalities, map(bool, distill))),
            "label_entropy": label_entropy(y_train, classes)}

  record = stages.record("bmlmi", decide)
  teacher_name = record["teacher"]
  teacher = modalities.index(teacher_name)
  distill = [float(record["distill"][m]) for m in modalities]
  mi_teacher = [record["mi_with_teacher"][m] for m in modalities]
  stages.log(f"[bmlmi] teacher {teacher_name}; distilling students: "
             + (", ".join(m for m in modalities if record["distill"][m]) or "none"))
  summary: dict[str, Any] = {"teacher": teacher_name, "decision": record}
  branches = source, "best"

  def unimodal_hooks(context):
    def before_training(state):
      state = stages.load_branches(state, source, modalities)
      return state.replace(method=stages.put(with_teacher(state.method, teacher, distill)))
    return base.Hooks(before_training=before_training)

  if any(distill) and opts.distill_epochs > 0:
    distill_dir = os.path.join(stages.workdir, "stages", "distill")
    frozen = (teacher_name, "fusion") + tuple(m for m, d in zip(modalities, distill)
                                              if not d and m != teacher_name)
    result = stages.train_stage({"methods.bmlmi.stage": "distill",
                                 "optim.epochs": opts.distill_epochs}, distill_dir,
                                frozen=frozen, hooks=unimodal_hooks)
    # A fixed number of distillation epochs, ending with the last: the stage has no fused
    # prediction to select on (its fusion head is not trained).
    branches = distill_dir, "latest"
    summary["distill"] = {"dir": distill_dir, "test_last": result["test_last"]}

  def joint_hooks(context):
    def calibrate(state, epoch: int | None):
      outputs = loop.collect(context.eval_step, state, stages.data.eval("validation"))
      f1 = [macro_f1(outputs["label"], outputs["unimodal_pred"][:, i], classes)
            for i in range(num)]
      weights = calibrated_weights(f1, mi_teacher, record["label_entropy"], teacher,
                                   opts.weight_temperature)
      when = "before epoch 0" if epoch is None else f"after epoch {epoch}"
      stages.log(f"[bmlmi] loss weights {when}: "
                 + ", ".join(f"{m} {w:.3f}" for m, w in zip(modalities, weights)))
      method = with_weights(with_teacher(state.method, teacher, distill), weights)
      return state.replace(method=stages.put(method))

    def before_training(state):
      # Encoders and heads from the previous stage; the fused head starts fresh.
      return calibrate(stages.load_branches(state, branches[0], modalities, branches[1]), None)

    return base.Hooks(before_training=before_training,
                      between_epochs=lambda epoch, state, val: calibrate(state, epoch))

  joint = stages.train_stage({"methods.bmlmi.stage": "joint"}, stages.workdir, hooks=joint_hooks)
  return stages.finish(joint, summary)


DEFINITION = base.Definition(
    name="bmlmi", build=build, options=Options, train=train, display="BML-MI†",
    # Stage 0 is the runner's unimodal phase.
    needs_budgets=True,
    note="† reconstruction from the paper's abstract and reviews, not a reproduction "
         "(docs/FIDELITY.md).")
