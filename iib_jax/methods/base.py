"""What a balancing method is: a handful of pure functions over the shared train state.

A method never owns a training loop. The jit-compiled step (`iib_jax.train`) calls, in order:
`forward_kwargs` (extra model inputs from the method's state), `compute_grads` (by default the
gradient of `loss`), `rewrite_grads`, the optimiser, then `update_state`. Evaluation calls `predict`.
Adding a method means writing these functions in a new file and registering its builder in
`iib_jax.methods.METHODS`; the step and the runner do not change.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from iib_jax import losses

PyTree = Any


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Static facts a method is built from.

  Attributes:
    modalities: modality names, in the order of the M axis.
    num_classes: C.
    feature_dim: d.
    steps_per_epoch: optimiser steps in one epoch (converts the traced step to an epoch).
    total_epochs: T.
    budgets: [M] information budgets from the IIB phase, for methods that need them.
  """
  modalities: tuple[str, ...]
  num_classes: int
  feature_dim: int
  steps_per_epoch: int
  total_epochs: int
  budgets: tuple[float, ...] | None = None

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  def epoch(self, step: jax.Array) -> jax.Array:
    """The 0-based epoch of a (traced) step, as int32."""
    return (step // self.steps_per_epoch).astype(jnp.int32)


def no_state() -> PyTree:
  return ()


def no_kwargs(state: PyTree) -> dict[str, Any]:
  del state
  return {}


def keep_state(state: PyTree, aux: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> PyTree:
  del aux, batch
  return state


def keep_grads(grads: PyTree, aux: Mapping[str, Any], state: PyTree, step: jax.Array) -> PyTree:
  del aux, state, step
  return grads


def default_predict(outputs: Mapping[str, jax.Array], state: PyTree) -> tuple[jax.Array, jax.Array]:
  """(fused logits [B, C], unimodal logits [M, B, C]): the fused head and the unimodal heads."""
  del state
  logits = outputs["logits"]
  return outputs.get("fused_logits", logits.sum(0)), logits


class Method(NamedTuple):
  """A balancing method as data.

  Attributes:
    name: registry name.
    init_state: () -> the method's own state pytree (checkpointed with the train state).
    loss: (outputs, batch, state, step) -> (scalar loss, aux); aux["metrics"] is a dict of
      device arrays that the step reports.
    model: overrides of `MultimodalModel` fields the method needs (e.g. fusion="gated").
    forward_kwargs: state -> extra keyword arguments of the model's forward pass.
    compute_grads: optional (forward, params, batch, state, step) -> (loss, grads, batch_stats,
      aux), for methods that need more than the gradient of one loss (several losses' gradients,
      extra forward passes). `forward(params, batch, train=True, **kwargs)` returns
      (outputs, new batch_stats).
    rewrite_grads: (grads, aux, state, step) -> grads, e.g. per-modality scaling.
    update_state: (state, aux, batch) -> new state, after the optimiser update.
    predict: (outputs, state) -> (fused logits [B, C], unimodal logits [M, B, C]) for evaluation.
    needs_budgets: whether the runner must estimate information budgets first.
  """
  name: str
  init_state: Callable[[], PyTree]
  loss: Callable[..., tuple[jax.Array, dict[str, Any]]]
  model: Mapping[str, Any] = {}
  forward_kwargs: Callable[[PyTree], dict[str, Any]] = no_kwargs
  compute_grads: Callable[..., Any] | None = None
  rewrite_grads: Callable[..., PyTree] = keep_grads
  update_state: Callable[..., PyTree] = keep_state
  predict: Callable[..., tuple[jax.Array, jax.Array]] = default_predict
  needs_budgets: bool = False


def gradients(method: Method, forward: Callable[..., Any], params: PyTree,
              batch: Mapping[str, jax.Array], state: PyTree, step: jax.Array):
  """(loss, grads, batch_stats, aux) of a method: its own rule, or the gradient of its loss."""
  if method.compute_grads is not None:
    return method.compute_grads(forward, params, batch, state, step)

  def loss_fn(p):
    outputs, batch_stats = forward(p, batch, train=True, **method.forward_kwargs(state))
    loss, aux = method.loss(outputs, batch, state, step)
    return loss, (batch_stats, aux)

  (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, batch_stats, aux


def unimodal_ce(logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """[M] masked mean cross-entropy of each modality's logits [M, B, C]."""
  return losses.masked_mean(losses.cross_entropy(logits, batch["label"]), batch.get("mask"))


# ------------------------------------------------------------------------------------------------
# Shared pieces of the balancing baselines (METHODS.md §1.5).


def in_window(epoch: jax.Array, start: int, end: int) -> jax.Array:
  """Whether a (traced) 0-based epoch lies in [start, end], both inclusive; end < 0: no end."""
  inside = epoch >= start
  return inside if end < 0 else inside & (epoch <= end)


def scale_grad(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity in the forward pass; multiplies the gradient flowing back into `x` by `scale`.

  sg(x) + k (x − sg(x)): the value is x, the derivative k. This is the functional form of a
  backward hook on an identity module (AGM's gradient modulation).
  """
  scale = jax.lax.stop_gradient(jnp.asarray(scale, x.dtype))
  return jax.lax.stop_gradient(x) + scale * (x - jax.lax.stop_gradient(x))


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """⟨a, b⟩ over every leaf of two pytrees of one structure, in float32."""
  return sum((jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.float32(0))


def tree_sq_norm(a: PyTree) -> jax.Array:
  """‖a‖² over every leaf of a pytree, in float32."""
  return tree_vdot(a, a)


def tree_sum(a: PyTree) -> jax.Array:
  """Σ of every entry of every leaf of a pytree, in float32."""
  return sum((x.astype(jnp.float32).sum() for x in jax.tree.leaves(a)), jnp.float32(0))


def encoder_part(branch: Mapping[str, Any]) -> dict[str, Any]:
  """A branch's encoder parameters (encoder and optional projection), without the unimodal head.

  The multimodal model keys each branch as {"encoder", "proj"?, "head"}; the baselines that act
  on "encoder m" (OGM-GE, MMPareto, GGDM) act on everything but the head.
  """
  return {k: v for k, v in branch.items() if k != "head"}


def with_encoder_part(branch: Mapping[str, Any], encoder: Mapping[str, Any]) -> dict[str, Any]:
  """`branch` with its encoder part (see `encoder_part`) replaced by `encoder`."""
  return {**branch, **encoder}


def scale_modalities(grads: PyTree, modalities: tuple[str, ...], scales: jax.Array) -> PyTree:
  """Multiplies the gradient of each modality's branch (encoder, projection, head) by its scale.

  Args:
    grads: gradients keyed by modality name and "fusion".
    modalities: names in the order of the M axis.
    scales: [M] device scalars.

  Returns:
    grads with every leaf of modality m multiplied by scales[m]; "fusion" unchanged.
  """
  new = dict(grads)
  for i, m in enumerate(modalities):
    new[m] = jax.tree.map(lambda g, k=scales[i]: g * k.astype(g.dtype), grads[m])
  return new


def multi_loss_grads(loss_fn: Callable[[PyTree], tuple[jax.Array, Any]], params: PyTree):
  """The gradients of K losses w.r.t. the same parameters, from one forward pass.

  `jax.vjp` once on params ↦ [K] losses, then the pullback is vmapped over the K one-hot
  cotangents (METHODS.md §1.5): one forward, K backward passes sharing the residuals.

  Args:
    loss_fn: params -> ([K] losses, aux).
    params: the parameters.

  Returns:
    ([K] losses, grads with a leading K axis on every leaf, aux).
  """
  values, pullback, aux = jax.vjp(loss_fn, params, has_aux=True)
  (grads,) = jax.vmap(pullback)(jnp.eye(values.shape[0], dtype=values.dtype))
  return values, grads, aux


def freeze_branches(tx, frozen: tuple[str, ...]):
  """`tx` for every top-level parameter group except `frozen` ones, whose updates are zero.

  Needed by the staged methods (UDI's follower and fusion stages, BML-MI's distillation), whose
  frozen branches must not move even under weight decay; zeroing their gradients is not enough.

  Args:
    tx: the optimiser.
    frozen: top-level keys of the params (modality names, "fusion") to keep fixed.
  """
  def labels(params):
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_outputs_step(model, method: Method):
  """A jitted `(state, batch) -> outputs` in inference mode, for the phases between epochs.

  Returns every model output the host-level phases read (PMR's prototypes, UDI's anchor choice,
  BML-MI's mutual-information estimates, G-Blending's branch losses): `features` [M, B, d],
  `logits` [M, B, C], `fused_logits` [B, C] and `partial_logits` [M, B, C] when the model has
  them, plus `label` and `mask` [B].
  """

  def outputs_step(state, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = model.apply(variables, batch, train=False, **method.forward_kwargs(state.method))
    keep = ("features", "logits", "fused_logits", "partial_logits")
    result = {k: out[k] for k in keep if k in out}
    result["label"] = batch["label"]
    result["mask"] = (batch["mask"] if "mask" in batch
                      else jnp.ones(batch["label"].shape, jnp.float32))
    return result

  return jax.jit(outputs_step)
