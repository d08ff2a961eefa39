"""PMR: prototypical modal rebalance (Fan et al., CVPR 2023).

METHODS.md §10, from the official `fanyunfeng-bit/Modal-Imbalance-PMR` `main_Prototype_grad.py`
(modulation "Proto"). Per step, with class prototypes c^m_k in the state:
  o^m_{i,k} = −‖z_{m,i} − c^m_k‖₂                 (Euclidean distance, not squared)
  L_PCE^m   = mean_i CE(o^m_i, y_i),  s^m = Σ_i softmax(o^m_i)[y_i]
  M = 2:  ρ = s^a/s^v;  ρ > 1 → β = (0, α);  ρ < 1 → β = (α, 0);  ρ = 1 → β = (0, 0)
  L = CE(ℓ_F, y) + Σ_m β_m L_PCE^m inside the modulation window, else CE(ℓ_F, y)
For M > 2 every modality whose score is below the best one gets β_m = α (for M = 2 this is the
official switch exactly). Prototypes are constants for the step; L_PCE's gradient reaches the
encoders only.

Prototype phase (the method's hooks, before epoch 0 and after every epoch): an eval-mode pass over
the first ⌊N_batches/10⌋ shuffled training batches (option `prototype_split="validation"`: the
whole validation split, as the official AVE script; the AVE config sets it) accumulates per-class
feature sums with `prototype_sums`; `set_prototypes` then writes
c ← (1 − μ) c_new + μ c_old, except for the first `plain_passes` computations, which are plain
means (the official code's `epoch <= 0` gate makes the pre-training and the epoch-0 computations
plain). A class absent from the sampled batches keeps its prototype (the official code divides by
zero); a class never seen has no prototype and is left out of the distance softmax.
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  alpha: float = 1.0                # PCE coefficient α (official default; BalanceMM 0.6)
  momentum: float = 0.2             # prototype momentum μ (official default; BalanceMM 0.5)
  plain_passes: int = 2             # prototype computations that ignore the momentum (official: 2)
  modulation_start: int = 0         # official window: epochs 0–100, inclusive
  modulation_end: int = 100
  fusion: str = "concat"
  prototype_fraction: float = 0.1   # share of the training batches the prototype pass reads
  prototype_split: str = "train"    # "train" (shuffled batches) or "validation" (official AVE)

  def validate(self, modalities):
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.require(0 < self.prototype_fraction <= 1, "prototype_fraction",
                 self.prototype_fraction, "a fraction in (0, 1]")
    base.one_of("prototype_split", self.prototype_split, ("train", "validation"))


class PMRState(struct.PyTreeNode):
  """PMR's state.

  Attributes:
    protos: [M, C, d] class prototypes of every modality.
    valid: [M, C] bool, whether the prototype has been computed.
    passes: int32 scalar, prototype computations so far.
  """
  protos: jax.Array
  valid: jax.Array
  passes: jax.Array


def initial_state(num_modalities: int, num_classes: int, feature_dim: int) -> PMRState:
  return PMRState(protos=jnp.zeros((num_modalities, num_classes, feature_dim), jnp.float32),
                  valid=jnp.zeros((num_modalities, num_classes), bool),
                  passes=jnp.zeros((), jnp.int32))


def prototype_sums(features: jax.Array, labels: jax.Array, num_classes: int,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class feature sums and counts of one batch (add them up over the pass).

  Args:
    features: [M, B, d].
    labels: [B].
    num_classes: C.
    mask: optional [B]; padded examples never count.

  Returns:
    ([M, C, d] sums, [C] counts).
  """
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if mask is not None:
    onehot = onehot * mask[:, None]
  sums = jnp.einsum("bc,mbd->mcd", onehot, jnp.asarray(features, jnp.float32))
  return sums, onehot.sum(0)


def set_prototypes(state: PMRState, sums: jax.Array, counts: jax.Array, momentum: float,
                   plain_passes: int = 2) -> PMRState:
  """The prototypes after one prototype pass.

  Args:
    state: current state.
    sums: [M, C, d] feature sums over the pass.
    counts: [C] examples per class over the pass.
    momentum: μ.
    plain_passes: this many first computations are plain means.

  Returns:
    new state with c ← (1 − μ) c_new + μ c_old (plain mean for early passes or first-seen
    classes); classes absent from the pass keep their prototype.
  """
  present = jnp.asarray(counts) > 0                                          # [C]
  means = jnp.asarray(sums, jnp.float32) / jnp.maximum(counts, 1.0)[None, :, None]
  blend = (state.passes >= plain_passes) & state.valid                       # [M, C]
  new = jnp.where(blend[..., None], (1.0 - momentum) * means + momentum * state.protos, means)
  protos = jnp.where(present[None, :, None], new, state.protos)
  return state.replace(protos=protos, valid=state.valid | present[None, :],
                       passes=state.passes + 1)


