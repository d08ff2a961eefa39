"""Masked cross-entropy and the IIBalance objective (Eqs. 6, 11–13).

All means are over the *real* examples of a batch: padded examples carry mask 0 and never count.
Per-modality quantities carry a leading M axis, so every formula holds for any number of modalities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean of `values` over its last axis counting only entries with mask 1.

  Args:
    values: [..., B] per-example values.
    mask: optional [B] weights (1 real, 0 padding), the same for every leading index; or weights
      of their own per leading index, e.g. [M, B] for values [M, B] (each modality's examples:
      `iib_jax.methods.base.modality_mask`), each row normalised by its own count.

  Returns:
    [...] means (0 where no entry counts).
  """
  values = jnp.asarray(values, jnp.float32)
  if mask is None:
    return values.mean(-1)
  mask = jnp.asarray(mask, jnp.float32)
  return (values * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy in float32.

  Args:
    logits: [..., B, C].
    labels: [B] int labels (broadcast over leading axes).

  Returns:
    [..., B] losses.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.broadcast_to(labels, logits.shape[:-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def stage_one(unimodal_logits: jax.Array, labels: jax.Array, pra_losses: jax.Array,
              strength: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """L_I = mean_i Σ_m CE(f_m(z_m), y) + Σ_{m≠m*} λ_m L_PRA^m (Eq. 6).

  Args:
    unimodal_logits: [M, B, C] unimodal head logits.
    labels: [B].
    pra_losses: [M] PRA loss of each modality (the anchor's entry is ignored through λ = 0).
    strength: [M] alignment strengths λ_m, zero for the anchor.
    mask: optional [B], or [M, B] for examples that count for some modalities only (a modality
      removed by train-time damage: its head cannot learn from a zeroed input).

  Returns:
    scalar loss.
  """
  ce = masked_mean(cross_entropy(unimodal_logits, labels), mask)        # [M]
  return ce.sum() + (jnp.asarray(strength, jnp.float32) * pra_losses).sum()


def stage_two(fused_logits: jax.Array, unimodal_logits: jax.Array, weights: jax.Array,
              labels: jax.Array, gamma: float, mask: jax.Array | None = None,
              detach_weights: bool = True, present: jax.Array | None = None) -> jax.Array:
  """L_II = mean_i CE(f_fuse(Z), y) + γ mean_i Σ_m w_m CE(f_m(z_m), y) (Eq. 11).

  Args:
    fused_logits: [B, C].
    unimodal_logits: [M, B, C].
    weights: [B, M] fusion weights w.
    labels: [B].
    gamma: weight of the auxiliary unimodal term, γ ≥ 0.
    mask: optional [B].
    detach_weights: stop the auxiliary term's gradient into w, so the gate cannot lower it by
      moving weight to whichever modality is already fitted (FIDELITY: gradient through w).
    present: optional [M, B], 0 where train-time damage removed modality m of example i: that
      term of the auxiliary sum is left out (the example's fused term still counts).

  Returns:
    scalar loss.
  """
  weights = jnp.asarray(weights, jnp.float32)
  if detach_weights:
    weights = jax.lax.stop_gradient(weights)
  fused = masked_mean(cross_entropy(fused_logits, labels), mask)
  unimodal = cross_entropy(unimodal_logits, labels)                         # [M, B]
  if present is not None:
    unimodal = unimodal * jnp.asarray(present, jnp.float32)
  weighted = (weights.T * unimodal).sum(0)                                  # [B]
  return fused + gamma * masked_mean(weighted, mask)


def stage_weight(epoch: jax.Array | float, total_epochs: int, lambda_start: float) -> jax.Array:
  """λ(t) = λ_start (1 − t / T) (Eq. 12).

  Args:
    epoch: t, the 0-based epoch (an integer, or a fraction for the per-step schedule).
    total_epochs: T.
    lambda_start: λ_start in [0, 1].

  Returns:
    scalar float32 weight of Stage I.
  """
  t = jnp.asarray(epoch, jnp.float32)
  return jnp.float32(lambda_start) * (1.0 - t / total_epochs)


def total_loss(stage_one_loss: jax.Array, stage_two_loss: jax.Array, weight: jax.Array) -> jax.Array:
  """L = λ(t) L_I + (1 − λ(t)) L_II (Eq. 13)."""
  return weight * stage_one_loss + (1.0 - weight) * stage_two_loss
