"""AGM: adaptive gradient modulation with Shapley-style unimodal outputs (Li et al., ICCV 2023).

METHODS.md §11, from the official `lihong2303/AGM_ICCV2023` (`model/CREMAD_net.py::GradMod`,
`run/CREMAD_main.py::train`) and, for M > 2, BalanceMM's `AGM_trainer.py` (same Shapley weights):
  f(S)   fused logits with the modalities outside S replaced by zeros; f(full) in train mode,
         the others in eval mode (BatchNorm running statistics, no statistics update)
  m_m    = Σ_{S ⊆ M∖{m}} |S|!(M−|S|−1)!/M! · (f(S ∪ {m}) − f(S)),  f(∅) := 0, so Σ_m m_m = F
         (M = 2: m_a = ½(F − F_¬a + F_¬v), the official formula)
  s_m    = mean_i −log max(softmax(m_m,i)[y_i], 1e-8)
  r_m    = exp(M/(M−1) · (mean_k s_k − s_m)),  r̂_m likewise from the running means S̄
         (M = 2: r_a = exp(s_v − s_a), the official direction; BalanceMM's is reversed)
  k_m    = exp(α · min(r̂_m − r_m, cap)) inside the modulation window, else 1
  loss   = CE(Σ_m scale_grad(m_m, k_m), y): the gradient entering m_m is multiplied by k_m
  S̄_m   ← S̄_m (it − 1)/it + s_m/it after the step (it = 1-based global iteration)
  if any entry of a fusion-layer kernel gradient leaves [−thr, thr]: clip the global norm.
The official code back-propagates through the eval-mode passes (`grad_through_padded`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  alpha: float = 1.0                  # official argparse default (README AV-MNIST example: 2.5)
  modulation_start: int = 0           # official window: epochs 0–20, inclusive
  modulation_end: int = 20
  cap: float = 10.0                   # min(r̂ − r, cap) (official 10; BalanceMM 7)
  clip_threshold: float = 1.0         # fusion-kernel gradient entry that triggers it (BalanceMM 5)
  clip_norm: float = 1.0              # global-norm clip applied then (BalanceMM 5)
  grad_through_padded: bool = True    # official: gradients flow through the eval-mode passes
  fusion: str = "concat"

  def validate(self, modalities):
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.require_modalities("agm", modalities)


class AGMState(struct.PyTreeNode):
  """AGM's state.

  Attributes:
    running: [M] running means S̄_m of the scores over all previous iterations (0 at start).
  """
  running: jax.Array


def subsets(num_modalities: int) -> list[tuple[int, ...]]:
  """Every non-empty subset of range(M), as sorted tuples (the padded passes and the full one)."""
  return [s for r in range(1, num_modalities + 1)
          for s in itertools.combinations(range(num_modalities), r)]


def shapley(fused: Mapping[tuple[int, ...], jax.Array], num_modalities: int) -> jax.Array:
  """Shapley-style unimodal outputs from the fused logits of every modality subset.

  Args:
    fused: subset (sorted tuple of modality indices, non-empty) -> [B, C] fused logits with
      the other modalities zeroed. The empty set counts as 0.
    num_modalities: M.

  Returns:
    [M, B, C] outputs m_m; their sum over m is the fused logits of the full set.
  """
  full = tuple(range(num_modalities))
  zero = jnp.zeros_like(fused[full])
  out = []
  for m in range(num_modalities):
    others = [i for i in range(num_modalities) if i != m]
    total = zero
    for r in range(len(others) + 1):
      weight = math.factorial(r) * math.factorial(num_modalities - r - 1) / math.factorial(
          num_modalities)
      for s in itertools.combinations(others, r):
        with_m = tuple(sorted(s + (m,)))
        without = fused[s] if s else zero
        total = total + weight * (fused[with_m] - without)
    out.append(total)
  return jnp.stack(out)


def scores(unimodal: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """s_m = mean_i −log max(softmax(m_m,i)[y_i], 1e-8).

  Args:
    unimodal: [M, B, C] Shapley outputs.
    labels: [B].
    mask: optional [B].

  Returns:
    [M] scores (lower: the modality explains the labels better).
  """
  probs = jax.nn.softmax(jnp.asarray(unimodal, jnp.float32), axis=-1)
  true = jnp.take_along_axis(probs, jnp.broadcast_to(labels[None, :, None],
                                                     probs.shape[:2] + (1,)), axis=-1)[..., 0]
  return losses.masked_mean(-jnp.log(jnp.maximum(true, 1e-8)), mask)


def ratios(score: jax.Array) -> jax.Array:
  """r_m = exp(M/(M−1) · (mean_k s_k − s_m)); for M = 2, r_a = exp(s_v − s_a)."""
  num = score.shape[0]
  return jnp.exp(num / (num - 1) * (score.mean() - score))


def coefficients(score: jax.Array, running: jax.Array, alpha: float, cap: float) -> jax.Array:
  """k_m = exp(α · min(r̂_m − r_m, cap)) from this batch's scores and the running means."""
  return jnp.exp(alpha * jnp.minimum(ratios(running) - ratios(score), cap))


