"""Device placement of host batches (no TensorFlow): the data mesh, shardings, prefetch.

The input pipeline yields numpy batches holding this host's part of the global batch; here they
become global `jax.Array`s laid out by a `jax.sharding.Sharding`, one or more batches ahead of
the step that consumes them, so the host-to-device copy overlaps the computation.
"""
from __future__ import annotations

import collections
import itertools
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
ShardingLike = Union[jax.sharding.Sharding, Mapping[str, jax.sharding.Sharding]]


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh ('data',) over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's 'data' axis; the other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """The same value on every device (the train state)."""
  return NamedSharding(mesh, PartitionSpec())


def is_device_value(value: Any) -> bool:
  """Numeric and boolean arrays go to devices; strings and objects (clip ids) stay on the host."""
  return np.asarray(value).dtype.kind in "biuf"


def split_host_data(batch: Mapping[str, Any]) -> tuple[dict, dict]:
  """({key: numeric array}, {key: host-only value}) of one batch."""
  device, host = {}, {}
  for key, value in batch.items():
    (device if is_device_value(value) else host)[key] = value
  return device, host


def host_to_device(batch: Mapping[str, Any], sharding: ShardingLike) -> dict[str, jax.Array]:
  """This host's part of a batch → global arrays; host-only keys are left out.

  Args:
    batch: {key: numpy array [local_batch, ...]}.
    sharding: one Sharding for every key, or {key: Sharding}.

  Returns:
    {key: jax.Array [local_batch * number of hosts, ...]} for the numeric keys.
  """
  device, _ = split_host_data(batch)
  out = {}
  for key, value in device.items():
    s = sharding[key] if isinstance(sharding, Mapping) else sharding
    out[key] = jax.make_array_from_process_local_data(s, np.asarray(value))
  return out


def prefetch_to_device(batches: Iterable[Mapping[str, Any]], sharding: ShardingLike,
                       size: int = 2, *, with_host_data: bool = False) -> Iterator:
  """Places batches on devices `size` batches ahead of their use.

  Transfers are asynchronous: the copies of the next `size` batches run while the current one
  is being computed on.

  Args:
    batches: numpy batches (e.g. `iib_jax.data.make_dataset(...)`).
    sharding: one Sharding for every numeric key, or {key: Sharding}.
    size: batches in flight (>= 1).
    with_host_data: yield (device batch, host-only dict) instead of the device batch alone,
      e.g. to keep clip ids beside per-example predictions.

  Yields:
    {key: jax.Array} (or that and the host-only values).
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  queue: collections.deque = collections.deque()
  iterator = iter(batches)

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      _, host = split_host_data(batch)
      queue.append((host_to_device(batch, sharding), host))

  enqueue(size)
  while queue:
    device, host = queue.popleft()
    enqueue(1)
    yield (device, host) if with_host_data else device
