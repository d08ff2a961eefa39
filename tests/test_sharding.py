"""Data parallelism: a step on 4 (CPU) devices computes what it computes on one device."""
import jax
import numpy as np
import pytest

from iib_jax import loop, methods, sharding
from iib_jax.models import build_model
from iib_jax.state import make_state_init
from iib_jax.train import make_eval_step, make_optimizer, make_train_step
from tests.helpers import ENCODERS, MODALITIES, NUM_CLASSES, separable_batch

BATCH = 8


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (tests/conftest.py sets jax_num_cpu_devices=4)")
  return sharding.data_mesh(jax.devices()[:4])


def _setup(name):
  spec = methods.MethodSpec(MODALITIES, NUM_CLASSES, 16, steps_per_epoch=5, total_epochs=4,
                            budgets=(0.5, 0.7, 0.6))
  method = methods.get_method(name, {"lambda_start": 0.7} if name == "iibalance" else {}, spec)
  model = build_model(MODALITIES, ENCODERS, NUM_CLASSES, feature_dim=16, encoder_size="micro",
                      gate_hidden=16, **method.model)
  return model, method, make_optimizer("adam", 1e-3)


def _allclose(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


@pytest.mark.parametrize("name", ["joint", "iibalance"])
def test_four_devices_match_one_device(mesh, name):
  model, method, tx = _setup(name)
  rng = np.random.default_rng(0)
  batches = [separable_batch(rng, BATCH) for _ in range(2)]
  example = separable_batch(np.random.default_rng(1), 2)

  single = make_state_init(model, tx, method)(jax.random.key(0), example)
  step_1 = make_train_step(model, tx, method)
  for batch in batches:
    single, metrics_1 = step_1(single, batch)

  replicated = sharding.replicated_sharding(mesh)
  by_batch = sharding.batch_sharding(mesh)
  multi = make_state_init(model, tx, method, replicated)(jax.random.key(0), example)
  step_4 = make_train_step(model, tx, method, state_sharding=replicated, batch_sharding=by_batch)
  for batch in batches:
    multi, metrics_4 = step_4(multi, sharding.host_to_device(batch, by_batch))
  assert len(multi.params["audio"]["head"]["kernel"].sharding.device_set) == 4

  _allclose(single.params, multi.params, rtol=2e-4, atol=2e-5)
  _allclose(single.batch_stats, multi.batch_stats, rtol=2e-4, atol=2e-5)
  _allclose(single.method, multi.method, rtol=2e-4, atol=2e-5)   # prototype bank, β, λ
  np.testing.assert_allclose(float(metrics_1["loss"]), float(metrics_4["loss"]), rtol=1e-5)


def test_sharded_evaluation_counts_every_clip_once(mesh):
  model, method, tx = _setup("iibalance")
  state = make_state_init(model, tx, method, sharding.replicated_sharding(mesh))(
      jax.random.key(0), separable_batch(np.random.default_rng(1), 2))
  by_batch = sharding.batch_sharding(mesh)
  eval_step = make_eval_step(model, method, state_sharding=sharding.replicated_sharding(mesh),
                             batch_sharding=by_batch)
  rng = np.random.default_rng(2)
  batches = [separable_batch(rng, BATCH) for _ in range(3)]
  batches[-1]["mask"][5:] = 0                      # a padded last batch: 5 real clips
  out = loop.collect(eval_step, state, (sharding.host_to_device(b, by_batch) for b in batches))
  expected = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert len(out["label"]) == 2 * BATCH + 5
  np.testing.assert_array_equal(out["label"], expected)
