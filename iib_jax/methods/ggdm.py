"""GGDM: geometric gradient divergence modulation (Hu et al., ACM MM 2025), from its code only.

METHODS.md §13, from `ConstantineWayne/GGDM` (`GGDM/run_ks.py`, `GGDM/utils/compute_volume.py`);
the naming of the pieces is ours. Two modalities (a, v) with separate heads ℓ_a, ℓ_v:
  L_cls = CE(½ℓ_a + ½ℓ_v, y)
  L_al  = ½ KL(r ‖ p_a) + ½ KL(r ‖ p_v),  r = ½(p_a + p_v)            (the code's "JS" loss)
  beliefs B_X = 10 · mean_batch(softplus(ℓ_X) / Σ_c (softplus(ℓ_X)_c + 1)), entries < 0.1 → 0.5
  g^s_X = ∇_{θ_X} L_cls, g^u_X = ∇_{θ_X} L_al over encoder X (heads excluded), flattened
  vol(x1, x2, x3) = sqrt|det G|, G = [[x1·x1, x1·x2, Σx1Σx3], [x1·x2, x2·x2, Σx2Σx3],
                                      [Σx1Σx3, Σx2Σx3, x3·x3]]
  vol_a = vol(g^u_v, g^s_v, g^s_a), vol_v = vol(g^u_a, g^s_a, g^s_v), q = vol_a/(vol_a + vol_v)
  ratio_a = 1 − tanh(q) (1 if vol_a < 0.3), ratio_v = 1 − tanh(1 − q) (1 if vol_v < 0.3)
  epoch < 100: encoder a gets 4(ratio_a g^u_a + g^s_a), encoder v gets 4(2 ratio_v g^u_v + g^s_v)
  0 < epoch ≤ 80: head X's kernel columns (classes) and bias scaled by B_X
Prediction: argmax(½ℓ_a + ½ℓ_v). The method is defined for exactly two modalities; the first
modality of the config plays the code's audio, the second its video.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  alignment: str = "code"               # "code": ½KL(r‖p_a) + ½KL(r‖p_v); "js": ½KL(p_a‖r) + ½KL(p_v‖r)
  encoder_scale: float = 4.0            # the hard-coded factor 4
  alignment_factors: tuple = (1.0, 2.0)  # extra factor on g^u per modality (code: 2 on video)
  volume_threshold: float = 0.3         # vol below this: ratio 1
  belief_scale: float = 10.0            # B = 10 · mean belief
  belief_floor: float = 0.1             # belief entries below this ...
  belief_fill: float = 0.5              # ... are set to this
  encoder_epochs: int = 100             # encoder modulation while epoch < this
  head_start: int = 1                   # head modulation in [head_start, head_end] (code: 0 < e ≤ 80)
  head_end: int = 80

  def validate(self, modalities):
    base.one_of("alignment", self.alignment, ("code", "js"))
    base.require(len(self.alignment_factors) == 2, "alignment_factors", self.alignment_factors,
                 "two factors (the first modality's, the second's)")
    # Its volumes pair the two modalities' gradients.
    base.require_modalities("ggdm", modalities, exactly=2)


def alignment_loss(logits: jax.Array, mask: jax.Array | None = None,
                   kind: str = "code") -> jax.Array:
  """The divergence between the two unimodal predictive distributions.

  Args:
    logits: [2, B, C] unimodal logits.
    mask: optional [B].
    kind: "code" (mixture as the first KL argument, as PyTorch's kl_div computes it in the
      reference) or "js" (textbook Jensen–Shannon).

  Returns:
    scalar, batch mean.
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)        # [2, B, C]
  p = jnp.exp(logp)
  r = 0.5 * (p[0] + p[1])
  logr = jnp.log(jnp.maximum(r, 1e-30))
  if kind == "code":
    per = 0.5 * (r * (logr - logp[0])).sum(-1) + 0.5 * (r * (logr - logp[1])).sum(-1)
  else:
    per = 0.5 * (p[0] * (logp[0] - logr)).sum(-1) + 0.5 * (p[1] * (logp[1] - logr)).sum(-1)
  return losses.masked_mean(per, mask)


def beliefs(logits: jax.Array, mask: jax.Array | None = None, scale: float = 10.0,
            floor: float = 0.1, fill: float = 0.5) -> jax.Array:
  """Evidential class beliefs per modality: B = scale · mean_batch e/S, small entries filled.

  Args:
    logits: [M, B, C].
    mask: optional [B].

  Returns:
    [M, C] beliefs (no gradient).
  """
  e = jax.nn.softplus(jax.lax.stop_gradient(jnp.asarray(logits, jnp.float32)))
  b = e / (e + 1.0).sum(-1, keepdims=True)
  mean = losses.masked_mean(jnp.moveaxis(b, -1, -2), mask)                     # [M, C]
  belief = scale * mean
  return jnp.where(belief < floor, fill, belief)


