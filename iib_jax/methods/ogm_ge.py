"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

METHODS.md §8, from the official `GeWu-Lab/OGM-GE_CVPR2022` `main.py::train_epoch`:
  s_m = Σ_i softmax(ℓ_m,i)[y_i]            unimodal logits from the split fusion layer
  ρ_v = s_v / s_a, ρ_a = 1 / ρ_v
  ρ_v > 1: k_v = 1 − tanh(α ρ_v), k_a = 1;  else k_a = 1 − tanh(α ρ_a), k_v = 1
  inside the modulation window, every kernel g of encoder m:  g ← k_m g + ε,
  ε ~ N(0, (std(g) + 1e-8)²) with the unbiased std of the unscaled gradient (GE; both encoders).
For M > 2 the dominance ratio is taken against the weakest modality (BalanceMM's M-modality form):
ρ_m = s_m / min_k s_k, k_m = 1 − tanh(α ρ_m) where ρ_m > 1, else 1. For M = 2 this equals the
official rule except at an exact tie, where the official code still damps the first modality.

Which leaves are modulated: every kernel (ndim ≥ 2) of the encoder part of branch m — for the
ResNet-18 encoders of the reference these are exactly the 4-D conv kernels the official code
selects; BatchNorm parameters, biases, unimodal heads and the fusion layer are untouched.
The multiplier acts on the gradient (faithful); under Adam its constant part is almost cancelled
(METHODS.md §1.2), so run OGM-GE with SGD as the reference does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  alpha: float = 0.1          # README default run (0.8 suggested for CREMA-D)
  modulation_start: int = 0   # first modulated epoch, inclusive (README)
  modulation_end: int = 50    # last modulated epoch, inclusive (README); -1: to the end
  ge: bool = True             # add the generalisation-enhancement noise (OGM-GE vs OGM)
  fusion: str = "concat"      # "concat" or "sum" (official options with linear fusion)
  noise_seed: int = 0         # GE noise stream: key(run seed + noise_seed) folded with the step

  def validate(self, modalities):
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.require_modalities("ogm_ge", modalities)


def scores(unimodal_logits: jax.Array, labels: jax.Array,
           mask: jax.Array | None = None) -> jax.Array:
  """s_m = Σ_i softmax(ℓ_m,i)[y_i] over the real examples of the batch.

  Args:
    unimodal_logits: [M, B, C].
    labels: [B].
    mask: optional [B].

  Returns:
    [M] scores.
  """
  probs = jax.nn.softmax(jnp.asarray(unimodal_logits, jnp.float32), axis=-1)
  true = jnp.take_along_axis(probs, jnp.broadcast_to(labels[None, :, None],
                                                     probs.shape[:2] + (1,)), axis=-1)[..., 0]
  if mask is not None:
    true = true * mask
  return true.sum(-1)


def coefficients(score: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """The modulation coefficients k_m from the scores (official rule for M = 2).

  Args:
    score: [M] scores s_m.
    alpha: α.

  Returns:
    ([M] coefficients k_m in (0, 1], [M] dominance ratios ρ_m).
  """
  if score.shape[0] == 2:
    ratio_v = score[1] / score[0]
    ratio = jnp.stack([1.0 / ratio_v, ratio_v])
    damp = 1.0 - jnp.tanh(alpha * ratio)
    visual_dominates = ratio_v > 1
    k = jnp.where(visual_dominates, jnp.stack([1.0, damp[1]]), jnp.stack([damp[0], 1.0]))
    return k, ratio
  ratio = score / jnp.min(score)
  k = jnp.where(ratio > 1, 1.0 - jnp.tanh(alpha * ratio), 1.0)
  return k, ratio


def modulate(grads, modalities: tuple[str, ...], k: jax.Array, active: jax.Array,
             key: jax.Array | None):
  """g ← k_m g (+ ε) on every encoder kernel of modality m, inside the modulation window.

  Args:
    grads: gradients keyed by modality and "fusion".
    modalities: names in M-axis order.
    k: [M] coefficients.
    active: bool scalar, whether this step is inside the window.
    key: PRNG key for the GE noise, or None for plain OGM.
  """
  new = dict(grads)
  for i, m in enumerate(modalities):
    part = base.encoder_part(grads[m])
    leaves, treedef = jax.tree.flatten(part)
    out = []
    for j, g in enumerate(leaves):
      if g.ndim < 2:
        out.append(g)
        continue
      scaled = g * k[i]
      if key is not None:
        std = jnp.std(g.astype(jnp.float32), ddof=1)
        noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j), g.shape)
        scaled = scaled + (noise * (std + 1e-8)).astype(g.dtype)
      out.append(jnp.where(active, scaled, g))
    new[m] = base.with_encoder_part(grads[m], jax.tree.unflatten(treedef, out))
  return new


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  # The GE noise stream follows the run's seed; `noise_seed` offsets it.
  noise_seed = spec.seed + opts.noise_seed

  def loss(outputs, batch, state, step):
    del state, step
    labels, mask = batch["label"], batch.get("mask")
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], labels), mask)
    score = scores(jax.lax.stop_gradient(outputs["partial_logits"]), labels, mask)
    k, ratio = coefficients(score, opts.alpha)
    metrics = {"loss_fused": fused, "ogm_coefficient": k, "ogm_ratio": ratio}
    return fused, {"metrics": metrics, "coefficients": k}

  def rewrite_grads(grads, aux, state, step):
    del state
    active = base.in_window(spec.epoch(step), opts.modulation_start, opts.modulation_end)
    key = jax.random.fold_in(jax.random.key(noise_seed), step) if opts.ge else None
    return modulate(grads, spec.modalities, aux["coefficients"], active, key)

  return base.Method(name="ogm_ge", init_state=base.no_state, loss=loss,
                     rewrite_grads=rewrite_grads, predict=base.split_predict,
                     model={"fusion": opts.fusion, "detach_heads": True})


DEFINITION = base.Definition(name="ogm_ge", build=build, options=Options, display="OGM-GE",
                             paper_optimizer=True,
                             readout=lambda o: "split fusion layer")
