"""Greedy: balanced multimodal learning by curation (Wu, Jastrzębski, Cho, Geras, ICML 2022).

METHODS.md §9, training rule from the official `nyukat/greedy_multimodal_learning`
(`src/callbacks.py::Bias_Mitigation_Strong`). DEVIATION: the paper's model has cross-modal MMTM
blocks; this library's model is late fusion without them, so the rule runs on a proxy of the two
paths (see docs/FIDELITY.md, Baselines). Results under this name are not the paper's Greedy.

The rule, unchanged:
  μ_main,m = Σ_{p∈main m} ‖∇p‖² / Σ_{p∈main m} ‖p‖²,  μ_byp,m likewise over the bypass of m
  M_main,m += μ_main,m,  M_byp,m += μ_byp,m       (cumulative; not updated while curating)
  BDR_m = log10(M_byp,m / M_main,m)
  when not curating and epoch ≥ start: if max_m BDR_m − min_m BDR_m > ε, curate for the next Q
  steps with caring modality c = argmax_m BDR_m     (M = 2: |BDR_0 − BDR_1| > ε, c = 0 if d > 0)
The proxy, for a late-fusion model with fused logits ℓ_F = Σ_k P_k (P_k the fusion layer's block
of modality k, the split-fusion logits):
  main of m    the encoder of m (encoder and projection);
  bypass of m  the fusion-layer block W_m and the shared bias — the only parameters through which
               z_m meets the other modalities (the shared squeeze layer of an MMTM likewise counts
               for every modality);
  curation     MMTM replaces the caring modality's excitation by its running mean, so branch c
               no longer depends on the other modality per sample. Here the other modalities
               reach branch c only through the shared softmax of ℓ_F, so in curation branch c is
               trained on CE(P_c + sg(R̄_¬c), y), with R̄_¬c = Σ_{k≠c} R̄_k the running means of the
               other blocks' batch-mean logits (a sample-independent constant), while the other
               branches keep the gradient of CE(ℓ_F, y).
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
  epsilon: float = 0.01    # BDR spread that starts curation (official; BalanceMM 0.001)
  window: int = 5          # Q, curated steps per curation (official and BalanceMM)
  start_epoch: int = 2     # curation is never entered before this epoch (official; BalanceMM 0)
  fusion: str = "concat"

  def validate(self, modalities):
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.require(self.window >= 1, "window", self.window, "an integer ≥ 1")
    base.require_modalities("greedy", modalities)


class GreedyState(struct.PyTreeNode):
  """Greedy's state.

  Attributes:
    main_sum: [M] cumulative learning speeds of the main paths, M_main,m.
    bypass_sum: [M] cumulative learning speeds of the bypass paths, M_byp,m.
    curating: bool scalar, curation mode for the next step.
    caring: int32 scalar, the caring modality c (meaningful while curating).
    curated: int32 scalar, curated steps taken in the current curation.
    logit_mean: [M, C] running means R̄_k of each block's batch-mean logits.
    forwards: int32 scalar, training forward passes seen (the running mean's count).
  """
  main_sum: jax.Array
  bypass_sum: jax.Array
  curating: jax.Array
  caring: jax.Array
  curated: jax.Array
  logit_mean: jax.Array
  forwards: jax.Array


def initial_state(num_modalities: int, num_classes: int) -> GreedyState:
  return GreedyState(main_sum=jnp.zeros((num_modalities,), jnp.float32),
                     bypass_sum=jnp.zeros((num_modalities,), jnp.float32),
                     curating=jnp.zeros((), bool), caring=jnp.zeros((), jnp.int32),
                     curated=jnp.zeros((), jnp.int32),
                     logit_mean=jnp.zeros((num_modalities, num_classes), jnp.float32),
                     forwards=jnp.zeros((), jnp.int32))


def learning_speed(grads, params) -> jax.Array:
  """μ = Σ‖∇p‖² / Σ‖p‖² over a group of parameters (sums of squares, then the ratio)."""
  return base.tree_sq_norm(grads) / jnp.maximum(base.tree_sq_norm(params), 1e-30)


def bypass_part(tree, index: int, num_modalities: int):
  """The proxy bypass of modality `index`: its rows of the concat kernel and the shared bias."""
  fusion = tree["fusion"]
  if "heads" in fusion:                                   # sum fusion: W_m and b_m
    return {"kernel": fusion["heads"]["kernel"][index], "bias": fusion["heads"]["bias"][index]}
  kernel = fusion["kernel"]
  return {"kernel": kernel.reshape(num_modalities, -1, kernel.shape[-1])[index],
          "bias": fusion["bias"]}


def bias_direction_ratios(main_sum: jax.Array, bypass_sum: jax.Array) -> jax.Array:
  """BDR_m = log10(M_byp,m / M_main,m)."""
  return jnp.log10(bypass_sum / jnp.maximum(main_sum, 1e-30))


def next_curation(state: GreedyState, main_speed: jax.Array, bypass_speed: jax.Array,
                  unlocked: jax.Array, epsilon: float, window: int):
  """Greedy's state machine after one backward pass (`Bias_Mitigation_Strong.on_backward_end`).

  Args:
    state: the state the step ran with.
    main_speed, bypass_speed: [M] μ of this step.
    unlocked: bool, epoch ≥ start epoch.
    epsilon: ε.
    window: Q.

  Returns:
    (new state fields as a dict, [M] BDR after this step's accumulation).
  """
  accumulate = ~state.curating | ~unlocked          # curating steps add nothing to the sums
  main_sum = jnp.where(accumulate, state.main_sum + main_speed, state.main_sum)
  bypass_sum = jnp.where(accumulate, state.bypass_sum + bypass_speed, state.bypass_sum)
  bdr = bias_direction_ratios(main_sum, bypass_sum)
  spread = bdr.max() - bdr.min()
  start = unlocked & ~state.curating & (spread > epsilon)
  curated = jnp.where(state.curating & unlocked, state.curated + 1, 0)
  stays = state.curating & unlocked & (curated < window)
  curating = start | stays
  caring = jnp.where(start, jnp.argmax(bdr).astype(jnp.int32), state.caring)
  return dict(main_sum=main_sum, bypass_sum=bypass_sum, curating=curating, caring=caring,
              curated=jnp.where(start, 0, curated).astype(jnp.int32)), bdr


def curated_loss(partial: jax.Array, fused: jax.Array, labels: jax.Array, mask,
                 curating: jax.Array, caring: jax.Array, logit_mean: jax.Array) -> jax.Array:
  """The training loss with the curation proxy (value: CE(ℓ_F, y) when not curating).

  Args:
    partial: [M, B, C] per-modality blocks P_k of the fused logits.
    fused: [B, C] ℓ_F = Σ_k P_k.
    labels: [B].
    mask: optional [B].
    curating: bool scalar.
    caring: int32 scalar c.
    logit_mean: [M, C] running means R̄_k.
  """
  plain = losses.masked_mean(losses.cross_entropy(fused, labels), mask)
  is_caring = jax.nn.one_hot(caring, partial.shape[0], dtype=partial.dtype)[:, None, None]
  own = (partial * is_caring).sum(0)                                  # P_c
  rest = (partial * (1.0 - is_caring)).sum(0)                         # Σ_{k≠c} P_k
  constant = jax.lax.stop_gradient((logit_mean * (1.0 - is_caring[:, :, 0])).sum(0))
  caring_loss = losses.cross_entropy(own + constant, labels)
  others_loss = losses.cross_entropy(jax.lax.stop_gradient(own) + rest, labels)
  curated = losses.masked_mean(caring_loss + others_loss, mask)
  return jnp.where(curating, curated, plain)


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities, num = spec.modalities, spec.num_modalities

  def loss(outputs, batch, state: GreedyState):
    labels, mask = batch["label"], batch.get("mask")
    value = curated_loss(outputs["partial_logits"], outputs["fused_logits"], labels, mask,
                         state.curating, state.caring, state.logit_mean)
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], labels), mask)
    batch_mean = losses.masked_mean(jnp.moveaxis(outputs["partial_logits"], -1, -2), mask)
    return value, {"metrics": {"loss_fused": fused}, "batch_mean": batch_mean}

  def compute_grads(forward, params, batch, state: GreedyState, step):
    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      value, aux = loss(outputs, batch, state)
      return value, (batch_stats, aux)

    (value, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    main = jnp.stack([learning_speed(base.encoder_part(grads[m]), base.encoder_part(params[m]))
                      for m in modalities])
    bypass = jnp.stack([learning_speed(bypass_part(grads, i, num), bypass_part(params, i, num))
                        for i in range(num)])
    unlocked = spec.epoch(step) >= opts.start_epoch
    fields, bdr = next_curation(state, main, bypass, unlocked, opts.epsilon, opts.window)
    metrics = {**aux["metrics"], "greedy_bdr": bdr,
               "greedy_curating": state.curating.astype(jnp.float32),
               "greedy_caring": state.caring.astype(jnp.float32)}
    return value, grads, batch_stats, {"metrics": metrics, "fields": fields,
                                       "batch_mean": aux["batch_mean"]}

  def update_state(state: GreedyState, aux, batch) -> GreedyState:
    del batch
    n = state.forwards.astype(jnp.float32)
    logit_mean = (jax.lax.stop_gradient(aux["batch_mean"]) + n * state.logit_mean) / (n + 1.0)
    return state.replace(**aux["fields"], logit_mean=logit_mean, forwards=state.forwards + 1)

  return base.Method(name="greedy", init_state=lambda: initial_state(num, spec.num_classes),
                     compute_grads=compute_grads, update_state=update_state,
                     predict=base.split_predict,
                     model={"fusion": opts.fusion, "detach_heads": True})


DEFINITION = base.Definition(name="greedy", build=build, options=Options, display="Greedy*",
                             note="\\* late-fusion proxy of Greedy's rule (no MMTM blocks).",
                             readout=lambda o: "split fusion layer")
