"""Checkpoints with orbax: the only module that opens one.

Three ways in, one door:
  Checkpointer(workdir).restore(which, abstract)   a run's whole state (resume, best epoch), into
                                                   the structure, shapes and shardings of
                                                   `jax.eval_shape` of the state's constructor;
  restore_branches(state, directory, groups)       some top-level parameter groups of another
                                                   run (a warm start, a stage's start) into a
                                                   state;
  read_arrays(directory, which)                    every array of a checkpoint as nested dicts,
                                                   without a template (whatever optimiser state
                                                   it was saved with), and `fill_like` to put
                                                   them into a template's structure.
Each checkpoint holds the whole TrainState and a small JSON record (epoch, validation summary,
selection score). Saving is synchronous: the train step donates the state's buffers, so a save
must be finished before the next step runs.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers


def _write_each_array_whole() -> None:
  """Every array is written whole by its first replica, as orbax does on GPUs. On the CPU orbax
  otherwise splits a replicated array over its replicas, which compiles a slice per leaf, shape
  and device: 7 s for the first save of a 60-leaf state on 4 CPU devices instead of 0.08 s
  (BENCHMARKS.md, the runner's per-run cost)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)        # orbax says that it replaces its default handler
  try:
    type_handlers.register_type_handler(
        jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)


_write_each_array_whole()


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
    shapes and shardings (from `jax.eval_shape` of the state's constructor, or `abstract(state)`)."""
    step = self.epoch(which)
    if step is None:
      raise FileNotFoundError(f"no '{which}' checkpoint in {self._managers[which].directory}")
    restored = self._managers[which].restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["record"])

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()


def abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """Shapes, dtypes and shardings of a pytree of arrays (abstract or concrete), as a restore
  template; `sharding` replaces every leaf's."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding), tree)


def saved_epoch(directory: str, which: str = "best") -> int | None:
  """The epoch of `directory/checkpoints/<which>`, or None. Only reads the directory (never
  creates one, so a read-only export loads): orbax renames a step's directory to its number
  once the step is complete."""
  path = os.path.join(directory, "checkpoints", which)
  if not os.path.isdir(path):
    return None
  steps = [int(n) for n in os.listdir(path)
           if n.isdigit() and os.path.isdir(os.path.join(path, n))]
  return max(steps) if steps else None


def saved_record(directory: str, which: str = "best") -> dict[str, Any] | None:
  """The JSON record of `directory/checkpoints/<which>` (epoch, validation summary), or None;
  read-only, as `saved_epoch`."""
  step = saved_epoch(directory, which)
  if step is None:
    return None
  path = os.path.abspath(os.path.join(directory, "checkpoints", which, str(step), "record"))
  return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path))


def read_arrays(directory: str, which: str = "best",
                sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """The arrays of `directory/checkpoints/<which>` as nested dicts, whatever the structure of the
  optimiser state they were saved with (a staged run freezes parameter groups, which changes it).

  Args:
    directory: a run directory, or a unimodal-phase directory (`<run>/iib`).
    which: "best" or "latest".
    sharding: where to place every array (default: the first device).

  Returns:
    {"params", "batch_stats", ...} as saved (a train state has "step", "method", "rng" and
    "opt_state" too).
  """
  step = saved_epoch(directory, which)
  if step is None:
    raise FileNotFoundError(f"no '{which}' checkpoint in {os.path.join(directory, 'checkpoints')}")
  path = os.path.abspath(os.path.join(directory, "checkpoints", which, str(step), "state"))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)       # orbax warns that a sub-item has no metadata file
  try:
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    return checkpointer.restore(path, abstract(tree, sharding))
  finally:
    absl_logger.setLevel(level)


def fill_like(template: Any, tree: Mapping[str, Any]) -> Any:
  """`template`'s structure with its leaves taken from `tree` (nested dicts keyed by field names,
  as `read_arrays` returns a saved pytree)."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in paths:
    node = tree
    for key in path:
      if isinstance(key, jax.tree_util.GetAttrKey):
        node = node[key.name]
      elif isinstance(key, jax.tree_util.DictKey):
        node = node[key.key]
      else:
        node = node[key.idx] if isinstance(node, (list, tuple)) else node[str(key.idx)]
    leaves.append(node)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def restore_branches(state: Any, directory: str, groups: Sequence[str],
                     which: str = "best") -> Any:
  """`state` with the parameters and BatchNorm statistics of `groups` (top-level keys: modality
  names, "fusion") taken from the checkpoint of `directory` (a run or `<run>/iib`), placed like
  the state's own parameters."""
  sharding = jax.tree.leaves(state.params)[0].sharding
  saved = read_arrays(directory, which, sharding)
  params = {**state.params, **{g: saved["params"][g] for g in groups}}
  stats = dict(state.batch_stats)
  stats.update({g: saved["batch_stats"][g] for g in groups
                if g in (saved.get("batch_stats") or {})})
  return state.replace(params=params, batch_stats=stats)
