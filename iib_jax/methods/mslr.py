"""MSLR: modality-specific learning rates (Yao & Mihalcea, Findings of ACL 2022; METHODS.md §6).

Additive late fusion, ℓ_F = Σ_m (W_m z_m + b_m), trained with CE(ℓ_F, y). Branch m (encoder and
its summand of the fusion layer) learns at rate η·c_m; the shared parameters at η. The factor is
applied to the gradient, which equals a per-branch learning rate under SGD (the method's own
optimiser; under Adam a constant factor is almost cancelled, METHODS.md §1.2).

Strategies:
  keep     c_m = c_m^0 for the whole run.
  dynamic  the AGM repository's rule (`run/CREMAD_main.py`, methods == "MSLR"): after epoch e,
           with A_m(e) the validation accuracy of branch m and a FIFO memory of its last K
           accuracies, c_m = c_m^0 · A_m(e) / mean(memory_m) once the memory is full (not
           cumulative), c_m^0 before; then A_m(e) enters the memory.
The per-epoch update is host-level: the method's `between_epochs` hook calls `end_of_epoch` with
the validation accuracies of the unimodal summands after every epoch; the factors then live in
the state.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  strategy: str = "dynamic"                 # "dynamic" (AGM repository) or "keep"
  initial_factors: tuple = (0.9, 1.1)       # c_m^0 in config.modalities order (AGM repo, CREMA-D)
  memory: int = 5                           # epochs of accuracy history (AGM repository)
  modulation_start: int = 0                 # first epoch with c_m != 1 (inclusive)
  modulation_end: int = -1                  # last epoch with c_m != 1 (inclusive); -1: to the end
  fusion: str = "sum"                       # "sum" (the additive model of the paper) or "concat"

  def validate(self, modalities):
    base.one_of("strategy", self.strategy, ("dynamic", "keep"))
    base.one_of("fusion", self.fusion, ("sum", "concat"))
    if modalities:
      base.require(len(self.initial_factors) == len(modalities), "initial_factors",
                   self.initial_factors, f"one factor per modality {tuple(modalities)}")
    base.require(self.memory >= 1, "memory", self.memory, "an integer ≥ 1")


class MSLRState(struct.PyTreeNode):
  """MSLR's state.

  Attributes:
    factors: [M] current learning-rate factors c_m.
    initial: [M] initial factors c_m^0.
    memory: [M, K] the last K validation accuracies per modality, oldest first.
    filled: int32 scalar, how many accuracies the memory holds (≤ K).
  """
  factors: jax.Array
  initial: jax.Array
  memory: jax.Array
  filled: jax.Array


def initial_state(initial_factors, memory: int) -> MSLRState:
  initial = jnp.array(initial_factors, jnp.float32)
  # Two buffers: the train step donates its input and may not see one buffer twice.
  return MSLRState(factors=jnp.array(initial_factors, jnp.float32), initial=initial,
                   memory=jnp.zeros((initial.shape[0], memory), jnp.float32),
                   filled=jnp.zeros((), jnp.int32))


def end_of_epoch(state: MSLRState, accuracies, strategy: str = "dynamic") -> MSLRState:
  """The factors for the next epoch from this epoch's unimodal validation accuracies.

  Args:
    state: the current state.
    accuracies: [M] validation accuracy A_m(e) of each unimodal summand, in [0, 1].
    strategy: "dynamic" or "keep" (the memory is still recorded; the factors stay c_m^0).

  Returns:
    The new state: factors c_m = c_m^0 · A_m(e) / mean(memory_m) if the memory was full,
    else c_m^0; A_m(e) pushed into the memory (the oldest value dropped when full).
  """
  acc = jnp.asarray(accuracies, jnp.float32)
  size = state.memory.shape[1]
  full = state.filled >= size
  ratio = acc / jnp.maximum(state.memory.mean(1), 1e-8)
  factors = jnp.where(full, state.initial * ratio, state.initial)
  if strategy == "keep":
    factors = state.initial
  # Before the memory is full, write at index `filled`; afterwards shift left and append.
  shifted = jnp.concatenate([state.memory[:, 1:], acc[:, None]], axis=1)
  written = state.memory.at[:, jnp.minimum(state.filled, size - 1)].set(acc)
  memory = jnp.where(full, shifted, written)
  return state.replace(factors=factors, memory=memory,
                       filled=jnp.minimum(state.filled + 1, size).astype(jnp.int32))


def scale_branches(grads, modalities: tuple[str, ...], factors: jax.Array, fusion: str):
  """Multiplies branch m's gradient, and its block of the fusion layer, by factors[m].

  Args:
    grads: gradients keyed by modality and "fusion".
    modalities: names in M-axis order.
    factors: [M].
    fusion: "sum" (per-modality W_m, b_m) or "concat" (kernel rows of modality m; the shared
      bias keeps the base rate).
  """
  grads = base.scale_modalities(grads, modalities, factors)
  fusion_grads = dict(grads["fusion"])
  if fusion == "sum":
    heads = fusion_grads["heads"]
    fusion_grads["heads"] = {"kernel": heads["kernel"] * factors[:, None, None],
                             "bias": heads["bias"] * factors[:, None]}
  else:
    kernel = fusion_grads["kernel"]
    num = factors.shape[0]
    fusion_grads["kernel"] = (kernel.reshape(num, -1, kernel.shape[-1])
                              * factors[:, None, None]).reshape(kernel.shape)
  return {**grads, "fusion": fusion_grads}


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  def factors_now(state: MSLRState, step):
    active = base.in_window(spec.epoch(step), opts.modulation_start, opts.modulation_end)
    return jnp.where(active, state.factors, jnp.ones_like(state.factors))

  def loss(outputs, batch, state: MSLRState, step):
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    metrics = {"loss_fused": fused,
               "ce_unimodal": base.unimodal_ce(outputs["partial_logits"], batch),
               "lr_factors": factors_now(state, step)}
    return fused, {"metrics": metrics}

  def rewrite_grads(grads, aux, state: MSLRState, step):
    del aux
    return scale_branches(grads, spec.modalities, factors_now(state, step), opts.fusion)

  def hooks(context: base.Context) -> base.Hooks:
    def between_epochs(epoch, state, val):
      # The validation accuracies of the sum-fusion summands: what `predict` reports.
      accuracies = [val[f"acc_{m}"] for m in spec.modalities]
      new = end_of_epoch(state.method, accuracies, opts.strategy)
      return state.replace(method=context.put(new))

    return base.Hooks(between_epochs=between_epochs)

  return base.Method(
      name="mslr", init_state=lambda: initial_state(opts.initial_factors, opts.memory),
      loss=loss, rewrite_grads=rewrite_grads, predict=base.split_predict, hooks=hooks,
      model={"fusion": opts.fusion, "detach_heads": True})


DEFINITION = base.Definition(name="mslr", build=build, options=Options, display="MSLR",
                             paper_optimizer=True,
                             readout=lambda o: "fusion-layer summands")
