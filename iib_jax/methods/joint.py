"""Joint training: concatenation fusion trained with the fused cross-entropy alone.

The unimodal heads read stop_gradient(z_m): they are trained (for Acc_a, Acc_v) but never shape the
encoders, so the encoders learn only what the fused loss asks of them. Option
`unimodal_readout="split"` reports the split-fusion-layer logits W_m z_m + b/M instead (the
convention of OGM-GE, PMR and BalanceMM).
"""
from __future__ import annotations

import dataclasses

from iib_jax import losses
from iib_jax.methods import base


@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  unimodal_readout: str = "heads"     # Acc_<m> from the "heads" or the "split" fusion layer
  fusion: str = "concat"              # "concat" or "sum" late fusion

  def validate(self, modalities):
    base.one_of("unimodal_readout", self.unimodal_readout, ("heads", "split"))
    base.one_of("fusion", self.fusion, ("concat", "sum"))


def build(options: Options, spec: base.MethodSpec) -> base.Method:
  del spec

  def loss(outputs, batch, state, step):
    del state, step
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    heads = base.unimodal_ce(outputs["logits"], batch)     # encoders see no gradient from these
    return fused + heads.sum(), {"metrics": {"loss_fused": fused, "ce_unimodal": heads}}

  split = options.unimodal_readout == "split"
  return base.Method(name="joint", init_state=base.no_state, loss=loss,
                     predict=base.split_predict if split else base.default_predict,
                     model={"fusion": options.fusion, "detach_heads": True})


def build_unimodal(options: base.Options, spec: base.MethodSpec) -> base.Method:
  """Each modality's encoder and head trained alone with cross-entropy (the IIB phase).

  With several modalities in one model their losses are simply summed: the branches share no
  parameters, so this is M independent unimodal trainings in one step.
  """
  del options, spec

  def loss(outputs, batch, state, step):
    del state, step
    ce = base.unimodal_ce(outputs["logits"], batch)
    return ce.sum(), {"metrics": {"ce_unimodal": ce}}

  return base.Method(name="unimodal", init_state=base.no_state, loss=loss,
                     model={"fusion": "none", "detach_heads": False})


DEFINITION = base.Definition(
    name="joint", build=build, options=Options, display="Joint",
    readout=lambda o: "split fusion layer" if o.unimodal_readout == "split" else "heads")
UNIMODAL = base.Definition(name="unimodal", build=build_unimodal, listed=False)
