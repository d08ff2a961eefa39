"""The train state: everything a step reads or writes, in one pytree."""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from iib_jax.methods import Method

PyTree = Any


class TrainState(struct.PyTreeNode):
  """Params, batch statistics, optimiser state, the method's state, RNG key and step counter.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters, keyed by modality and "fusion".
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
    method: the method's own state (e.g. IIBalance's prototype bank and β).
    rng: base key; step s uses fold_in(rng, s).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  method: PyTree
  rng: jax.Array


def make_state_init(model: nn.Module, tx: optax.GradientTransformation, method: Method,
                    sharding: jax.sharding.Sharding | None = None):
  """A jit-compiled `init(rng, example_batch) -> TrainState`; compile once, call per seed.

  Args:
    model: the model; `model.init` sees the example batch in eval mode.
    tx: the optimiser.
    method: supplies its initial state and the model's extra inputs.
    sharding: where the state lives (replicated over the mesh); default device when None.
  """

  # Three programs rather than one: the model's variables depend only on the model, the input
  # shapes and the forward's extra inputs, so every method with the same model compiles the same
  # (and slowest: one random initialiser per parameter) program, which a persistent compilation
  # cache then serves; the optimiser's and the method's state come apart. The values are those
  # of one program.
  def variables(rng, example, forward_kwargs):
    init_rng, state_rng = jax.random.split(rng)
    return model.init({"params": init_rng, "dropout": init_rng}, example, train=False,
                      **forward_kwargs), state_rng

  def assemble(variables, method_state, state_rng):
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      method=method_state, rng=state_rng)

  shard = {} if sharding is None else {"out_shardings": sharding}
  method_init = jax.jit(method.init_state, **shard)
  variables_init = jax.jit(variables, **shard)
  assemble_init = jax.jit(assemble, **shard)

  def jitted(rng, example):
    method_state = method_init()
    variables_, state_rng = variables_init(rng, example, method.forward_kwargs(method_state))
    return assemble_init(variables_, method_state, state_rng)

  def create(rng: jax.Array, example_batch: Mapping[str, Any]) -> TrainState:
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)          # raw uint32 keys checkpoint everywhere
    example = {k: v for k, v in example_batch.items()
               if getattr(v, "dtype", None) is not None and np.dtype(v.dtype).kind in "biuf"}
    return jitted(rng, example)

  return create


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, method: Method,
                       rng: jax.Array, example_batch: Mapping[str, Any],
                       sharding: jax.sharding.Sharding | None = None) -> TrainState:
  """Initialises a state: params from `model.init` on `example_batch` (real input shapes, any
  batch size), optimiser state, the method's state and the RNG key."""
  return make_state_init(model, tx, method, sharding)(rng, example_batch)


def abstract_train_state(model, tx, method, rng, example_batch) -> TrainState:
  """Shapes and dtypes of the state, without computing it (for checkpoint restore)."""
  return jax.eval_shape(functools.partial(create_train_state, model, tx, method),
                        rng, example_batch)


def count_params(params: PyTree) -> dict[str, int]:
  """Parameter count per top-level module (each modality's branch, the fusion head) and total."""
  counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}
  counts["total"] = sum(counts.values())
  return counts
