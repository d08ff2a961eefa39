"""(a) Linear probes: a multinomial logistic regression on each frozen encoder's features z_m
(fitted on the training split with evaluation transforms, full batch, on device), beside the
method's own unimodal prediction (its Table I Acc_<m>)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import build
from iib_jax import losses


@functools.lru_cache(maxsize=None)
def _probe_fit(num_classes: int, steps: int, l2: float, learning_rate: float = 1e-2):
  """A jitted full-batch fit (one compile per setting and feature shape, shared by the runs)."""
  @jax.jit
  def fit(z, labels):
    tx = optax.adam(learning_rate)
    params = (jnp.zeros((z.shape[1], num_classes), jnp.float32),
              jnp.zeros((num_classes,), jnp.float32))

    def objective(p):
      w, b = p
      return losses.cross_entropy(z @ w + b, labels).mean() + l2 * jnp.sum(w * w)

    def body(_, carry):
      p, opt_state = carry
      grads = jax.grad(objective)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return params

  return fit


def linear_probe(z_train, y_train, z_test, y_test, num_classes: int, steps: int = 500,
                 l2: float = 1e-4) -> dict[str, float]:
  """Train and test accuracy of a softmax regression on standardised features.

  Args:
    z_train, z_test: [N, d] features.
    y_train, y_test: [N] labels.
    num_classes: C.
    steps: full-batch Adam steps.
    l2: penalty on the weights.
  """
  mean, std = z_train.mean(0), z_train.std(0) + 1e-6
  fit = _probe_fit(num_classes, steps, l2)
  w, b = fit(jnp.asarray((z_train - mean) / std), jnp.asarray(y_train))
  w, b = np.asarray(w), np.asarray(b)

  def accuracy(z, y):
    return float(np.mean(np.argmax(((z - mean) / std) @ w + b, -1) == y))

  return {"train_acc": accuracy(z_train, y_train), "test_acc": accuracy(z_test, y_test)}


def probe_run(run: build.TrainedRun, steps: int = 500, l2: float = 1e-4,
              split: str = "test") -> dict:
  """Each modality's linear probe on `run`'s frozen features: train on the training split, test
  on `split` (the test split unless a selection reads validation)."""
  z_train, y_train = build.collect_features(run.outputs_step, run.state, run.data.eval("train"))
  z_test, y_test = build.collect_features(run.outputs_step, run.state, run.data.eval(split))
  probes = {m: linear_probe(z_train[:, i], y_train, z_test[:, i], y_test, run.data.num_classes,
                            steps, l2) for i, m in enumerate(run.modalities)}
  return {"probes": probes, "train_examples": int(len(y_train))}
