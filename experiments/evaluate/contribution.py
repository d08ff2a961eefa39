"""Each modality's contribution to the fused prediction: a Shapley value over modality coalitions.

The imbalance-degree perspective of the field's benchmarks: how much of the fused model's accuracy
each modality is responsible for. v(S) is the fused test accuracy with only the modalities of S
present (the others' inputs zeroed, as `robustness` removes a modality); v(∅) has every input
zeroed. Then

  φ_m = Σ_{S ⊆ M∖{m}} |S|! (M − |S| − 1)! / M! · (v(S ∪ {m}) − v(S))

(Σ_m φ_m = v(all) − v(∅)), share_m = φ_m / Σ_k φ_k, and the imbalance degree is
max_m share_m − min_m share_m (0: every modality contributes alike; 1 for M = 2: one modality
does everything).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.evaluate.robustness import corrupt
from iib_jax import loop


def coalitions(num_modalities: int) -> list[tuple[int, ...]]:
  """Every subset of range(M), the empty one first, as sorted tuples."""
  return [s for r in range(num_modalities + 1)
          for s in itertools.combinations(range(num_modalities), r)]


def shapley_values(values: Mapping[tuple[int, ...], float], num_modalities: int) -> np.ndarray:
  """[M] Shapley values of a coalition game {subset: v(subset)} (every subset, ∅ included)."""
  phi = np.zeros(num_modalities)
  for m in range(num_modalities):
    others = [i for i in range(num_modalities) if i != m]
    for r in range(len(others) + 1):
      weight = (math.factorial(r) * math.factorial(num_modalities - r - 1)
                / math.factorial(num_modalities))
      for s in itertools.combinations(others, r):
        phi[m] += weight * (values[tuple(sorted(s + (m,)))] - values[s])
  return phi


def summary(values: Mapping[tuple[int, ...], float],
            modalities: Sequence[str]) -> dict[str, Any]:
  """The Shapley values, shares and imbalance degree of a coalition game, JSON-ready."""
  phi = shapley_values(values, len(modalities))
  total = float(phi.sum())
  # No share when the modalities together add nothing (JSON has no NaN: None).
  share = [float(p / total) if total > 0 else None for p in phi]
  return {"coalitions": {"+".join(modalities[i] for i in s) or "none": float(v)
                         for s, v in values.items()},
          "shapley": dict(zip(modalities, map(float, phi))),
          "share": dict(zip(modalities, share)),
          "imbalance": float(max(share) - min(share)) if total > 0 else None}


def coalition_accuracies(eval_step: Callable, state, batches: Callable[[], Iterable],
                         modalities: Sequence[str], kinds: Mapping[str, str]
                         ) -> dict[tuple[int, ...], float]:
  """v(S) for every coalition: the fused accuracy over `batches()` with the inputs of the
  modalities outside S zeroed. One pass over the batches: each batch is evaluated under every
  coalition by one compiled step (the coalition is an argument, not a constant)."""
  num = len(modalities)
  zeros, ones = jnp.zeros(num), jnp.ones(num)
  key = jax.random.key(0)          # no noise is drawn: the key only fills the argument
  subsets = coalitions(num)
  keeps = [jnp.asarray([1.0 if i in subset else 0.0 for i in range(num)]) for subset in subsets]

  @jax.jit
  def step(state, batch, keep):
    return eval_step(state, corrupt(batch, modalities, kinds, keep, zeros, zeros, ones, key))

  def every_coalition(state, batch):
    out = {}
    for j, keep in enumerate(keeps):
      outputs = step(state, batch, keep)
      out[f"fused_pred_{j}"] = outputs["fused_pred"]
    out["label"], out["mask"] = outputs["label"], outputs["mask"]
    return out

  outputs = loop.collect(every_coalition, state, batches())
  return {subset: float(np.mean(outputs[f"fused_pred_{j}"] == outputs["label"]))
          for j, subset in enumerate(subsets)}


def contribution(eval_step: Callable, state, batches: Callable[[], Iterable],
                 modalities: Sequence[str], kinds: Mapping[str, str]) -> dict[str, Any]:
  """`summary` of the coalition accuracies of a trained model on `batches()` (test)."""
  return summary(coalition_accuracies(eval_step, state, batches, modalities, kinds), modalities)
