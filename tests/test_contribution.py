"""Each modality's Shapley share of the fused accuracy, against values worked out by hand."""
import numpy as np
import pytest

from experiments.evaluate import contribution


def test_two_modalities_by_hand():
  # v(∅) = 0.1, v(a) = 0.7, v(v) = 0.3, v(av) = 0.8:
  # φ_a = ½(0.7 − 0.1) + ½(0.8 − 0.3) = 0.55, φ_v = ½(0.3 − 0.1) + ½(0.8 − 0.7) = 0.15.
  values = {(): 0.1, (0,): 0.7, (1,): 0.3, (0, 1): 0.8}
  np.testing.assert_allclose(contribution.shapley_values(values, 2), [0.55, 0.15])
  out = contribution.summary(values, ("audio", "video"))
  assert out["share"]["audio"] == pytest.approx(0.55 / 0.7)
  assert out["imbalance"] == pytest.approx((0.55 - 0.15) / 0.7)
  assert out["coalitions"] == {"none": 0.1, "audio": 0.7, "video": 0.3, "audio+video": 0.8}


def test_three_modalities_by_hand_and_efficiency():
  # An additive game (v(S) = Σ_{m∈S} c_m) gives φ_m = c_m; a pure interaction of modalities 0
  # and 1 (worth 0.3 only together) is split equally between them.
  c = [0.2, 0.1, 0.4]
  values = {s: sum(c[i] for i in s) + (0.3 if {0, 1} <= set(s) else 0.0)
            for s in contribution.coalitions(3)}
  phi = contribution.shapley_values(values, 3)
  np.testing.assert_allclose(phi, [0.35, 0.25, 0.4])
  assert phi.sum() == pytest.approx(values[(0, 1, 2)] - values[()])


def test_no_contribution_has_no_shares():
  out = contribution.summary({(): 0.5, (0,): 0.5, (1,): 0.5, (0, 1): 0.5}, ("a", "b"))
  assert out["share"]["a"] is None and out["imbalance"] is None


def test_coalition_accuracies_in_one_pass_match_a_numpy_model():
  """A model that sums its inputs' class scores: v(S) by hand, every coalition from one pass
  over batches whose last one is padded."""
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  modalities, kinds = ("a", "b", "c"), {"a": "audio", "b": "audio", "c": "audio"}
  x = {m: rng.normal(size=(10, 4, 3)).astype(np.float32) for m in modalities}
  labels = rng.integers(0, 3, 10).astype(np.int32)

  def eval_step(state, batch):
    scores = sum(batch[m].sum(axis=1) for m in modalities)            # [B, C]
    return {"fused_pred": jnp.argmax(scores, -1), "label": batch["label"],
            "mask": batch["mask"]}

  def batches():
    for start in (0, 4, 8):
      idx = np.arange(start, start + 4) % 10
      mask = (np.arange(start, start + 4) < 10).astype(np.float32)
      yield {**{m: x[m][idx] for m in modalities}, "label": labels[idx], "mask": mask}

  values = contribution.coalition_accuracies(eval_step, None, batches, modalities, kinds)
  assert list(values) == contribution.coalitions(3)
  for subset, value in values.items():
    scores = sum((x[modalities[i]].sum(axis=1) for i in subset), np.zeros((10, 3)))
    expected = np.mean(np.argmax(scores, -1) == labels)      # ∅: every score 0, class 0
    assert value == pytest.approx(expected), subset
