"""Host-side loops: run epochs of a compiled step, evaluate with masks, stop on non-finite values.

The step stays on device: metrics are summed on device and fetched every `log_every` steps (one
`jax.device_get`), where they are checked for finiteness.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iib_jax import fusion

Batch = Mapping[str, Any]
# The per-example terms of log α behind the fusion weights (iib_jax.methods.base.eval_outputs).
LOG_ALPHA_TERMS = fusion.LOG_ALPHA_TERMS


class NonFiniteError(RuntimeError):
  """A loss term became NaN or infinite; the message names the step range and the term."""


def _check_finite(sums: Mapping[str, Any], first_step: int, last_step: int) -> None:
  bad = [key for key, value in sums.items() if not np.all(np.isfinite(value))]
  if bad:
    where = (f"step {last_step}" if first_step == last_step
             else f"steps {first_step}-{last_step}")
    raise NonFiniteError(f"non-finite {', '.join(repr(k) for k in bad)} in {where}; training "
                         "stopped and the last good checkpoint is kept")


def train_epoch(train_step: Callable, state, batches: Iterable[Batch], *, log_every: int = 50,
                on_log: Callable[[int, dict[str, np.ndarray]], None] | None = None,
                progress: Any = None):
  """Runs one pass of `train_step` over `batches`.

  Args:
    train_step: the jitted step.
    state: the TrainState (donated to the step).
    batches: device-ready batches.
    log_every: fetch, check and report the running mean of the metrics every this many steps.
    on_log: called with (global step, mean metrics since the last log).
    progress: an object with `update(n)` and `set_postfix(**kw)` (a tqdm bar), or None.

  Returns:
    (state, mean metrics over the epoch as numpy arrays, number of steps).
  """
  epoch_sums, window_sums = None, None
  steps, window, window_start = 0, 0, int(jax.device_get(state.step))
  t0 = time.perf_counter()
  for batch in batches:
    state, metrics = train_step(state, batch)
    window_sums = metrics if window_sums is None else jax.tree.map(jnp.add, window_sums, metrics)
    steps += 1
    window += 1
    if progress is not None:
      progress.update(1)
    if window == log_every:
      epoch_sums = _flush(window_sums, window, window_start, epoch_sums, on_log, progress, t0)
      window_start += window
      window_sums, window, t0 = None, 0, time.perf_counter()
  if window:
    epoch_sums = _flush(window_sums, window, window_start, epoch_sums, on_log, progress, t0)
  means = {k: v / max(steps, 1) for k, v in (epoch_sums or {}).items()}
  return state, means, steps


def _flush(window_sums, window, window_start, epoch_sums, on_log, progress, t0):
  host = jax.device_get(window_sums)
  _check_finite(host, window_start + 1, window_start + window)
  if on_log is not None:
    on_log(window_start + window, {k: v / window for k, v in host.items()})
  if progress is not None and "loss" in host:
    progress.set_postfix(loss=f"{float(host['loss']) / window:.4f}")
  if epoch_sums is None:
    return host
  return {k: epoch_sums[k] + host[k] for k in host}


def collect(eval_step: Callable, state, batches: Iterable[Batch]) -> dict[str, np.ndarray]:
  """Per-example eval outputs over `batches`, padding removed (every clip counted once).

  Returns:
    dict of numpy arrays with the example axis first (`unimodal_*` become [N, M]).
  """
  parts: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    out = eval_step(state, batch)
    if jax.process_count() > 1:
      # The outputs are sharded over every process's devices: each gathers the whole batch.
      from jax.experimental import multihost_utils
      out = multihost_utils.process_allgather(out, tiled=True)
    else:
      out = jax.device_get(out)
    keep = np.asarray(out["mask"]) > 0
    for key, value in out.items():
      value = np.asarray(value)
      if key.startswith("unimodal_"):
        value = np.moveaxis(value, 0, 1)              # [M, B] -> [B, M]
      parts.setdefault(key, []).append(value[keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


def summarize(outputs: Mapping[str, np.ndarray], modalities: Sequence[str]) -> dict[str, Any]:
  """Accuracies in the paper's layout and the mean fusion weights.

  Returns:
    dict with `acc_fused`, `acc_<m>` per modality, `acc_avg` (mean of the fused and unimodal
    accuracies: Table I's Avg), `budget_<m>` (mean 1 − H of the unimodal predictions: Eq. 1),
    `weight_<m>` when the model fuses with weights, with the means of the three terms of
    log α behind them (`log_alpha_prior_<m>`, `log_alpha_uncertainty_<m>`, `log_alpha_gate_<m>`),
    and `num_examples`.
  """
  labels = outputs["label"]
  n = len(labels)
  result: dict[str, Any] = {"num_examples": int(n)}
  if n == 0:
    return result
  result["acc_fused"] = float(np.mean(outputs["fused_pred"] == labels))
  for i, modality in enumerate(modalities):
    result[f"acc_{modality}"] = float(np.mean(outputs["unimodal_pred"][:, i] == labels))
    result[f"budget_{modality}"] = float(np.mean(1.0 - outputs["unimodal_entropy"][:, i]))
    for key, name in (("weights", "weight"),) + tuple((t, t) for t in LOG_ALPHA_TERMS):
      if key in outputs:
        result[f"{name}_{modality}"] = float(np.mean(outputs[key][:, i]))
  accs = [result["acc_fused"]] + [result[f"acc_{m}"] for m in modalities]
  result["acc_avg"] = float(np.mean(accs))
  return result


def evaluate(eval_step: Callable, state, batches: Iterable[Batch],
             modalities: Sequence[str]) -> dict[str, Any]:
  """`summarize(collect(...))`."""
  return summarize(collect(eval_step, state, batches), modalities)


def fit(train_step: Callable, eval_step: Callable, state, *,
        train_batches: Callable[[int], Iterable[Batch]],
        val_batches: Callable[[], Iterable[Batch]], modalities: Sequence[str], epochs: int,
        start_epoch: int = 0, log_every: int = 50,
        on_epoch_end: Callable[[int, Any, dict, dict], bool | None] | None = None,
        on_log: Callable[[int, dict], None] | None = None,
        between_epochs: Callable[[int, Any, dict], Any] | None = None,
        steps_per_epoch: int | None = None, desc: str = "train", show_progress: bool = True):
  """Trains for `epochs` epochs, evaluating on validation after each.

  Args:
    train_step, eval_step: compiled steps.
    state: the TrainState.
    train_batches: epoch -> batches of that epoch (its order depends on the epoch only, so a
      resumed run sees the same data as an uninterrupted one).
    val_batches: () -> validation batches.
    modalities: names, in the order of the M axis.
    epochs: total epochs T; training runs epochs start_epoch .. T − 1.
    start_epoch: first epoch to run (resume).
    log_every: see `train_epoch`.
    on_epoch_end: (epoch, state, train metrics, validation summary) -> True to stop early. It may
      save checkpoints and write logs.
    on_log: see `train_epoch`.
    between_epochs: (epoch, state, validation summary) -> state, run after each epoch's
      evaluation and before `on_epoch_end` (so checkpoints hold its result): the place for a
      method's per-epoch updates of its state (e.g. learning-rate factors from validation).
    steps_per_epoch: for the progress bar's total and ETA.
    desc: progress bar label.
    show_progress: draw a tqdm bar.

  Returns:
    (final state, list of per-epoch validation summaries).
  """
  from tqdm.auto import tqdm

  history = []
  total = None if steps_per_epoch is None else steps_per_epoch * (epochs - start_epoch)
  # A bar only on a terminal, of process 0: a log file gets the runner's one line per epoch.
  interactive = show_progress and sys.stderr.isatty() and jax.process_index() == 0
  bar = tqdm(total=total, desc=desc, unit="step", disable=not interactive, dynamic_ncols=True)
  try:
    for epoch in range(start_epoch, epochs):
      bar.set_description(f"{desc} epoch {epoch}")
      state, train_metrics, _ = train_epoch(train_step, state, train_batches(epoch),
                                            log_every=log_every, on_log=on_log, progress=bar)
      val = evaluate(eval_step, state, val_batches(), modalities)
      history.append(val)
      if between_epochs is not None:
        state = between_epochs(epoch, state, val)
      if on_epoch_end is not None and on_epoch_end(epoch, state, train_metrics, val):
        break
  finally:
    bar.close()
  return state, history


def nan_to_none(value: float) -> float | None:
  """JSON has no NaN: write null instead."""
  return None if isinstance(value, float) and math.isnan(value) else value
