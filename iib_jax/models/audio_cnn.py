"""A 1-D CNN over log-Mel frames: IIBalance's Kinetics-Sounds/AVE audio encoder (METHODS.md §2.7).

The paper states only a "1D CNN audio encoder following G-Blending" and gives no layer sizes; the
network below is this library's reconstruction, sized like ResNet-18's stages so its feature size
(512) matches the visual encoder's without a projection.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax.models.layers import CONV_INIT, batch_norm


class AudioCNN1D(nn.Module):
  """Plain (VGG-style) 1-D CNN: mel bins are the input channels, convolution runs along time.

  Layers, for an input of T frames × F bins and width w:

    stem     Conv1D(w, k=7) + BN + ReLU                          [B, T, w]
    stage 1  blocks × (Conv1D(w, k=3) + BN + ReLU)               [B, T, w]
    stage 2  MaxPool(2) + blocks × (Conv1D(2w, k=3) + BN + ReLU) [B, T/2, 2w]
    stage 3  MaxPool(2) + blocks × (Conv1D(4w, k=3) + BN + ReLU) [B, T/4, 4w]
    stage 4  MaxPool(2) + blocks × (Conv1D(8w, k=3) + BN + ReLU) [B, T/8, 8w]
    mean over time                                               [B, 8w]

  Convolutions are bias-free ("same" padding, stride 1) because BatchNorm follows each one.
  Downsampling by non-overlapping max-pooling keeps the strongest response of each pair of
  frames, which suits sparse acoustic events. With the defaults (w = 64, 2 blocks) the receptive
  field of a final-stage unit is 74 frames (about 0.75 s at a 10 ms hop), and the global mean
  makes the output independent of the clip length.

  Attributes:
    width: w, channels of the stem and the first stage; the feature size is 8w.
    blocks_per_stage: convolutions per stage.
    stages: how many of the four stages (fewer: feature size w · 2^(stages − 1); tests).
    dtype: compute dtype; parameters stay float32.
  """
  width: int = 64
  blocks_per_stage: int = 2
  stages: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of log-Mel spectrograms.

    Args:
      x: [B, T, F] log-Mel frames (time × bins); T >= 8 so every stage sees at least one frame.
      train: use and update batch statistics.

    Returns:
      [B, 8w] features, in the compute dtype.
    """
    x = x.astype(self.dtype)
    x = self._conv_bn_relu(x, self.width, 7, train, "stem")
    for stage in range(self.stages):
      if stage > 0:
        x = nn.max_pool(x, (2,), strides=(2,))
      for block in range(self.blocks_per_stage):
        x = self._conv_bn_relu(x, self.width * 2**stage, 3, train,
                               f"stage{stage + 1}_block{block + 1}")
    return x.mean(axis=1)

  def _conv_bn_relu(self, x: jax.Array, features: int, kernel: int, train: bool,
                    name: str) -> jax.Array:
    """Conv1D ("same" padding) + BatchNorm + ReLU, with parameters under `name_conv`/`name_bn`."""
    pad = kernel // 2
    x = nn.Conv(features, (kernel,), padding=((pad, pad),), use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=CONV_INIT, name=f"{name}_conv")(x)
    return nn.relu(batch_norm(train, self.dtype, f"{name}_bn")(x))
