"""The MLP encoder: a numpy reference, shapes and dtypes, and a model of three MLP branches that
trains."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import methods, state as state_lib, train
from iib_jax.models import build_model
from iib_jax.models.encoders import ENCODER_INPUT, make_encoder
from iib_jax.models.mlp import MLPEncoder

MODALITIES = ("audio", "video", "aux")


def ref_mlp(params, x, norm, batch_stats=None, train=True):
  """Dense (+ norm) + ReLU per layer in float64 numpy; BatchNorm with the batch's (biased)
  variance in training and the running statistics in evaluation."""
  x = np.asarray(x, np.float64)
  k = 1
  while f"dense{k}" in params:
    dense = params[f"dense{k}"]
    x = x @ np.asarray(dense["kernel"], np.float64)
    if "bias" in dense:
      x = x + np.asarray(dense["bias"], np.float64)
    if norm == "batch":
      p = params[f"norm{k}"]
      if train:
        mean, var = x.mean(0), x.var(0)
      else:
        mean = np.asarray(batch_stats[f"norm{k}"]["mean"], np.float64)
        var = np.asarray(batch_stats[f"norm{k}"]["var"], np.float64)
      x = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])
    elif norm == "layer":
      p = params[f"norm{k}"]
      mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
      x = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])
    x = np.maximum(x, 0.0)
    k += 1
  return x


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_mlp_matches_numpy_reference(norm):
  x = np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32)
  model = MLPEncoder(hidden=(10, 6), norm=norm)
  variables = model.init(jax.random.key(0), x, train=False)
  params = jax.tree.map(np.asarray, variables["params"])
  # Random norm parameters, so the reference checks scale and shift too.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + rng.normal(0, 0.1, p.shape).astype(np.float32)
                        if p.ndim == 1 else p, params)
  assert ("bias" in params["dense1"]) == (norm == "none")
  if norm == "batch":
    feats, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                 train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(feats, ref_mlp(params, x, norm, train=True), rtol=1e-4,
                               atol=1e-5)
    stats = updates["batch_stats"]
    feats = model.apply({"params": params, "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(feats, ref_mlp(params, x, norm, stats, train=False), rtol=1e-4,
                               atol=1e-5)
  else:
    feats = model.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(feats, ref_mlp(params, x, norm), rtol=1e-4, atol=1e-5)
  assert feats.shape == (16, 6)


def test_mlp_sizes_dtypes_and_registry():
  assert ENCODER_INPUT["mlp"] == "vector"
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32)), jnp.float32)
  for size, width in (("full", 64), ("tiny", 8)):
    model = make_encoder("mlp", size=size)
    variables = jax.jit(lambda k, x, m=model: m.init(k, x, train=False))(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    feats = make_encoder("mlp", size=size, dtype=jnp.bfloat16).apply(variables, x, train=False)
    assert feats.shape == (4, width) and feats.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(feats, np.float32)).all()
  assert make_encoder("mlp", size="tiny", hidden=(5,), norm="none").hidden == (5,)


def test_mlp_rejects_bad_input_and_options():
  x = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match=r"vectors \[B, D\]"):
    MLPEncoder(hidden=(4,)).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="norm must be one of"):
    MLPEncoder(hidden=(4,), norm="group").init(jax.random.key(0), jnp.zeros((2, 4)), train=False)


def test_three_mlp_branches_train_and_fit_a_separable_problem():
  """M = 3 MLP branches under the unimodal method: the loss falls and every branch learns."""
  num_classes, dim, batch_size = 3, 6, 32
  rng = np.random.default_rng(0)
  means = {m: rng.normal(0, 1, (num_classes, dim)).astype(np.float32) for m in MODALITIES}

  def batch(seed):
    r = np.random.default_rng(seed)
    labels = r.integers(0, num_classes, batch_size)
    out = {m: means[m][labels] + r.normal(0, 0.3, (batch_size, dim)).astype(np.float32)
           for m in MODALITIES}
    return {**out, "label": labels.astype(np.int32), "mask": np.ones(batch_size, np.float32)}

  spec = methods.MethodSpec(MODALITIES, num_classes, 16, steps_per_epoch=10, total_epochs=1)
  method = methods.get_method("unimodal", {}, spec)
  model = build_model(MODALITIES, {m: "mlp" for m in MODALITIES}, num_classes, feature_dim=16,
                      encoder_size="tiny", **method.model)
  tx = train.make_optimizer("adam", 1e-2)
  state = state_lib.create_train_state(model, tx, method, jax.random.key(0), batch(0))
  assert set(state.batch_stats) == set(MODALITIES)
  step, eval_step = train.make_train_step(model, tx, method), train.make_eval_step(model, method)
  losses = []
  for i in range(60):
    state, metrics = step(state, batch(i))
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:3])
  out = jax.device_get(eval_step(state, batch(1000)))
  accuracy = (out["unimodal_pred"] == out["label"][None]).mean(1)
  assert accuracy.shape == (3,) and (accuracy > 0.9).all(), accuracy
