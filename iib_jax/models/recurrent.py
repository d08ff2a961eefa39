"""A recurrent encoder over log-Mel frames: IIBalance's CREMA-D audio encoder (METHODS.md §2.7).

The paper states only an "RNN-based audio encoder"; this is a stacked (by default bidirectional)
GRU or LSTM whose last-layer outputs are averaged over time. Averaging rather than taking the final
state gives every frame a direct path to the feature, wherever in the clip the cue lies.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iib_jax.models.layers import DENSE_INIT

_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}


class RecurrentAudioEncoder(nn.Module):
  """Stacked GRU/LSTM over time, mean of the last layer's outputs.

  Layer l > 1 reads the concatenated forward and backward outputs of layer l - 1, as PyTorch's
  `nn.GRU(..., bidirectional=True)` does. The cells keep flax's initialisers (LeCun-normal input
  kernels, orthogonal recurrent kernels, zero biases); the reference `weight_init` touches only
  convolutions, dense layers and BatchNorm. The recurrent state is float32 even when the compute
  dtype is bfloat16, so rounding does not accumulate over hundreds of frames.

  Attributes:
    cell: "gru" or "lstm".
    hidden: units per direction.
    num_layers: stacked recurrent layers.
    bidirectional: run a second, time-reversed recurrence per layer and concatenate.
    input_proj: if set, a per-frame Dense layer + ReLU to this many features before the
      recurrence (smaller input kernels when there are many frequency bins).
    dtype: compute dtype; parameters stay float32.
  """
  cell: str = "gru"
  hidden: int = 256
  num_layers: int = 2
  bidirectional: bool = True
  input_proj: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of log-Mel spectrograms.

    Args:
      x: [B, T, F] log-Mel frames (time × bins), padded to a common T.
      train: unused (no BatchNorm or dropout); kept so every encoder has one signature.

    Returns:
      [B, hidden × directions] features, float32 like the recurrent state.
    """
    del train
    if self.cell not in _CELLS:
      raise ValueError(f"unknown recurrent cell {self.cell!r}; accepted: {sorted(_CELLS)}")
    cell = _CELLS[self.cell]
    x = x.astype(self.dtype)
    if self.input_proj:
      x = nn.relu(nn.Dense(self.input_proj, dtype=self.dtype, param_dtype=jnp.float32,
                           kernel_init=DENSE_INIT, name="input_proj")(x))
    for layer in range(self.num_layers):
      name = f"layer{layer + 1}"
      if self.bidirectional:
        # parent=None: the RNNs are adopted by the Bidirectional module, so their parameters
        # live under `layerN/forward_rnn` and `layerN/backward_rnn`, not as siblings of it.
        x = nn.Bidirectional(self._rnn(cell, parent=None), self._rnn(cell, parent=None),
                             name=name)(x)
      else:
        x = self._rnn(cell, name=name)(x)
    return x.mean(axis=1)

  def _rnn(self, cell: type[nn.RNNCellBase], **kwargs: Any) -> nn.RNN:
    """A recurrence over axis 1 (batch-major) of a fresh cell, parameters under `cell`."""
    return nn.RNN(cell(self.hidden, dtype=self.dtype, param_dtype=jnp.float32, parent=None),
                  **kwargs)
