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
  """The readings of Eq. 10–11 that docs/FIDELITY.md sets by measurement on validation
  (`python -m experiments.fidelity`): PRA's similarity and the gradient into w through Eq. 11's
  γ term, today's default first. The start of the encoders is not a reading of the method but a
  run-wide setting of the protocol (`config.start`, measured with `experiments.table1`). The
  labels of `default` and `detach_weights_in_aux` are those of `gate()`, so both sweeps can share
  a root and train those runs once."""
  return Sweep(METHOD, {
      "default": {},                                                       # cosine, gradient into w
      "detach_weights_in_aux": {f"{_OPTIONS}.detach_weights_in_aux": True},
      "similarity=dot": {f"{_OPTIONS}.similarity": "dot"},                 # Eq. 10 as printed
      "similarity=dot, detach_weights_in_aux": {f"{_OPTIONS}.similarity": "dot",
                                                f"{_OPTIONS}.detach_weights_in_aux": True},
  })


def gate() -> Sweep:
  """The readings of the gated fusion (Eqs. 8–9) that docs/FIDELITY.md sets by measurement on
  validation (`python -m experiments.gate`): today's default against one change each. The
  variant names are the run directories' names and the labels of `experiments.evaluate`."""
  return Sweep(METHOD, {
      "default": {},
      "gate_pool=mean": {"model.gate_pool": "mean"},                       # Pool in Eq. 8
      "gate_input=uncertainty": {"model.gate_input": "uncertainty"},       # φ = [u] only
      "detach_gate_features": {"model.detach_gate_features": True},        # no gradient via Pool(z)
      "detach_weights_in_aux": {f"{_OPTIONS}.detach_weights_in_aux": True},  # Eq. 11, stop-grad w
  })


# The methods of the damage measurement: IIBalance and joint training, one baseline that
# modulates the gradients of a fused loss without unimodal losses (OGM-GE) and one with unimodal
# losses beside the fused one (MMPareto, the best Avg of Table I).
DAMAGE_METHODS = ("iibalance", "joint", "ogm_ge", "mmpareto")


def damage_spec(kinds: Mapping[str, str], scales: Mapping[str, float] | None = None, *,
                drop: float = 0.25, noise_max: float = 2.0, occlude_max: float = 0.75,
                p: float = 0.5) -> str:
  """The train-time damage of the damage measurement, as a `data.train_damage` string.

  Each modality is removed with probability `drop` (keep_one: never both, so each is removed
  from 22% of the clips for two modalities at 0.25); with probability p each modality gets
  Gaussian noise of a strength uniform in [0, noise_max] (in units of its clean input std,
  `scales`, the unit of `experiments.evaluate`'s noise levels), and with probability p each
  frame modality an occluding square of side uniform in [0, occlude_max] of the frame.

  Why these numbers: the evaluation's strengths are noise 0.5, 1, 2, 4 and occlusion 0.25, 0.5,
  0.75, 1, so training covers the lower three of each and the top one (noise 4; a whole frame
  occluded, which is a removed modality) measures what lies beyond the training range. p = 1/2
  puts each corruption on half the clips, half of those below a strength of 1 (max/2), so the
  unimodal heads see enough noise to learn to be uncertain under it (the failure of the gate in
  docs/RESULTS.md: heads confidently wrong under noise); drop = 1/4 is the usual range of
  modality dropout. The mix is heavy (for audio + video about 7% of training clips see no damage
  at all, 56% keep both modalities), and the measurement reports what it costs on clean data.

  Args:
    kinds: modality -> its encoder's input kind ("audio", "video", ...); "video" is occluded.
    scales: modality -> the std of its clean model input (default 1: the input is normalised).
  """
  modalities = list(kinds)
  ops = ["drop_modalities(" + ", ".join(f"{m}={drop:g}" for m in modalities) + ")"]
  for m in modalities:
    scale = "" if scales is None else f", scale={float(scales[m]):.3g}"
    ops.append(f"noise({m}, max={noise_max:g}, p={p:g}{scale})")
  ops += [f"occlude({m}, max={occlude_max:g}, p={p:g})" for m in modalities
          if kinds[m] == "video"]
  return "|".join(ops)


def damage(spec: str, methods: Sequence[str] = DAMAGE_METHODS) -> dict[str, tuple[dict, Sweep]]:
  """The damage measurement: every method trained without and with `spec`.

  `data.train_damage` is read by the data pipeline, which `experiments.sweep.run_variants` builds
  once per seed from its base config: it cannot be a variant. So the measurement is two sweeps,
  each with its own base override and its own unimodal phase (trained under the same damage as
  the methods: it reads the same training batches; its budgets are measured on clean clips, as
  evaluation is never damaged), the methods as variants.

  Returns:
    {setting directory: (base overrides, Sweep of the methods)} for "none" and "damage".
  """
  variants = {name: {"method": name} for name in methods}
  return {"none": ({"data.train_damage": ""}, Sweep(methods[0], variants)),
          "damage": ({"data.train_damage": spec}, Sweep(methods[0], variants))}
