"""The multimodal classifier: one branch per modality, then a fusion head.

Parameters are keyed by modality at the top level (`params['audio']`, `params['video']`, ...) with
the fusion head under `params['fusion']`, so a per-modality rule (gradient scaling, warm start from a
unimodal run, learning rates) selects a branch by its key, never by matching substrings of names.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax import budget
from iib_jax import fusion as fusion_lib
from iib_jax import schema
from iib_jax.models.encoders import make_encoder

FUSIONS = ("concat", "sum", "gated", "none")
_DENSE_INIT = nn.initializers.xavier_normal()


def normalize_frames(frames: jax.Array) -> jax.Array:
  """uint8 frames in [0, 255] -> float32, ImageNet-normalised: the host pipeline's
  `normalize_frames`, run on the device (`iib_jax.data`'s frames_dtype='uint8')."""
  mean = jnp.asarray(schema.IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(schema.IMAGENET_STD, jnp.float32)
  return (frames.astype(jnp.float32) / 255.0 - mean) / std


class Branch(nn.Module):
  """Encoder g_m, an optional projection to the common size d, and the unimodal head f_m.

  Attributes:
    encoder: encoder name (see `iib_jax.models.encoders.ENCODERS`).
    encoder_size: "full", "tiny" or "micro" (`iib_jax.models.encoders.SIZES`).
    feature_dim: common feature size d; a Dense projection is added when the encoder's
      output size differs (e.g. MobileNetV2's 1280).
    num_classes: C.
    detach_head: train the head on stop_gradient(z), so it reads the encoder without
      shaping it (unimodal accuracy of methods that have no unimodal loss).
    dtype: compute dtype.

  uint8 input is taken for frames in [0, 255] and ImageNet-normalised first (`normalize_frames`).
  `present` ([B], 1 = kept, 0 = removed by train-time damage) multiplies the normalised input, so
  a removed modality is exactly the zero `experiments.evaluate`'s "modality removed" feeds,
  whatever the input dtype (uint8 frames cannot hold it: docs/DATA.md).
  """
  encoder: str
  encoder_size: str
  feature_dim: int
  num_classes: int
  detach_head: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               present: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    if x.dtype == jnp.uint8:
      x = normalize_frames(x)
    if present is not None:
      x = x * jnp.asarray(present, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    z = make_encoder(self.encoder, size=self.encoder_size, dtype=self.dtype, name="encoder")(
        x, train=train)
    if z.shape[-1] != self.feature_dim:
      z = nn.Dense(self.feature_dim, dtype=self.dtype, kernel_init=_DENSE_INIT, name="proj")(z)
    head_in = jax.lax.stop_gradient(z) if self.detach_head else z
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_DENSE_INIT,
                      name="head")(head_in)
    return z, logits.astype(jnp.float32)


class ConcatFusion(nn.Module):
  """Late fusion logits = W [z_1; ...; z_M] + b.

  Also returns the split-fusion-layer unimodal logits W_m z_m + b / M used by OGM-GE, PMR and
  BalanceMM for their unimodal accuracies; their sum is the fused logits exactly.
  """
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_modalities, _, dim = feats.shape
    kernel = self.param("kernel", _DENSE_INIT, (num_modalities * dim, self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    kernel = kernel.reshape(num_modalities, dim, self.num_classes).astype(self.dtype)
    partials = jnp.einsum("mbd,mdc->mbc", feats.astype(self.dtype), kernel).astype(jnp.float32)
    partials = partials + bias / num_modalities
    return partials.sum(0), partials


class SumFusion(nn.Module):
  """Late fusion logits = Σ_m (W_m z_m + b_m); the unimodal logits are the summands."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array) -> tuple[jax.Array, jax.Array]:
    partials = nn.vmap(nn.Dense, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=0, out_axes=0)(self.num_classes, dtype=self.dtype,
                                              kernel_init=_DENSE_INIT, name="heads")(feats)
    partials = partials.astype(jnp.float32)
    return partials.sum(0), partials


class GatedFusion(nn.Module):
  """IIBalance's uncertainty-aware gated fusion and the fused head f_fuse (Eqs. 7–10).

  Attributes:
    num_classes: C.
    gate_hidden: hidden width of the gate G.
    gate_pool: Pool in Eq. 8, "identity" or "mean".
    gate_input: what the gate reads: "features" (Eq. 8: φ = [u; Pool(z)]) or "uncertainty"
      (φ = [u] only; the gate's output then depends on the features only through u).
    detach_uncertainty: stop gradients through u_m, so the fused loss cannot lower itself by
      making a modality's unimodal prediction less certain (FIDELITY: gradient through u).
    detach_gate_features: stop gradients from the gate into the encoders through Pool(z_m).
    rule: "gated" (Eqs. 7–10), or a fixed rule for the Table II ablation "w/o Stage II":
      "prior" (w = β for every sample) or "mean" (w = 1/M).
    dtype: compute dtype.

  Returns from `__call__` (each [B, M] float32 but the logits): `fused_logits` [B, C], `weights`,
  `gate_logits`, `uncertainty` (u_m), and the three terms of log α_m (Eq. 9)
  `log_alpha_prior` (log β_m), `log_alpha_uncertainty` (−u_m) and `log_alpha_gate`
  (log σ(G_m)), whose sum's softmax over modalities is `weights`. For the fixed rules the prior
  term is log w (log β_m or log 1/M) and the other two are 0, so the identity holds there too.
  """
  num_classes: int
  gate_hidden: int = 128
  gate_pool: str = "identity"
  detach_uncertainty: bool = True
  detach_gate_features: bool = False
  rule: str = "gated"
  gate_input: str = "features"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array, unimodal_logits: jax.Array,
               prior: jax.Array) -> dict[str, jax.Array]:
    num_modalities = feats.shape[0]
    uncertainty = budget.normalized_entropy_from_logits(unimodal_logits).T       # [B, M]
    if self.detach_uncertainty:
      uncertainty = jax.lax.stop_gradient(uncertainty)
    batch = feats.shape[1]
    if self.rule == "gated":
      gate_feats = jax.lax.stop_gradient(feats) if self.detach_gate_features else feats
      phi = fusion_lib.gate_input(uncertainty, list(gate_feats), pool=self.gate_pool,
                                  inputs=self.gate_input)
      gate_logits = fusion_lib.Gate(num_modalities, self.gate_hidden, dtype=self.dtype,
                                    name="gate")(phi)
      terms = fusion_lib.log_alpha_terms(prior, uncertainty, gate_logits)
      weights = fusion_lib.weights_from_terms(terms)                             # [B, M]
    elif self.rule in ("prior", "mean"):
      fixed = (jnp.asarray(prior, jnp.float32) if self.rule == "prior"
               else jnp.full((num_modalities,), 1.0 / num_modalities))
      weights = jnp.broadcast_to(fixed, (batch, num_modalities))
      gate_logits = jnp.zeros((batch, num_modalities), jnp.float32)
      # A fixed rule is all prior: log w, with no uncertainty or gate term (softmax(log w) = w,
      # as β sums to 1).
      zeros = jnp.zeros((batch, num_modalities), jnp.float32)
      terms = fusion_lib.LogAlphaTerms(prior=jnp.log(weights), uncertainty=zeros, gate=zeros)
    else:
      raise ValueError(f"fusion rule must be 'gated', 'prior' or 'mean', got {self.rule!r}")
    fused = fusion_lib.fuse(weights, feats)                                       # [B, d]
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_DENSE_INIT,
                      name="head")(fused)
    return {"fused_logits": logits.astype(jnp.float32), "weights": weights,
            "gate_logits": gate_logits, "uncertainty": uncertainty,
            "log_alpha_prior": terms.prior, "log_alpha_uncertainty": terms.uncertainty,
            "log_alpha_gate": terms.gate}


class MultimodalModel(nn.Module):
  """Encoders g_m, unimodal heads f_m and a fusion head, for any M ≥ 1 modalities.

  Attributes:
    modalities: batch keys of the modalities, in the order of the M axis.
    encoders: encoder name per modality (same order).
    num_classes: C.
    feature_dim: common feature size d.
    fusion: "concat", "sum", "gated" (IIBalance; needs `prior`) or "none" (unimodal runs).
    encoder_size: "full", "tiny" or "micro" (width-8 encoders for tests).
    detach_heads: unimodal heads read stop_gradient(z_m).
    gate_hidden, gate_pool, gate_input, detach_uncertainty, detach_gate_features: see
      GatedFusion.
    fusion_rule: GatedFusion's `rule`.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32, logits are float32.
  """
  modalities: Sequence[str]
  encoders: Sequence[str]
  num_classes: int
  feature_dim: int = 512
  fusion: str = "concat"
  encoder_size: str = "full"
  detach_heads: bool = False
  gate_hidden: int = 128
  gate_pool: str = "identity"
  detach_uncertainty: bool = True
  detach_gate_features: bool = False
  fusion_rule: str = "gated"
  gate_input: str = "features"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], train: bool,
               prior: jax.Array | None = None) -> dict[str, jax.Array]:
    """Runs every branch and the fusion head.

    Args:
      batch: dict with one input array per modality name; with `present` [B, M] (training
        batches with train-time damage: 1 = kept, 0 = removed), each modality's normalised input
        is multiplied by its column.
      train: BatchNorm uses batch statistics (and updates them) when True.
      prior: [M] relative budgets β, required by the gated fusion.

    Returns:
      dict with `features` [M, B, d], `logits` [M, B, C] (unimodal heads), and, unless fusion is
      "none", `fused_logits` [B, C]; concat/sum fusion add `partial_logits` [M, B, C]; gated fusion
      adds `weights`, `gate_logits`, `uncertainty` and the terms of log α `log_alpha_prior`,
      `log_alpha_uncertainty`, `log_alpha_gate`, each [B, M] (see GatedFusion).
    """
    if self.fusion not in FUSIONS:
      raise ValueError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
    if len(self.encoders) != len(self.modalities):
      raise ValueError(f"one encoder per modality: modalities={tuple(self.modalities)}, "
                       f"encoders={tuple(self.encoders)}")
    feats, logits = [], []
    present = batch.get("present")
    for i, (modality, encoder) in enumerate(zip(self.modalities, self.encoders)):
      z, l = Branch(encoder, self.encoder_size, self.feature_dim, self.num_classes,
                    self.detach_heads, self.dtype, name=modality)(
                        batch[modality], train, None if present is None else present[:, i])
      feats.append(z)
      logits.append(l)
    feats, logits = jnp.stack(feats), jnp.stack(logits)
    out = {"features": feats, "logits": logits}
    if self.fusion in ("concat", "sum"):
      head = ConcatFusion if self.fusion == "concat" else SumFusion
      out["fused_logits"], out["partial_logits"] = head(self.num_classes, self.dtype,
                                                        name="fusion")(feats)
    elif self.fusion == "gated":
      if prior is None:
        raise ValueError("gated fusion needs the relative budgets: pass prior=beta")
      out.update(GatedFusion(self.num_classes, self.gate_hidden, self.gate_pool,
                             self.detach_uncertainty, self.detach_gate_features,
                             self.fusion_rule, self.gate_input, self.dtype,
                             name="fusion")(feats, logits, prior))
    return out


def param_labels(params: Mapping[str, Any]) -> dict[str, Any]:
  """A pytree like `params` whose leaves name their owner: a modality or "fusion"."""
  return {key: jax.tree.map(lambda _, k=key: k, sub) for key, sub in params.items()}
