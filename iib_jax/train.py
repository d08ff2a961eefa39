"""The jit-compiled train and eval steps, and the optimiser."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax

from iib_jax.methods import Method
from iib_jax.methods.base import eval_outputs, gradients
from iib_jax.state import TrainState


def make_optimizer(name: str = "adam", learning_rate: float = 1e-4, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> optax.GradientTransformation:
  """The optimiser: Adam (the paper), AdamW or SGD with momentum (most baselines' own code)."""
  if name == "adam":
    tx = optax.adam(learning_rate)
    return tx if weight_decay == 0 else optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if name == "adamw":
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum))
  raise ValueError(f"optim.name must be 'adam', 'adamw' or 'sgd', got {name!r}")


def make_forward(model: nn.Module, batch_stats, rng) -> Callable[..., Any]:
  """forward(params, batch, train=True, **kwargs) -> (outputs, new batch_stats)."""

  def forward(params, batch, train: bool = True, **kwargs):
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
      return model.apply(variables, batch, train=False, **kwargs), batch_stats
    outputs, new_vars = model.apply(variables, batch, train=True, rngs={"dropout": rng},
                                    mutable=["batch_stats"], **kwargs)
    return outputs, new_vars.get("batch_stats", batch_stats)

  return forward


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, method: Method, *,
                    state_sharding: jax.sharding.Sharding | None = None,
                    batch_sharding: jax.sharding.Sharding | None = None):
  """Builds `train_step(state, batch) -> (state, metrics)`, jit-compiled with the state donated.

  Model, optimiser and method are closed over; only arrays cross the jit boundary. Time-dependent
  quantities (λ(t), schedules) are computed from `state.step` inside the step.

  Args:
    model: the MultimodalModel.
    tx: the optimiser.
    method: the balancing method.
    state_sharding, batch_sharding: shardings over a device mesh (data parallelism); both or
      neither.

  Returns:
    The jitted step. Metrics are device arrays: `loss`, `grad_norm` and the method's own.
  """

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    forward = make_forward(model, state.batch_stats, rng)
    loss, grads, batch_stats, aux = gradients(method, forward, state.params, batch, state.method,
                                              state.step)
    grads = method.rewrite_grads(grads, aux, state.method, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state,
                              method=method.update_state(state.method, aux, batch))
    metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux.get("metrics", {})}
    return new_state, metrics

  if (state_sharding is None) != (batch_sharding is None):
    raise ValueError("give both state_sharding and batch_sharding, or neither")
  if state_sharding is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, state_sharding))


def make_eval_step(model: nn.Module, method: Method, *,
                   state_sharding: jax.sharding.Sharding | None = None,
                   batch_sharding: jax.sharding.Sharding | None = None):
  """Builds `eval_step(state, batch) -> per-example outputs`, jit-compiled.

  The method's `predict` reads one forward pass in inference mode; a method with its own
  `evaluate` (AGM's Shapley outputs) runs its passes instead. Outputs: see
  `iib_jax.methods.base.eval_outputs` (all per example, so padded examples can be dropped on the
  host).
  """

  def eval_step(state: TrainState, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    kwargs = method.forward_kwargs(state.method)

    def apply(b):
      return model.apply(variables, b, train=False, **kwargs)

    if method.evaluate is not None:
      fused_logits, unimodal_logits = method.evaluate(apply, batch, state.method)
      return eval_outputs(batch, fused_logits, unimodal_logits)
    outputs = apply(batch)
    fused_logits, unimodal_logits = method.predict(outputs, state.method)
    return eval_outputs(batch, fused_logits, unimodal_logits, outputs)

  if state_sharding is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding))
