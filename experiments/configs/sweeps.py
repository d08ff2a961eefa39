"""The sweeps behind docs/RESULTS.md (Table II, Fig. 4) and docs/FIDELITY.md: the method each one
trains and its variants, as dotted config overrides. The commands (`experiments.ablation`,
`experiments.sensitivity`, `experiments.fidelity`) only run what is listed here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

# The method these sweeps study.
METHOD = "iibalance"
_OPTIONS = f"methods.{METHOD}"


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A method and its variants: label -> dotted config overrides."""
  method: str
  variants: Mapping[str, Mapping[str, Any]]


def ablation(fixed_rule: str = "mean") -> Sweep:
  """Table II (docs/FIDELITY.md, point 12): uniform β in the fusion (anchor and λ_m still from the
  budgets); no Stage I alignment (λ_m = 0); Stage II replaced by a fixed fusion rule (the mean of
  the features, or the prior β)."""
  return Sweep(METHOD, {
      "IIBalance": {},
      "w/o IIB prior": {f"{_OPTIONS}.prior": "uniform"},
      "w/o Stage I (PRA)": {f"{_OPTIONS}.stage_one": False},
      f"w/o Stage II (fixed {fixed_rule} fusion)": {f"{_OPTIONS}.fusion_rule": fixed_rule},
  })


def sensitivity(grid: Mapping[str, Sequence[float]]) -> Sweep:
  """Fig. 4: one run per value of each option of `grid` ({"tau": [...], "gamma": [...]}); the
  variant labels are `<option>=<value>`."""
  return Sweep(METHOD, {f"{option}={value:g}": {f"{_OPTIONS}.{option}": value}
                        for option, values in grid.items() for value in values})


def fidelity() -> Sweep:
  """The readings of docs/FIDELITY.md: PRA similarity, the gradient into w in Eq. 11, and the
  start of the encoders (fresh or from the unimodal phase)."""
  def variant(similarity, detach, **extra):
    return {f"{_OPTIONS}.similarity": similarity, f"{_OPTIONS}.detach_weights_in_aux": detach,
            **extra}

  return Sweep(METHOD, {
      "cosine, detached w": variant("cosine", True),
      "dot, detached w": variant("dot", True),
      "cosine, gradient into w": variant("cosine", False),
      "dot, gradient into w": variant("dot", False),
      "cosine, detached w, warm start": variant("cosine", True, start="warm"),
  })