def distance_logits(features: jax.Array, protos: jax.Array) -> jax.Array:
  """o_{m,i,k} = −‖z_{m,i} − c^m_k‖₂.

  Args:
    features: [M, B, d].
    protos: [M, C, d].

  Returns:
    [M, B, C].
  """
  diff = jnp.asarray(features, jnp.float32)[:, :, None, :] - protos[:, None, :, :]
  # The epsilon keeps the gradient of the norm finite when a feature sits on its prototype.
  return -jnp.sqrt(jnp.sum(diff * diff, -1) + 1e-12)


def prototype_terms(features, protos, valid, labels, mask=None):
  """PCE losses and scores of every modality.

  Args:
    features: [M, B, d].
    protos: [M, C, d].
    valid: [M, C] bool; invalid prototypes are left out of the softmax and examples whose class
      has no prototype do not count.
    labels: [B].
    mask: optional [B].

  Returns:
    ([M] L_PCE^m, [M] scores s^m).
  """
  logits = distance_logits(features, protos)
  logits = jnp.where(valid[:, None, :], logits, -1e30)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  idx = jnp.broadcast_to(labels[None, :, None], logits.shape[:2] + (1,))
  true_log = jnp.take_along_axis(log_probs, idx, axis=-1)[..., 0]            # [M, B]
  counted = valid[:, labels].astype(jnp.float32)                             # [M, B]
  if mask is not None:
    counted = counted * mask[None, :]
  safe = jnp.where(counted > 0, true_log, 0.0)
  pce = -(safe * counted).sum(-1) / jnp.maximum(counted.sum(-1), 1.0)
  score = (jnp.exp(safe) * counted).sum(-1)
  return pce, score


def pce_coefficients(score: jax.Array, alpha: float) -> jax.Array:
  """β_m = α for every modality whose score is below the best score, else 0.

  For M = 2 this is the official switch: ρ = s_a/s_v > 1 → (0, α), < 1 → (α, 0), = 1 → (0, 0).
  """
  return jnp.where(score < score.max(), alpha, 0.0)


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  def loss(outputs, batch, state: PMRState, step):
    labels, mask = batch["label"], batch.get("mask")
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], labels), mask)
    pce, score = prototype_terms(outputs["features"], state.protos, state.valid, labels, mask)
    active = base.in_window(spec.epoch(step), opts.modulation_start, opts.modulation_end)
    beta = jnp.where(active, pce_coefficients(jax.lax.stop_gradient(score), opts.alpha), 0.0)
    total = fused + (beta * pce).sum()
    metrics = {"loss_fused": fused, "loss_pce": pce, "pmr_score": score, "pmr_beta": beta}
    return total, {"metrics": metrics}

  def hooks(context: base.Context) -> base.Hooks:
    data = context.data
    step = make_prototype_step(context.model, context.method)
    seed = context.stream_seed("pmr")

    def batches(epoch: int):
      if opts.prototype_split == "validation":
        return data.eval("validation")
      # ⌊N/10⌋ shuffled training batches; at least one, so a small dataset still has prototypes.
      count = max(1, int(data.steps_per_epoch() * opts.prototype_fraction))
      return itertools.islice(data.train(epoch, seed), count)

    def prototypes(state, epoch: int):
      state = prototype_pass(step, state, batches(epoch), opts.momentum, opts.plain_passes)
      return state.replace(method=context.put(state.method))

    return base.Hooks(before_training=lambda state: prototypes(state, 0),
                      between_epochs=lambda epoch, state, val: prototypes(state, epoch + 1))

  return base.Method(
      name="pmr",
      init_state=lambda: initial_state(spec.num_modalities, spec.num_classes, spec.feature_dim),
      loss=loss, predict=base.split_predict, hooks=hooks,
      model={"fusion": opts.fusion, "detach_heads": True})


def make_prototype_step(model, method: base.Method):
  """A jitted `(state, batch) -> ([M, C, d] sums, [C] counts)` in inference mode (BatchNorm
  running statistics, no update)."""
  outputs_step = base.make_outputs_step(model, method)
  num_classes = model.num_classes

  @jax.jit
  def prototype_step(state, batch):
    out = outputs_step(state, batch)
    return prototype_sums(out["features"], out["label"], num_classes, out["mask"])

  return prototype_step


def prototype_pass(prototype_step, state, batches, momentum: float, plain_passes: int = 2):
  """Runs one prototype pass over `batches` and returns the train state with new prototypes.

  Args:
    prototype_step: from `make_prototype_step`.
    state: the TrainState.
    batches: iterable of batches (the first ⌊N/10⌋ shuffled training batches).
    momentum: μ.
    plain_passes: see `set_prototypes`.
  """
  sums = counts = None
  for batch in batches:
    s, c = prototype_step(state, batch)
    sums, counts = (s, c) if sums is None else (sums + s, counts + c)
  if sums is None:
    return state
  return state.replace(method=set_prototypes(state.method, sums, counts, momentum, plain_passes))


DEFINITION = base.Definition(name="pmr", build=build, options=Options, display="PMR",
                             readout=lambda o: "split fusion layer")
