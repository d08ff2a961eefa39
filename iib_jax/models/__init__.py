"""Models: encoders per modality, unimodal heads, a fusion head. `build_model` makes one."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from iib_jax.models.encoders import ENCODERS, make_encoder
from iib_jax.models.multimodal import FUSIONS, MultimodalModel, param_labels

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(modalities: Sequence[str], encoders: Mapping[str, str] | Sequence[str],
                num_classes: int, *, feature_dim: int = 512, encoder_size: str = "full",
                dtype: str | Any = "float32", **fields: Any) -> MultimodalModel:
  """A MultimodalModel from names.

  Args:
    modalities: batch keys, in the order of the M axis.
    encoders: encoder name per modality (a mapping modality -> name, or a sequence in order).
    num_classes: C.
    feature_dim: common feature size d.
    encoder_size: "full" or "tiny".
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    **fields: other MultimodalModel fields (fusion, detach_heads, gate options), usually the
      method's `model` overrides.
  """
  modalities = tuple(modalities)
  if "fusion" in modalities:
    raise ValueError("'fusion' cannot be a modality name: it names the fusion head's parameters")
  if isinstance(encoders, Mapping):
    missing = [m for m in modalities if m not in encoders]
    if missing:
      raise ValueError(f"model.encoders has no encoder for modalities {missing}; "
                       f"given: {dict(encoders)}")
    encoders = tuple(encoders[m] for m in modalities)
  for name in encoders:
    if name not in ENCODERS:
      raise ValueError(f"unknown encoder {name!r}; accepted: {sorted(ENCODERS)}")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype]
  return MultimodalModel(modalities=modalities, encoders=tuple(encoders), num_classes=num_classes,
                         feature_dim=feature_dim, encoder_size=encoder_size, dtype=dtype,
                         **fields)


__all__ = ["ENCODERS", "FUSIONS", "MultimodalModel", "build_model", "make_encoder",
           "param_labels"]
