"""A small MLP over feature vectors: the encoder of the feature-level benchmark (docs/DATA.md).

The controlled-imbalance benchmark (`data_prep.synthetic_features`) gives each modality a vector
[B, D] instead of frames or a spectrogram; this encoder plays the part of ResNet-18 or the 1-D CNN
there, so every method runs unchanged, only much faster.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax.models.layers import DENSE_INIT, batch_norm

NORMS = ("batch", "layer", "none")


class MLPEncoder(nn.Module):
  """len(hidden) × (Dense + norm + ReLU); the feature size is hidden[-1].

    layer k  Dense(hidden[k]) + norm + ReLU      [B, hidden[k]]

  Dense kernels are Xavier-normal like every dense layer of the library; with a norm after it a
  Dense has no bias (the norm's shift replaces it). The norm is BatchNorm by default, as in the
  other encoders (PyTorch's momentum and epsilon, statistics in float32), so the methods meet the
  same batch-statistics state they meet on real data; "layer" (LayerNorm, no running state) and
  "none" are options.

  Attributes:
    hidden: widths of the layers; full size (64, 64), tiny (8, 8). The full size is sized for
      the feature-level benchmark (D = 32, 10 classes, 10,000 training examples): it reaches the
      Bayes accuracy there within ~10 epochs and overfits little; wider layers overfit sooner.
    norm: "batch", "layer" or "none".
    dtype: compute dtype; parameters stay float32.
  """
  hidden: Sequence[int] = (64, 64)
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of vectors.

    Args:
      x: [B, D] features.
      train: BatchNorm uses and updates batch statistics.

    Returns:
      [B, hidden[-1]] features, in the compute dtype.
    """
    if self.norm not in NORMS:
      raise ValueError(f"mlp norm must be one of {NORMS}, got {self.norm!r}")
    if x.ndim != 2:
      raise ValueError(f"the mlp encoder reads vectors [B, D], got shape {tuple(x.shape)}")
    if not self.hidden:
      raise ValueError("the mlp encoder needs at least one hidden layer")
    x = x.astype(self.dtype)
    for k, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=self.norm == "none", dtype=self.dtype,
                   param_dtype=jnp.float32, kernel_init=DENSE_INIT, name=f"dense{k + 1}")(x)
      if self.norm == "batch":
        x = batch_norm(train, self.dtype, f"norm{k + 1}")(x)
      elif self.norm == "layer":
        # LayerNorm reduces in float32 whatever the compute dtype (STYLE: norms reduce in float32).
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                         name=f"norm{k + 1}")(x)
      x = nn.relu(x)
    return x
