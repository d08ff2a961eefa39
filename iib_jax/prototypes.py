"""Anchor prototypes and prototype-guided relative alignment (Eqs. 3, 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class PrototypeBank(struct.PyTreeNode):
  """Class prototypes of the anchor modality, carried in the train state.

  Attributes:
    protos: [C, d] float32 prototypes.
    seen: [C] bool, whether class c has been seen in a batch yet.
  """
  protos: jax.Array
  seen: jax.Array


def init_bank(num_classes: int, dim: int) -> PrototypeBank:
  """An empty bank: zero prototypes, no class seen yet (FIDELITY: prototype initialisation)."""
  return PrototypeBank(protos=jnp.zeros((num_classes, dim), jnp.float32),
                       seen=jnp.zeros((num_classes,), bool))


def ema_update(bank: PrototypeBank, feats: jax.Array, labels: jax.Array, rho: float,
               mask: jax.Array | None = None) -> PrototypeBank:
  """P_c ← ρ P_c + (1 − ρ) mean{z_i : y_i = c} for every class present in the batch (Eq. 3).

  A class seen for the first time takes the batch mean; absent classes keep their prototype.
  Static shapes and no Python control flow on values, so it runs inside `jax.jit`.

  Args:
    bank: the current bank.
    feats: [B, d] anchor features of the batch.
    labels: [B] int labels.
    rho: EMA momentum in [0, 1).
    mask: optional [B]; padded examples (0) never count.

  Returns:
    The updated bank.
  """
  # stop_gradient: Eq. 3 is a running mean, not a learned quantity.
  feats = jax.lax.stop_gradient(jnp.asarray(feats, jnp.float32))
  onehot = jax.nn.one_hot(labels, bank.protos.shape[0], dtype=jnp.float32)   # [B, C]
  if mask is not None:
    onehot = onehot * jnp.asarray(mask, jnp.float32)[:, None]
  counts = onehot.sum(0)                                                      # [C]
  means = (onehot.T @ feats) / jnp.maximum(counts, 1.0)[:, None]              # [C, d]
  blended = jnp.where(bank.seen[:, None], rho * bank.protos + (1.0 - rho) * means, means)
  present = counts > 0
  return bank.replace(protos=jnp.where(present[:, None], blended, bank.protos),
                      seen=bank.seen | present)


def prototype_logits(feats: jax.Array, protos: jax.Array, tau_p: float,
                     similarity: str = "dot") -> jax.Array:
  """s_{i,c} = sim(z_i, P_c) / τ_p.

  Args:
    feats: [B, d] features of a non-anchor modality.
    protos: [C, d] anchor prototypes (treated as constants).
    tau_p: prototype temperature (0.5 in the paper).
    similarity: "dot" (the paper's literal z·P) or "cosine" (both L2-normalised first).

  Returns:
    [B, C] float32 logits.
  """
  feats = jnp.asarray(feats, jnp.float32)
  protos = jax.lax.stop_gradient(jnp.asarray(protos, jnp.float32))
  if similarity == "cosine":
    feats = feats * jax.lax.rsqrt(jnp.maximum((feats ** 2).sum(-1, keepdims=True), 1e-12))
    protos = protos * jax.lax.rsqrt(jnp.maximum((protos ** 2).sum(-1, keepdims=True), 1e-12))
  elif similarity != "dot":
    raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
  return feats @ protos.T / tau_p


def pra_loss(feats: jax.Array, labels: jax.Array, protos: jax.Array, tau_p: float,
             similarity: str = "dot", seen: jax.Array | None = None,
             mask: jax.Array | None = None) -> jax.Array:
  """Prototype contrastive loss of one non-anchor modality, mean over the batch (Eq. 4).

  Cross-entropy of the logits z·P_c / τ_p over the C prototypes, target = the sample's class.

  Args:
    feats: [B, d] features z_m.
    labels: [B] int labels.
    protos: [C, d] anchor prototypes; no gradient flows into them.
    tau_p: temperature.
    similarity: "dot" or "cosine" (FIDELITY: PRA similarity).
    seen: optional [C] bool. When given, prototypes of classes not seen yet are left out of the
      softmax and samples whose own class is unseen do not count (FIDELITY: unseen prototypes).
    mask: optional [B] example weights (0 = padding).

  Returns:
    scalar loss (0 when no sample counts).
  """
  logits = prototype_logits(feats, protos, tau_p, similarity)
  weights = jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  if seen is not None:
    logits = jnp.where(seen[None, :], logits, -1e9)
    weights = weights * seen[labels].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
