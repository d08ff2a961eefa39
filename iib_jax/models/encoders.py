"""Encoder names → Linen modules, with a full and a tiny (test) size for each.

Every encoder maps one modality's batch to pooled features: `encoder(x, train=...) -> [B, d]`.
Video encoders read `[B, T, H, W, 3]` frames, audio encoders `[B, time, bins]` spectrograms,
vector encoders `[B, D]` features (`ENCODER_INPUT`). Parameters are float32; `dtype` sets the
compute dtype.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from iib_jax.models.audio_cnn import AudioCNN1D
from iib_jax.models.mlp import MLPEncoder
from iib_jax.models.mobilenet import VideoMobileNetV2
from iib_jax.models.recurrent import RecurrentAudioEncoder
from iib_jax.models.resnet import SpectrogramResNet, VideoResNet

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": VideoResNet,                 # the reference visual encoder (METHODS.md §1.1)
    "resnet18_spec": SpectrogramResNet,      # the reference audio encoder (METHODS.md §1.1)
    "audio_cnn": AudioCNN1D,                 # IIBalance's KS/AVE audio encoder (§2.7)
    "mobilenet_v2": VideoMobileNetV2,        # IIBalance's CREMA-D visual encoder (§2.7)
    "gru": functools.partial(RecurrentAudioEncoder, cell="gru"),    # CREMA-D audio (§2.7)
    "lstm": functools.partial(RecurrentAudioEncoder, cell="lstm"),
    "mlp": MLPEncoder,                       # the feature-level benchmark (docs/DATA.md)
}

# Which batch layout each encoder reads: "video" [B, T, H, W, 3], "audio" [B, time, bins] or
# "vector" [B, D].
ENCODER_INPUT: dict[str, str] = {
    "resnet18": "video",
    "resnet18_spec": "audio",
    "audio_cnn": "audio",
    "mobilenet_v2": "video",
    "gru": "audio",
    "lstm": "audio",
    "mlp": "vector",
}

# Width 8 (or the nearest the architecture allows), one block per stage: same topology as the
# full encoder, small enough to compile and run in seconds on CPU.
_TINY_FIELDS: dict[str, dict[str, Any]] = {
    "resnet18": dict(stage_sizes=(1, 1, 1, 1), width=8),
    "resnet18_spec": dict(stage_sizes=(1, 1, 1, 1), width=8),
    "audio_cnn": dict(width=8, blocks_per_stage=1),
    "mobilenet_v2": dict(width_mult=0.25, last_channel=64,
                         inverted_residual_setting=((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 1, 2),
                                                    (6, 64, 1, 2), (6, 96, 1, 1), (6, 160, 1, 2),
                                                    (6, 320, 1, 1))),
    "gru": dict(hidden=8, num_layers=1),
    "lstm": dict(hidden=8, num_layers=1),
    "mlp": dict(hidden=(8, 8)),
}

# One block of the first stage (ResNets, the 1-D CNN), two inverted-residual blocks (MobileNetV2):
# the encoder's kind and input handling with the fewest layers, for end-to-end tests of the
# runner, where compiling the encoders is most of the time (the smoke preset).
_MICRO_FIELDS: dict[str, dict[str, Any]] = {
    "resnet18": dict(stage_sizes=(1,), width=8),
    "resnet18_spec": dict(stage_sizes=(1,), width=8),
    "audio_cnn": dict(width=8, blocks_per_stage=1, stages=1),
    "mobilenet_v2": dict(width_mult=0.25, last_channel=32,
                         inverted_residual_setting=((1, 16, 1, 1), (6, 24, 1, 2))),
    "gru": dict(hidden=8, num_layers=1),
    "lstm": dict(hidden=8, num_layers=1),
    "mlp": dict(hidden=(8,)),
}

SIZES = ("full", "tiny", "micro")


def make_encoder(encoder: str, /, size: str = "full", dtype: Any = jnp.float32,
                 **kwargs: Any) -> nn.Module:
  """Builds an encoder by name.

  Args:
    encoder: a key of `ENCODERS`.
    size: "full" (the published architecture; the MLP's is this library's own, two layers of
      64), "tiny" (width 8, one block per stage: the full topology, small) or "micro" (width 8,
      the first stage only; end-to-end tests).
    dtype: compute dtype, e.g. `jnp.float32` or `jnp.bfloat16`; parameters stay float32.
    **kwargs: further module fields overriding the size's defaults, and the Linen `name`.

  Returns:
    An unbound module; `module(x, train=...)` returns [B, d] features.

  Raises:
    ValueError: for an unknown encoder name or size.
  """
  if encoder not in ENCODERS:
    raise ValueError(f"unknown encoder {encoder!r}; accepted: {sorted(ENCODERS)}")
  if size not in SIZES:
    raise ValueError(f"unknown encoder size {size!r}; accepted: {list(SIZES)}")
  fields = dict({"tiny": _TINY_FIELDS, "micro": _MICRO_FIELDS}.get(size, {}).get(encoder, {}))
  fields.update(kwargs)
  return ENCODERS[encoder](dtype=dtype, **fields)
