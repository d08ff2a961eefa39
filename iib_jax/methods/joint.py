"""Joint training: concatenation fusion trained with the fused cross-entropy alone.

The unimodal heads read stop_gradient(z_m): they are trained (for Acc_a, Acc_v) but never shape the
encoders, so the encoders learn only what the fused loss asks of them. Option
`unimodal_readout="split"` reports the split-fusion-layer logits W_m z_m + b/M instead (the
convention of OGM-GE, PMR and BalanceMM).
"""
from __future__ import annotations

from typing import Any, Mapping

from iib_jax import losses
from iib_jax.methods import base


def build(options: Mapping[str, Any], spec: base.MethodSpec) -> base.Method:
  readout = options.get("unimodal_readout", "heads")
  if readout not in ("heads", "split"):
    raise ValueError(f"methods.joint.unimodal_readout must be 'heads' or 'split', got {readout!r}")

  def loss(outputs, batch, state, step):
    del state, step
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    heads = base.unimodal_ce(outputs["logits"], batch)     # encoders see no gradient from these
    return fused + heads.sum(), {"metrics": {"loss_fused": fused, "ce_unimodal": heads}}

  def predict(outputs, state):
    del state
    unimodal = outputs["partial_logits"] if readout == "split" else outputs["logits"]
    return outputs["fused_logits"], unimodal

  return base.Method(name="joint", init_state=base.no_state, loss=loss, predict=predict,
                     model={"fusion": options.get("fusion", "concat"), "detach_heads": True})


def build_unimodal(options: Mapping[str, Any], spec: base.MethodSpec) -> base.Method:
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
