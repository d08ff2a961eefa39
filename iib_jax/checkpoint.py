"""Checkpoints with orbax: the latest (for resume) and the best on validation (never on test).

Each checkpoint holds the whole TrainState and a small JSON record (epoch, validation summary,
selection score). Saving is synchronous: the train step donates the state's buffers, so a save
must be finished before the next step runs.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import orbax.checkpoint as ocp


class Checkpointer:
  """`workdir/checkpoints/latest` and `workdir/checkpoints/best`, one step each, keyed by epoch."""

  def __init__(self, workdir: str):
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    self._managers = {name: ocp.CheckpointManager(os.path.join(root, name), options=options)
                      for name in ("latest", "best")}

  def save(self, which: str, epoch: int, state: Any, record: Mapping[str, Any]) -> None:
    """Saves `state` and `record` as epoch `epoch` of the `which` ("latest"/"best") series."""
    manager = self._managers[which]
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                record=ocp.args.JsonSave(dict(record))),
                 force=True)
    manager.wait_until_finished()

  def epoch(self, which: str) -> int | None:
    """The epoch held by the `which` series, or None."""
    return self._managers[which].latest_step()

  def record(self, which: str) -> dict[str, Any] | None:
    """The JSON record of the `which` checkpoint, without restoring the state."""
    step = self.epoch(which)
    if step is None:
      return None
    restored = self._managers[which].restore(step, args=ocp.args.Composite(
        record=ocp.args.JsonRestore()))
    return dict(restored["record"])

  def restore(self, which: str, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, record) of the `which` checkpoint, restored into `abstract_state`'s structure,
    shapes and shardings (from `jax.eval_shape` of the state's constructor)."""
    step = self.epoch(which)
    if step is None:
      raise FileNotFoundError(f"no '{which}' checkpoint in {self._managers[which].directory}")
    restored = self._managers[which].restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["record"])

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()
