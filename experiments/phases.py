"""Per-method work outside the compiled step: what a method needs between epochs or before
training (MSLR's rates from validation, PMR's prototype pass, G-Blending's weight estimate, ...).

The runner calls `hooks(name, context)` for every method and uses what it returns; a method with
no such needs gets `Hooks()` that changes nothing. A method never edits the training loop.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


@dataclasses.dataclass
class Context:
  """What a method's phases may use: the run's config, data, compiled steps and paths."""
  config: Any
  data: Any
  workdir: str
  model: Any
  method: Any
  tx: Any
  train_step: Callable
  eval_step: Callable
  spec: Any
  budgets: Mapping[str, Any] | None = None


@dataclasses.dataclass
class Hooks:
  """before_training(state) -> state; between_epochs(epoch, state, validation) -> state."""
  before_training: Callable[[Any], Any] = lambda state: state
  between_epochs: Callable[[int, Any, dict], Any] = lambda epoch, state, val: state


# name -> (Context -> Hooks)
HOOKS: dict[str, Callable[[Context], Hooks]] = {}


def hooks(name: str, context: Context) -> Hooks:
  """The hooks of method `name` (no-ops when it has none)."""
  factory = HOOKS.get(name)
  return Hooks() if factory is None else factory(context)
