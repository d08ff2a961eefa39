"""ResNet-18 encoders: per-image, per-video-frame, and on a 1-channel spectrogram (METHODS.md §1.1).

The topology is torchvision's BasicBlock ResNet without its classifier, including its explicit
paddings (flax's "SAME" pads a stride-2 convolution asymmetrically, which torchvision does not), so
feature-map sizes and the parameter count (11,176,512 for RGB input) match the reference exactly.
Layout is NHWC.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax.models.layers import CONV_INIT, batch_norm, fold_frames


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free convolution padded like torchvision's (kernel // 2 on every side)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=CONV_INIT, name=name)


class BasicBlock(nn.Module):
  """Two 3×3 convolutions with a residual connection (He et al., 2016).

  Attributes:
    features: output channels.
    stride: stride of the first convolution (and of the shortcut projection).
    dtype: compute dtype.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[N, H, W, C] -> [N, H / stride, W / stride, features]."""
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = batch_norm(train, self.dtype, "bn2")(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      # The identity no longer fits: a 1×1 projection, as torchvision's `downsample`.
      shortcut = _conv(self.features, 1, self.stride, self.dtype, "proj_conv")(x)
      shortcut = batch_norm(train, self.dtype, "proj_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """BasicBlock ResNet on images, globally average-pooled (ResNet-18 by default).

  Stem: 7×7/2 convolution, BatchNorm, ReLU, 3×3/2 max-pool; then stages of widths
  (w, 2w, 4w, 8w) with strides (1, 2, 2, 2). A 224×224 input gives a 7×7 map before pooling.

  Attributes:
    stage_sizes: BasicBlocks per stage; (2, 2, 2, 2) is ResNet-18.
    width: channels of the stem and the first stage, w.
    dtype: compute dtype; parameters stay float32.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of images.

    Args:
      x: [N, H, W, C] images, any C.
      train: use and update batch statistics.

    Returns:
      [N, 8w] features (8w = 512 for ResNet-18), in the compute dtype.
    """
    x = x.astype(self.dtype)
    x = _conv(self.width, 7, 2, self.dtype, "conv_init")(x)
    x = nn.relu(batch_norm(train, self.dtype, "bn_init")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2**stage, stride, self.dtype,
                       name=f"stage{stage + 1}_block{block + 1}")(x, train)
    return x.mean(axis=(1, 2))


class VideoResNet(nn.Module):
  """ResNet applied to every frame, features averaged over frames (the reference visual encoder).

  Attributes:
    stage_sizes: BasicBlocks per stage.
    width: w; the feature size is 8w.
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of clips.

    Args:
      x: [B, T, H, W, 3] frames.
      train: use and update batch statistics (over all B·T frames).

    Returns:
      [B, 8w] features.
    """
    frame_encoder = ResNet(self.stage_sizes, self.width, self.dtype, name="frame_encoder")
    return fold_frames(frame_encoder, x, train)


class SpectrogramResNet(nn.Module):
  """ResNet on a spectrogram as a 1-channel image (the reference audio encoder).

  Attributes:
    stage_sizes: BasicBlocks per stage.
    width: w; the feature size is 8w.
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of spectrograms.

    Args:
      x: [B, H, W] spectrograms, e.g. time × mel bins or frequency × time; the reference code
        uses both orientations, and the network is the same for either.
      train: use and update batch statistics.

    Returns:
      [B, 8w] features.
    """
    return ResNet(self.stage_sizes, self.width, self.dtype, name="resnet")(x[..., None], train)
