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
