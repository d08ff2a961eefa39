"""Intrinsic-information-budget estimation: the unimodal phase before multimodal training.

Each modality's encoder and head are trained alone with cross-entropy, with early stopping on
validation accuracy (the paper says "until convergence"); the best epoch of each modality is kept.
Then B_m (Eq. 1) is the mean of 1 − H over the training set in inference mode, β = softmax(B/τ)
(Eq. 2), and the anchor and alignment strengths follow (Eq. 5).

All modalities train in one model with disjoint branches and the sum of their losses. Adam is
elementwise and the branches share no parameters, so this is M independent trainings that read
each batch once.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from iib_jax import budget, loop


def budgets_from_outputs(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
  """[M] budgets from `loop.collect` outputs of a unimodal model: mean of 1 − H (Eq. 1)."""
  return np.mean(1.0 - outputs["unimodal_entropy"], axis=0)


def budget_record(modalities: Sequence[str], budgets: Sequence[float], tau: float,
                  **extra: Any) -> dict[str, Any]:
  """β, the anchor and the alignment strengths from the budgets, as a JSON-ready dict."""
  beta = np.asarray(budget.relative_budget(np.asarray(budgets, np.float32), tau))
  strength = np.asarray(budget.alignment_strength(beta))
  anchor = int(np.argmax(beta))
  return {
      "modalities": list(modalities),
      "budgets": [float(b) for b in budgets],
      "tau": float(tau),
      "beta": [float(b) for b in beta],
      "anchor": modalities[anchor],
      "alignment_strength": [float(s) for s in strength],
      **extra,
  }


def write_json(path: str, record: Mapping[str, Any]) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=False)
  os.replace(tmp, path)


def train_unimodal(train_step: Callable, eval_step: Callable, state, *,
                   train_batches: Callable[[int], Iterable], val_batches: Callable[[], Iterable],
                   modalities: Sequence[str], epochs: int, patience: int | None = 5,
                   log_every: int = 50, steps_per_epoch: int | None = None,
                   on_epoch_end: Callable[[int, Any, dict, dict], None] | None = None,
                   show_progress: bool = True):
  """Trains a `unimodal`-method state, keeping each modality's best branch on validation.

  Stops when no modality has improved for `patience` epochs (None: run all epochs).

  Returns:
    (state holding each modality's best parameters and batch statistics, dict with per-modality
    best validation accuracy and best epoch, and the validation history).
  """
  best = {m: {"acc": -1.0, "epoch": -1, "params": None, "batch_stats": None} for m in modalities}

  def track(epoch, state, train_metrics, val):
    for m in modalities:
      if val[f"acc_{m}"] > best[m]["acc"]:
        best[m].update(acc=val[f"acc_{m}"], epoch=epoch,
                       params=jax.device_get(state.params[m]),
                       batch_stats=jax.device_get(state.batch_stats.get(m, {})))
    if on_epoch_end is not None:
      on_epoch_end(epoch, state, train_metrics, val)
    if patience is None:
      return False
    return all(epoch - best[m]["epoch"] >= patience for m in modalities)

  state, history = loop.fit(train_step, eval_step, state, train_batches=train_batches,
                            val_batches=val_batches, modalities=modalities, epochs=epochs,
                            log_every=log_every, on_epoch_end=track,
                            steps_per_epoch=steps_per_epoch, desc="unimodal",
                            show_progress=show_progress)
  params = dict(state.params)
  batch_stats = dict(state.batch_stats)
  for m in modalities:
    params[m] = best[m]["params"]
    if best[m]["batch_stats"]:
      batch_stats[m] = best[m]["batch_stats"]
  shardings = jax.tree.map(lambda x: x.sharding, state.params)
  params = jax.device_put(params, shardings)
  batch_stats = jax.device_put(batch_stats, jax.tree.map(lambda x: x.sharding, state.batch_stats))
  summary = {m: {"val_acc": best[m]["acc"], "best_epoch": best[m]["epoch"]} for m in modalities}
  return state.replace(params=params, batch_stats=batch_stats), summary, history


def estimate_budgets(eval_step: Callable, state, batches: Iterable,
                     modalities: Sequence[str], tau: float = budget.PAPER_TAU,
                     **extra: Any) -> dict[str, Any]:
  """B_m over `batches` (the training split in inference mode), then β, anchor and λ_m."""
  outputs = loop.collect(eval_step, state, batches)
  return budget_record(modalities, budgets_from_outputs(outputs), tau,
                       num_examples=int(len(outputs["label"])), **extra)