def volume(x1, x2, x3) -> jax.Array:
  """sqrt|det G| of GGDM's pseudo-Gram matrix of three gradient pytrees (x3 may have another
  structure: only its sum and squared norm enter)."""
  s1, s2, s3 = base.tree_sum(x1), base.tree_sum(x2), base.tree_sum(x3)
  g11, g12, g22 = base.tree_sq_norm(x1), base.tree_vdot(x1, x2), base.tree_sq_norm(x2)
  g13, g23, g33 = s1 * s3, s2 * s3, base.tree_sq_norm(x3)
  det = (g11 * (g22 * g33 - g23 * g23) - g12 * (g12 * g33 - g23 * g13)
         + g13 * (g12 * g23 - g22 * g13))
  return jnp.sqrt(jnp.abs(det))


def ratios(vol_a: jax.Array, vol_v: jax.Array, threshold: float = 0.3) -> jax.Array:
  """[2] alignment ratios from the two volumes."""
  q = vol_a / jnp.maximum(vol_a + vol_v, 1e-30)
  ratio_a = jnp.where(vol_a < threshold, 1.0, 1.0 - jnp.tanh(q))
  ratio_v = jnp.where(vol_v < threshold, 1.0, 1.0 - jnp.tanh(1.0 - q))
  return jnp.stack([ratio_a, ratio_v])


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities = spec.modalities
  factors = tuple(float(f) for f in opts.alignment_factors)

  def task_losses(outputs, batch):
    logits, labels, mask = outputs["logits"], batch["label"], batch.get("mask")
    cls = losses.masked_mean(losses.cross_entropy(0.5 * logits[0] + 0.5 * logits[1], labels), mask)
    return jnp.stack([cls, alignment_loss(logits, mask, opts.alignment)])

  def compute_grads(forward, params, batch, state, step):
    del state
    epoch = spec.epoch(step)

    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      return task_losses(outputs, batch), (batch_stats, outputs["logits"])

    values, per_task, (batch_stats, logits) = base.multi_loss_grads(loss_fn, params)
    grads = jax.tree.map(lambda g: g.sum(0), per_task)
    sup = [jax.tree.map(lambda g: g[0], base.encoder_part(per_task[m])) for m in modalities]
    uni = [jax.tree.map(lambda g: g[1], base.encoder_part(per_task[m])) for m in modalities]
    vol_a = volume(uni[1], sup[1], sup[0])
    vol_v = volume(uni[0], sup[0], sup[1])
    ratio = ratios(vol_a, vol_v, opts.volume_threshold)
    belief = beliefs(logits, batch.get("mask"), opts.belief_scale, opts.belief_floor,
                     opts.belief_fill)
    encoders_on = epoch < opts.encoder_epochs
    heads_on = base.in_window(epoch, opts.head_start, opts.head_end)
    for i, m in enumerate(modalities):
      scale = opts.encoder_scale
      modulated = jax.tree.map(lambda gu, gs, i=i: scale * (factors[i] * ratio[i] * gu + gs),
                               uni[i], sup[i])
      encoder = jax.tree.map(lambda new, old: jnp.where(encoders_on, new, old), modulated,
                             base.encoder_part(grads[m]))
      head = grads[m]["head"]
      b = jnp.where(heads_on, belief[i], 1.0)
      head = {"kernel": head["kernel"] * b[None, :], "bias": head["bias"] * b}
      grads[m] = base.with_encoder_part({**grads[m], "head": head}, encoder)
    metrics = {"loss_cls": values[0], "loss_alignment": values[1],
               "ggdm_volume": jnp.stack([vol_a, vol_v]), "ggdm_ratio": ratio,
               "ggdm_belief_mean": belief.mean(-1)}
    return values.sum(), grads, batch_stats, {"metrics": metrics}

  def predict(outputs, state):
    del state
    logits = outputs["logits"]
    return 0.5 * logits[0] + 0.5 * logits[1], logits

  return base.Method(name="ggdm", init_state=base.no_state, compute_grads=compute_grads,
                     predict=predict, model={"fusion": "none", "detach_heads": False})


DEFINITION = base.Definition(name="ggdm", build=build, options=Options, display="GGDM",
                             paper_optimizer=True)
