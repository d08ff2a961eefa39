"""Uncertainty-aware gated fusion (Eqs. 7–10).

α_m = β_m · exp(−u_m) · σ(G_m(φ)),  w = α / Σ_k α_k,  Z = Σ_m w_m z_m,
with φ = [u_1..u_M; Pool(z_1)..Pool(z_M)] the gate input (or [u_1..u_M] alone, an option). log α
is the sum of three terms (`log_alpha_terms`): the prior log β_m, the uncertainty −u_m and the
gate log σ(G_m).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Gate(nn.Module):
  """The paper's "lightweight network" G: φ → M logits (an MLP; FIDELITY: gate architecture).

  Attributes:
    num_modalities: M.
    hidden: width of the hidden layer.
    dtype: compute dtype; the logits are returned in float32.
  """
  num_modalities: int
  hidden: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, phi: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.xavier_normal())
    x = nn.relu(dense(self.hidden, "hidden")(phi))
    return dense(self.num_modalities, "out")(x).astype(jnp.float32)


GATE_INPUTS = ("features", "uncertainty")
GATE_POOLS = ("identity", "mean")


def gate_input(uncertainty: jax.Array, feats: Sequence[jax.Array] | jax.Array,
               pool: str = "identity", inputs: str = "features") -> jax.Array:
  """φ = [u_1..u_M; Pool(z_1)..Pool(z_M)] (Eq. 8), or φ = [u_1..u_M] alone.

  Args:
    uncertainty: [B, M] per-sample normalised entropies u_m.
    feats: M arrays [B, d] (or one [M, B, d] array) of pooled modality features.
    pool: "identity" (z_m is already globally pooled, so Pool is the identity; d_p = d) or
      "mean" (mean over channels; d_p = 1). FIDELITY: Pool in Eq. 8.
    inputs: "features" (Eq. 8: the uncertainties and the pooled features) or "uncertainty"
      (the uncertainties only: a gate that cannot read the features, so nothing outside the
      training distribution of z reaches it except through u). FIDELITY: gate input.

  Returns:
    [B, M + M·d_p] gate input ([B, M] for inputs="uncertainty").
  """
  if pool not in GATE_POOLS:
    raise ValueError(f"gate pool must be 'identity' or 'mean', got {pool!r}")
  if inputs not in GATE_INPUTS:
    raise ValueError(f"gate input must be 'features' or 'uncertainty', got {inputs!r}")
  feats = [jnp.asarray(z) for z in feats]
  dtype = feats[0].dtype
  if inputs == "uncertainty":
    return uncertainty.astype(dtype)
  pooled = feats if pool == "identity" else [z.mean(-1, keepdims=True) for z in feats]
  return jnp.concatenate([uncertainty.astype(dtype)] + pooled, axis=-1)


# Names of the three terms in the model's outputs and the eval step's (each [B, M]).
LOG_ALPHA_TERMS = ("log_alpha_prior", "log_alpha_uncertainty", "log_alpha_gate")


class LogAlphaTerms(NamedTuple):
  """The three terms of log α_m (Eq. 9), each [B, M] float32; their sum is log α.

  log(w_a / w_v) = log(β_a / β_v) + (u_v − u_a) + [log σ(G_a) − log σ(G_v)]: the prior, the
  uncertainty and the gate's share of a weight ratio.
  """
  prior: jax.Array         # log β_m, the same on every row
  uncertainty: jax.Array   # −u_m
  gate: jax.Array          # log σ(G_m(φ))


def log_alpha_terms(beta: jax.Array, uncertainty: jax.Array,
                    gate_logits: jax.Array) -> LogAlphaTerms:
  """log α_m = log β_m − u_m + log σ(G_m), term by term (Eq. 9).

  Args:
    beta: [M] relative budgets (the prior).
    uncertainty: [B, M] normalised entropies u_m.
    gate_logits: [B, M] gate outputs G(φ).

  Returns:
    LogAlphaTerms(prior, uncertainty, gate), each [B, M] float32. log σ is
    `jax.nn.log_sigmoid`, finite for any logit.
  """
  uncertainty = jnp.asarray(uncertainty, jnp.float32)
  prior = jnp.broadcast_to(jnp.log(jnp.asarray(beta, jnp.float32))[None, :], uncertainty.shape)
  return LogAlphaTerms(prior=prior, uncertainty=-uncertainty,
                       gate=jax.nn.log_sigmoid(jnp.asarray(gate_logits, jnp.float32)))


def weights_from_terms(terms: LogAlphaTerms) -> jax.Array:
  """w = softmax over modalities of prior + uncertainty + gate (Eq. 9–10): [B, M] float32."""
  return jax.nn.softmax(terms.prior + terms.uncertainty + terms.gate, axis=-1)


def fusion_weights(beta: jax.Array, uncertainty: jax.Array, gate_logits: jax.Array) -> jax.Array:
  """w = α / Σα with α = β · exp(−u) · σ(G) (Eqs. 9–10).

  Computed as a softmax of log α = log β − u + log σ(G) (`log_alpha_terms`), which equals the
  ratio exactly but stays finite when β is tiny (τ = 0.07 makes β nearly one-hot when budgets
  differ).

  Args:
    beta: [M] relative budgets (the prior).
    uncertainty: [B, M] normalised entropies.
    gate_logits: [B, M] gate outputs G(φ).

  Returns:
    [B, M] float32 fusion weights, each row summing to 1.
  """
  return weights_from_terms(log_alpha_terms(beta, uncertainty, gate_logits))


def fuse(weights: jax.Array, feats: jax.Array) -> jax.Array:
  """Z = Σ_m w_m z_m (Eq. 10).

  Args:
    weights: [B, M] fusion weights.
    feats: [M, B, d] modality features.

  Returns:
    [B, d] fused feature, in the features' dtype.
  """
  return jnp.einsum("bm,mbd->bd", weights.astype(feats.dtype), feats)