def running_mean(running: jax.Array, score: jax.Array, iteration: jax.Array) -> jax.Array:
  """S̄ ← S̄ (it − 1)/it + s/it, it the 1-based global iteration."""
  it = jnp.asarray(iteration, jnp.float32)
  return running * (it - 1.0) / it + score / it


def clip_if_fusion_exceeds(grads, threshold: float, max_norm: float):
  """Clips the global gradient norm to max_norm when any fusion-kernel gradient entry leaves
  [−threshold, threshold] (official: `if (grad > 1).any() or (grad < -1).any()`, then
  `clip_grad_norm_`)."""
  kernels = [g for g in jax.tree.leaves(grads["fusion"]) if g.ndim >= 2]
  exceeds = jnp.any(jnp.stack([jnp.any(jnp.abs(g) > threshold) for g in kernels]))
  norm = optax.tree_utils.tree_norm(grads)
  factor = jnp.where(exceeds, jnp.minimum(1.0, max_norm / (norm + 1e-6)), 1.0)
  return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), exceeds


def padded(batch: Mapping[str, jax.Array], modalities: tuple[str, ...],
           keep: tuple[int, ...]) -> dict[str, jax.Array]:
  """The batch with every modality outside `keep` replaced by zeros."""
  return {**batch, **{m: jnp.zeros_like(batch[m]) for i, m in enumerate(modalities)
                      if i not in keep}}


def subset_outputs(forward, params, batch, modalities: tuple[str, ...], full: jax.Array,
                   stop: bool) -> dict[tuple[int, ...], jax.Array]:
  """Fused logits of every proper non-empty subset (eval mode), plus `full` for the full set."""
  num = len(modalities)
  out = {tuple(range(num)): full}
  for s in subsets(num)[:-1]:
    logits = forward(params, padded(batch, modalities, s), train=False)[0]["fused_logits"]
    out[s] = jax.lax.stop_gradient(logits) if stop else logits
  return out


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  modalities, num = spec.modalities, spec.num_modalities

  def compute_grads(forward, params, batch, state: AGMState, step):
    labels, mask = batch["label"], batch.get("mask")
    active = base.in_window(spec.epoch(step), opts.modulation_start, opts.modulation_end)

    def loss_fn(p):
      outputs, batch_stats = forward(p, batch, train=True)
      fused = subset_outputs(forward, p, batch, modalities, outputs["fused_logits"],
                             stop=not opts.grad_through_padded)
      unimodal = shapley(fused, num)                                         # [M, B, C]
      score = scores(jax.lax.stop_gradient(unimodal), labels, mask)
      k = jnp.where(active, coefficients(score, state.running, opts.alpha, opts.cap), 1.0)
      out = sum(base.scale_grad(unimodal[m], k[m]) for m in range(num))
      value = losses.masked_mean(losses.cross_entropy(out, labels), mask)
      return value, (batch_stats, {"score": score, "k": k})

    (value, (batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads, clipped = clip_if_fusion_exceeds(grads, opts.clip_threshold, opts.clip_norm)
    metrics = {"agm_coefficient": parts["k"], "agm_score": parts["score"],
               "agm_running_score": state.running, "agm_clipped": clipped.astype(jnp.float32)}
    aux = {"metrics": metrics, "score": parts["score"], "iteration": step + 1}
    return value, grads, batch_stats, aux

  def update_state(state: AGMState, aux, batch) -> AGMState:
    del batch
    return state.replace(running=running_mean(state.running, aux["score"], aux["iteration"]))

  def evaluate(apply, batch, state):
    """AGM's own unimodal outputs: the Shapley outputs m_m (2^M − 1 eval passes per batch), which
    is how the official code measures Acc_a / Acc_v."""
    del state

    def forward(params, b, train=False):
      del params, train
      return apply(b), None

    full = apply(batch)["fused_logits"]
    unimodal = shapley(subset_outputs(forward, None, batch, modalities, full, True), num)
    return full, unimodal

  return base.Method(name="agm", init_state=lambda: AGMState(jnp.zeros((num,), jnp.float32)),
                     compute_grads=compute_grads, update_state=update_state,
                     predict=base.split_predict, evaluate=evaluate,
                     model={"fusion": opts.fusion, "detach_heads": True})


DEFINITION = base.Definition(name="agm", build=build, options=Options, display="AGM",
                             paper_optimizer=True,
                             readout=lambda o: "Shapley outputs")
