"""MobileNetV2 (Sandler et al., 2018) as in torchvision, without its classifier (METHODS.md §2.7).

IIBalance's CREMA-D visual encoder. Channel rounding (`_make_divisible`), paddings and the
inverted-residual settings follow torchvision, so at width 1.0 the parameter count is that of
torchvision's `mobilenet_v2().features` (2,223,872). Layout is NHWC.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax.models.layers import CONV_INIT, batch_norm, fold_frames

# (expansion t, output channels c, blocks n, stride of the first block s), Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(value: float, divisor: int) -> int:
  """Rounds channels to a multiple of `divisor` without going more than 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


class ConvBNReLU6(nn.Module):
  """Bias-free convolution (padding kernel // 2), BatchNorm, optionally ReLU6.

  Attributes:
    features: output channels.
    kernel: square kernel size.
    stride: spatial stride.
    groups: feature groups; equal to the input channels for a depthwise convolution.
    activation: apply ReLU6 (False for the linear bottleneck projection).
    dtype: compute dtype.
  """
  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  activation: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[N, H, W, C] -> [N, H / stride, W / stride, features]."""
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)), feature_group_count=self.groups, use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=CONV_INIT, name="conv")(x)
    x = batch_norm(train, self.dtype, "bn")(x)
    return nn.relu6(x) if self.activation else x


class InvertedResidual(nn.Module):
  """1×1 expansion, 3×3 depthwise, linear 1×1 projection; residual when shapes allow.

  Attributes:
    features: output channels.
    stride: stride of the depthwise convolution.
    expand_ratio: hidden channels = round(input channels × expand_ratio).
    dtype: compute dtype.
  """
  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[N, H, W, C] -> [N, H / stride, W / stride, features]."""
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = ConvBNReLU6(hidden, 1, dtype=self.dtype, name="expand")(y, train)
    y = ConvBNReLU6(hidden, 3, self.stride, groups=hidden, dtype=self.dtype,
                    name="depthwise")(y, train)
    y = ConvBNReLU6(self.features, 1, activation=False, dtype=self.dtype, name="project")(y, train)
    if self.stride == 1 and in_features == self.features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 feature extractor, globally average-pooled.

  Attributes:
    width_mult: width multiplier α applied to every layer but the last (which only grows).
    round_nearest: channel counts are rounded to multiples of this.
    last_channel: channels of the final 1×1 convolution at α <= 1 (the feature size).
    inverted_residual_setting: (t, c, n, s) per stage; the default is the paper's.
    dtype: compute dtype; parameters stay float32.
  """
  width_mult: float = 1.0
  round_nearest: int = 8
  last_channel: int = 1280
  inverted_residual_setting: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTING
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of images.

    Args:
      x: [N, H, W, C] images.
      train: use and update batch statistics.

    Returns:
      [N, d] features (d = 1280 at width 1.0), in the compute dtype.
    """
    x = x.astype(self.dtype)
    x = ConvBNReLU6(_make_divisible(32 * self.width_mult, self.round_nearest), 3, 2,
                    dtype=self.dtype, name="stem")(x, train)
    for stage, (expand, channels, blocks, stride) in enumerate(self.inverted_residual_setting):
      out = _make_divisible(channels * self.width_mult, self.round_nearest)
      for block in range(blocks):
        x = InvertedResidual(out, stride if block == 0 else 1, expand, self.dtype,
                             name=f"stage{stage + 1}_block{block + 1}")(x, train)
    # torchvision widens the last layer with α > 1 but never narrows it.
    last = _make_divisible(self.last_channel * max(1.0, self.width_mult), self.round_nearest)
    x = ConvBNReLU6(last, 1, dtype=self.dtype, name="head")(x, train)
    return x.mean(axis=(1, 2))


class VideoMobileNetV2(nn.Module):
  """MobileNetV2 applied to every frame, features averaged over frames.

  Attributes:
    width_mult, round_nearest, last_channel, inverted_residual_setting: as in `MobileNetV2`.
    dtype: compute dtype.
  """
  width_mult: float = 1.0
  round_nearest: int = 8
  last_channel: int = 1280
  inverted_residual_setting: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTING
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of clips.

    Args:
      x: [B, T, H, W, 3] frames.
      train: use and update batch statistics (over all B·T frames).

    Returns:
      [B, d] features.
    """
    frame_encoder = MobileNetV2(self.width_mult, self.round_nearest, self.last_channel,
                                self.inverted_residual_setting, self.dtype, name="frame_encoder")
    return fold_frames(frame_encoder, x, train)
