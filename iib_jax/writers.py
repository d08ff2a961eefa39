"""Run logs: metrics.jsonl always, TensorBoard scalars when TensorBoard is installed (its own
writer, `tensorboard.summary.Writer`: no Keras, and no TensorFlow needed)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np


def _scalars(prefix: str, value: Any, names: Sequence[str] | None) -> dict[str, float]:
  """Flattens a metric into scalars; an [M] array becomes one scalar per modality name."""
  array = np.asarray(value)
  if array.ndim == 0:
    return {prefix: float(array)}
  if names is not None and array.shape == (len(names),):
    return {f"{prefix}_{n}": float(v) for n, v in zip(names, array)}
  return {f"{prefix}_{i}": float(v) for i, v in enumerate(array.reshape(-1))}


def flatten(metrics: Mapping[str, Any], modalities: Sequence[str] | None = None) -> dict[str, float]:
  """{name: scalar} with per-modality arrays expanded to `<name>_<modality>`."""
  out: dict[str, float] = {}
  for key, value in metrics.items():
    if isinstance(value, (str, bool)) or value is None:
      continue
    out.update(_scalars(key, value, modalities))
  return out


class MetricWriter:
  """Appends JSON records to `workdir/metrics.jsonl` and mirrors scalars to TensorBoard.

  Each record carries `phase` (e.g. "unimodal", "multimodal"), `split` ("train", "val", "test"),
  `epoch` and `step`, then the scalars. A record is one line, written whole; a line a killed
  process left unfinished is dropped when the file is opened again.
  """

  def __init__(self, workdir: str, modalities: Sequence[str], tensorboard: bool = True,
               enabled: bool | None = None):
    """Args: workdir; modalities (names of [M] metrics); tensorboard (mirror scalars); enabled
    (write at all: default only on process 0 of several, so one process writes each file)."""
    import jax
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.modalities = tuple(modalities)
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tensorboard")
    self._use_tb = tensorboard and self.enabled
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._drop_unfinished_line()

  def _drop_unfinished_line(self) -> None:
    if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      if not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)

  def write(self, *, phase: str, split: str, epoch: int, step: int,
            metrics: Mapping[str, Any]) -> dict[str, Any]:
    scalars = flatten(metrics, self.modalities)
    record = {"phase": phase, "split": split, "epoch": int(epoch), "step": int(step), **scalars}
    if not self.enabled:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
    self._tensorboard(f"{phase}/{split}", step, scalars)
    return record

  def truncate_after(self, phase: str, epoch: int) -> None:
    """Drops the records of `phase` later than `epoch`, and its final ("test") records: what a
    run resumed from the checkpoint of `epoch` writes again.

    The rule that makes metrics.jsonl exact after any kill: an epoch's records are written
    before its checkpoint, so every record up to a checkpoint's epoch is on disk when the
    checkpoint is, and everything after it is dropped here and written again on resume.
    """
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in records if r.get("phase") != phase
            or (r.get("epoch", -1) <= epoch and r.get("split") != "test")]
    if len(kept) == len(records):
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def _tensorboard(self, prefix: str, step: int, scalars: Mapping[str, float]) -> None:
    if not self._use_tb:
      return
    if self._tb is None:
      try:
        from iib_jax.quiet import import_tensorflow
        try:
          import_tensorflow()             # its start-up notices silenced; optional
        except ImportError:
          pass                            # TensorBoard writes its files without TensorFlow
        import tensorboard.summary
      except ImportError:                 # no TensorBoard on this host: metrics.jsonl only
        self._use_tb = False
        return
      self._tb = tensorboard.summary.Writer(self._tb_dir)
    for key, value in scalars.items():
      self._tb.add_scalar(f"{prefix}/{key}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
