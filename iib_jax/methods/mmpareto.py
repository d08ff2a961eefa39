"""MMPareto: Pareto integration of multimodal and unimodal gradients (Wei & Hu, ICML 2024).

METHODS.md §12, from the official `GeWu-Lab/MMPareto_ICML2024` `code/MMPareto.py::train_epoch`
and `code/min_norm_solvers.py`. Losses L_F = CE(ℓ_F), L_m = CE(f_m(z_m)) (separate heads). For the
encoder parameters θ_m of each modality (head excluded):
  g^F = ∇_{θ_m} L_F,  g^U = ∇_{θ_m} L_m,  cos_m = cos(vec g^F, vec g^U)
  cos_m > 0: (k_F, k_U) = (½, ½); else the two-task min-norm point (k_F, k_U) = (c, 1 − c)
  per tensor p: n = 2(k_F g^F_p + k_U g^U_p), t = ∇_p(L_F + Σ_m L_m),
                grad_p = γ · n · (‖t‖/‖n‖ if ‖t‖ > ‖n‖ else 1)
Heads and the fusion layer get the plain gradient of L_F + Σ_m L_m. For M > 2 each encoder still
balances two tasks (fused vs its own unimodal loss). The K = M + 1 gradients come from one
forward pass: `jax.vjp` on the vector of losses, the pullback vmapped over one-hot cotangents.
BalanceMM records the gradients after all backward passes (cosine always 1); this follows the
official code.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  gamma: float = 1.5        # magnitude factor γ (hard-coded in the official code)
  fusion: str = "concat"    # fused head Linear(M·d, C), as the official model

  def validate(self, modalities):
    base.one_of("fusion", self.fusion, ("concat", "sum"))


def min_norm_coefficient(a: jax.Array, b: jax.Array, d: jax.Array) -> jax.Array:
  """c minimising ‖c g1 + (1 − c) g2‖² for two tasks (official `_min_norm_element_from2`).

  Args:
    a: ⟨g1, g1⟩.
    b: ⟨g1, g2⟩.
    d: ⟨g2, g2⟩.

  Returns:
    c ∈ [0.001, 0.999]: 0.999 if b ≥ a, 0.001 if b ≥ d, else (d − b)/(a + d − 2b).
  """
  interior = (d - b) / jnp.where(a + d - 2 * b > 0, a + d - 2 * b, 1.0)
  return jnp.where(b >= a, 0.999, jnp.where(b >= d, 0.001, interior))


def combine(fused_grad, unimodal_grad, total_grad, gamma: float):
  """MMPareto's encoder gradient from the fused-loss, unimodal-loss and total gradients.

  Args:
    fused_grad: pytree g^F of one encoder.
    unimodal_grad: pytree g^U of the same encoder.
    total_grad: pytree ∇(L_F + Σ L_m) of the same encoder.
    gamma: γ.

  Returns:
    (new gradient pytree, cos(g^F, g^U), k_F).
  """
  a = base.tree_sq_norm(fused_grad)
  b = base.tree_vdot(fused_grad, unimodal_grad)
  d = base.tree_sq_norm(unimodal_grad)
  cos = b / jnp.maximum(jnp.sqrt(a * d), 1e-20)
  c = min_norm_coefficient(a, b, d)
  k_fused = jnp.where(cos > 0, 0.5, c)
  k_uni = jnp.where(cos > 0, 0.5, 1.0 - c)

  def leaf(gf, gu, t):
    n = 2.0 * (k_fused * gf + k_uni * gu)
    norm_n = jnp.sqrt(jnp.sum(jnp.square(n.astype(jnp.float32))))
    norm_t = jnp.sqrt(jnp.sum(jnp.square(t.astype(jnp.float32))))
    scale = jnp.where(norm_t > norm_n, norm_t / jnp.where(norm_n > 0, norm_n, 1.0), 1.0)
    return (gamma * scale * n).astype(t.dtype)

  return jax.tree.map(leaf, fused_grad, unimodal_grad, total_grad), cos, k_fused


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities = spec.modalities

  def task_losses(outputs, batch):
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    return jnp.concatenate([fused[None], base.unimodal_ce(outputs["logits"], batch)])

  def compute_grads(forward, params, batch, state, step):
    del state, step

    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      return task_losses(outputs, batch), batch_stats

    values, per_task, batch_stats = base.multi_loss_grads(loss_fn, params)   # leaves [K, ...]
    total = jax.tree.map(lambda g: g.sum(0), per_task)
    grads, coss, ks = dict(total), [], []
    for i, m in enumerate(modalities):
      part = base.encoder_part(per_task[m])
      new, cos, k = combine(jax.tree.map(lambda g: g[0], part),
                            jax.tree.map(lambda g, i=i: g[1 + i], part),
                            base.encoder_part(total[m]), opts.gamma)
      grads[m] = base.with_encoder_part(total[m], new)
      coss.append(cos)
      ks.append(k)
    metrics = {"loss_fused": values[0], "ce_unimodal": values[1:],
               "pareto_cosine": jnp.stack(coss), "pareto_k_fused": jnp.stack(ks)}
    return values.sum(), grads, batch_stats, {"metrics": metrics}

  return base.Method(name="mmpareto", init_state=base.no_state, compute_grads=compute_grads,
                     model={"fusion": opts.fusion, "detach_heads": False})


DEFINITION = base.Definition(name="mmpareto", build=build, options=Options, display="MMPareto",
                             paper_optimizer=True)
