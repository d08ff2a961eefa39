"""Initialisers, normalisation and frame folding shared by the encoders.

The initialisers follow the reference PyTorch setup of this literature (OGM-GE's `weight_init`):
convolution kernels He-normal over fan-out, dense kernels Xavier-normal, biases zero, BatchNorm
scale 1 and bias 0. BatchNorm uses PyTorch's running-average convention (momentum 0.1 there is 0.9
here) and epsilon.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DENSE_INIT = nn.initializers.xavier_normal()


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults over the last (channel) axis.

  Parameters and running statistics are float32; flax promotes the batch statistics to float32
  (`force_float32_reductions`), so only the normalised output is in the compute dtype.

  Args:
    train: normalise with batch statistics and update the running averages (True), or use the
      running averages (False).
    dtype: compute dtype of the output.
    name: submodule name.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def fold_frames(frame_encoder: nn.Module, video: jax.Array, train: bool) -> jax.Array:
  """Encodes every frame independently and averages the features over time.

  Frames are folded into the batch, so BatchNorm sees B·T examples, as in the reference code.
  With an encoder that ends in a global average pool over (h, w), the mean over T of the pooled
  features equals pooling jointly over (T, h, w), as the reference code does.

  Args:
    frame_encoder: maps images [N, H, W, C] to features [N, d].
    video: [B, T, H, W, C].
    train: passed to the encoder.

  Returns:
    [B, d] features.
  """
  batch, frames = video.shape[:2]
  feats = frame_encoder(video.reshape((batch * frames,) + video.shape[2:]), train=train)
  return feats.reshape(batch, frames, feats.shape[-1]).mean(axis=1)
