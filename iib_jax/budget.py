"""Intrinsic information budgets (Eqs. 1, 2, 5 of the IIBalance paper).

A modality's budget is the average confidence, one minus the normalised entropy, of a unimodal model
trained to convergence. The relative budget β is a softmax of the budgets at temperature τ; the
modality with the largest β is the anchor, and every other modality is aligned to it with strength
λ_m = ReLU(β_anchor − β_m).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# The budget temperature of the paper (§V-C): β = softmax(B / τ) with τ = 0.07.
PAPER_TAU = 0.07


def normalized_entropy(probs: jax.Array) -> jax.Array:
  """Shannon entropy over the last axis divided by log C, in [0, 1].

  Args:
    probs: [..., C] probability distributions. 0·log 0 counts as 0.

  Returns:
    [...] normalised entropies.
  """
  probs = jnp.asarray(probs, jnp.float32)
  num_classes = probs.shape[-1]
  positive = probs > 0
  # The inner where keeps log's argument positive, so the gradient at p = 0 stays finite.
  plogp = jnp.where(positive, probs * jnp.log(jnp.where(positive, probs, 1.0)), 0.0)
  return -plogp.sum(-1) / jnp.log(num_classes)


def normalized_entropy_from_logits(logits: jax.Array) -> jax.Array:
  """Normalised entropy of softmax(logits), computed stably in log space (Eq. 7).

  Args:
    logits: [..., C] unnormalised scores.

  Returns:
    [...] normalised entropies in [0, 1].
  """
  logits = jnp.asarray(logits, jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -(jnp.exp(log_probs) * log_probs).sum(-1) / jnp.log(logits.shape[-1])


def information_budget(probs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """B_m = mean over samples of 1 − H(p_m(·|x)) (Eq. 1). Labels are not used.

  Args:
    probs: [N, C] predictive distributions of one modality's unimodal model.
    mask: optional [N] weights; 0 marks padding that must not count.

  Returns:
    scalar budget in [0, 1].
  """
  confidence = 1.0 - normalized_entropy(probs)
  if mask is None:
    return confidence.mean()
  mask = jnp.asarray(mask, jnp.float32)
  return (confidence * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def relative_budget(budgets: jax.Array, tau: float = PAPER_TAU) -> jax.Array:
  """β = softmax(B / τ) over modalities (Eq. 2).

  Args:
    budgets: [M] information budgets.
    tau: temperature; the paper uses 0.07.

  Returns:
    [M] relative budgets summing to 1.
  """
  return jax.nn.softmax(jnp.asarray(budgets, jnp.float32) / tau)


def anchor_index(beta: jax.Array) -> jax.Array:
  """m* = argmax_m β_m, the modality whose prototypes the others are aligned to."""
  return jnp.argmax(jnp.asarray(beta))


def alignment_strength(beta: jax.Array) -> jax.Array:
  """λ_m = ReLU(β_{m*} − β_m) (Eq. 5); zero for the anchor.

  Args:
    beta: [M] relative budgets.

  Returns:
    [M] alignment strengths.
  """
  beta = jnp.asarray(beta, jnp.float32)
  return jax.nn.relu(beta.max() - beta)
