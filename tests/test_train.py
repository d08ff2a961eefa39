"""The train state and the jit-compiled steps on a tiny three-modality problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import loop, methods
from iib_jax.models import build_model
from iib_jax.state import count_params, make_state_init
from iib_jax.train import make_eval_step, make_optimizer, make_train_step
from tests.helpers import ENCODERS, MODALITIES, NUM_CLASSES, separable_batch

BATCH = 12
STEPS_PER_EPOCH = 20


class Setup:
  """A model, method and compiled steps; `fresh(seed)` makes a new initial state."""

  def __init__(self, method_name, budgets=(0.5, 0.7, 0.6), lr=1e-3, options=None):
    spec = methods.MethodSpec(MODALITIES, NUM_CLASSES, 16, steps_per_epoch=STEPS_PER_EPOCH,
                              total_epochs=10, budgets=budgets)
    self.method = methods.get_method(method_name, options or {}, spec)
    self.model = build_model(MODALITIES, ENCODERS, NUM_CLASSES, feature_dim=16,
                             encoder_size="micro", gate_hidden=16, **self.method.model)
    self.tx = make_optimizer("adam", lr)
    self.train_step = make_train_step(self.model, self.tx, self.method)
    self.eval_step = make_eval_step(self.model, self.method)
    self.init = make_state_init(self.model, self.tx, self.method)

  def fresh(self, seed=0):
    return self.init(jax.random.key(seed), separable_batch(np.random.default_rng(99), 2))


def batches(seed, n):
  rng = np.random.default_rng(seed)
  return [separable_batch(rng, BATCH) for _ in range(n)]


@pytest.fixture(scope="module")
def iib():
  return Setup("iibalance")


def test_params_are_keyed_by_modality_and_fusion(iib):
  state = iib.fresh()
  assert set(state.params) == {"audio", "video", "aux", "fusion"}
  assert set(state.params["fusion"]) == {"gate", "head"}
  counts = count_params(state.params)
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_grad_through_whole_loss_is_finite_and_reaches_every_branch(iib):
  model, method, state = iib.model, iib.method, iib.fresh()
  batch = jax.tree.map(jnp.asarray, batches(1, 1)[0])

  def loss_fn(params):
    out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch, train=True,
                         mutable=["batch_stats"], prior=state.method.beta)
    # Epoch 5 of 10: with λ_start = 1, epoch 0 is pure Stage I and the fusion head gets no gradient.
    return method.loss(out, batch, state.method, jnp.int32(5 * STEPS_PER_EPOCH))[0]

  grads = jax.jit(jax.grad(loss_fn))(state.params)
  for key in ("audio", "video", "aux", "fusion"):
    norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads[key]))))
    assert np.isfinite(norm) and norm > 0, key


def test_train_step_compiles_once_and_donates(iib):
  state, train_step = iib.fresh(), iib.train_step
  old_leaf = jax.tree.leaves(state.params)[0]
  for batch in batches(2, 5):
    state, metrics = train_step(state, batch)
  assert old_leaf.is_deleted()                  # donation is real
  assert train_step._cache_size() == 1
  assert int(state.step) == 5
  for key in ("loss", "loss_stage_one", "loss_stage_two", "stage_weight", "fusion_weights",
              "beta", "alignment_strength", "grad_norm"):
    assert key in metrics
  assert metrics["fusion_weights"].shape == (3,)
  assert bool(jnp.all(state.method.bank.seen))


def _train(setup, steps, seed=0):
  state = setup.fresh(seed)
  first = None
  for i, batch in enumerate(batches(seed + 10, steps)):
    state, metrics = setup.train_step(state, batch)
    if i == 0:
      first = float(metrics["loss"])
  return state, first, float(metrics["loss"])


def test_tiny_separable_problem_learns_with_three_modalities(iib):
  state, first, last = _train(iib, 150)
  result = loop.evaluate(iib.eval_step, state, batches(123, 4), MODALITIES)
  assert last < 0.5 * first, (first, last)
  assert result["acc_fused"] > 0.9, result
  for m in MODALITIES:
    assert result[f"acc_{m}"] > 0.8, result


def test_same_seed_gives_bit_identical_parameters(iib):
  a, *_ = _train(iib, 6, seed=3)
  b, *_ = _train(iib, 6, seed=3)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(a.method.bank.protos, b.method.bank.protos)


def test_eval_counts_only_unmasked_examples(iib):
  state, eval_step = iib.fresh(), iib.eval_step
  batch = batches(4, 1)[0]
  batch["mask"][-5:] = 0.0
  out = loop.collect(eval_step, state, [batch])
  assert len(out["label"]) == BATCH - 5
  np.testing.assert_array_equal(out["label"], batch["label"][:-5])
  assert out["weights"].shape == (BATCH - 5, 3)
  np.testing.assert_allclose(out["weights"].sum(1), 1.0, rtol=1e-5)


def test_joint_trains_heads_without_touching_encoders():
  setup = Setup("joint")
  model, state = setup.model, setup.fresh()
  batch = jax.tree.map(jnp.asarray, batches(5, 1)[0])

  def head_loss(params):
    out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch, train=True,
                         mutable=["batch_stats"])
    return methods.base.unimodal_ce(out["logits"], batch).sum()

  grads = jax.jit(jax.grad(head_loss))(state.params)
  for m in MODALITIES:
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads[m]["encoder"]))
    assert float(jnp.abs(grads[m]["head"]["kernel"]).sum()) > 0


def test_nonfinite_metric_stops_with_the_step_and_term():
  def bad_step(state, batch):
    return state, {"loss": jnp.float32(1.0), "loss_stage_two": jnp.float32(np.nan)}

  class S:
    step = jnp.int32(0)

  with pytest.raises(loop.NonFiniteError, match="non-finite 'loss_stage_two' in steps 1-3"):
    loop.train_epoch(bad_step, S(), [None] * 3, log_every=3)


def test_metric_writer_mirrors_scalars_to_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  from iib_jax import writers
  writer = writers.MetricWriter(str(tmp_path), ("audio", "video"))
  writer.write(phase="multimodal", split="val", epoch=0, step=7,
               metrics={"acc_fused": 0.5, "weight": np.array([0.25, 0.75])})
  writer.close()
  writer.close()                                   # closing twice is harmless
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  read = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in
                events.Tensors(tag)] for tag in events.Tags()["tensors"]}
  assert read == {"multimodal/val/acc_fused": [(7, 0.5)],
                  "multimodal/val/weight_audio": [(7, 0.25)],
                  "multimodal/val/weight_video": [(7, 0.75)]}
