"""In-memory datasets of vectors: `.npz` splits + metadata.json, served as numpy batches (no TF).

The feature-level benchmark (`data_prep.synthetic_features`, docs/DATA.md) is small enough to
live in memory; this module is its on-disk format and its data source, with the batch contract
of `iib_jax.data`:

  data = arrays.ArrayData(data_dir, batch_size=64, eval_batch_size=256)
  for batch in data.train(epoch, seed):    # shuffled by (seed, epoch); last partial batch dropped
    ...                                    # {m: float32 [B, D], 'label': int32 [B],
                                           #  'mask': float32 [B] (ones), 'clip_id': bytes [B]}
  for batch in data.eval('test'):          # file order; last batch padded, 'mask' 0 on padding
    ...

Layout of a dataset directory:
  metadata.json       {'name', 'format': 'arrays', 'num_classes', 'class_names', 'modalities',
                       'dims' {modality: D}, 'splits' {split: num_examples}, ...the generator's}
  <split>.npz         one array per modality (float32 [N, D]), 'label' (int32 [N]) and 'clip_id'
                      (bytes [N]), for split in train, validation, test

Multi-host: every host computes the same order and takes its `batch_size // process_count` slice
of each global batch, so all hosts yield the same number of batches.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

FORMAT = "arrays"
METADATA_FILE = "metadata.json"      # the same name as a TFRecord dataset's (iib_jax.schema)
SPLITS = ("train", "validation", "test")
RESERVED_KEYS = ("label", "mask", "clip_id")

Batch = dict[str, np.ndarray]


def split_file(split: str) -> str:
  return f"{split}.npz"


def is_array_dataset(data_dir: str) -> bool:
  """Whether `data_dir` holds a dataset of this format (metadata.json says 'format': 'arrays')."""
  path = os.path.join(data_dir, METADATA_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get("format") == FORMAT


def save(out_dir: str, splits: Mapping[str, Mapping[str, np.ndarray]],
         metadata: Mapping[str, Any]) -> str:
  """Writes a dataset: one `.npz` per split, then metadata.json (last, so it marks completion).

  Each file is written under a temporary name and renamed.

  Args:
    out_dir: the dataset directory (created).
    splits: {split: {modality: float32 [N, D], 'label': int [N], 'clip_id': bytes or str [N]}}.
    metadata: the dataset's description; 'num_classes' and 'modalities' are required, 'format',
      'splits' and 'dims' are filled in here.

  Returns:
    out_dir.
  """
  modalities = list(metadata["modalities"])
  for name in modalities:
    if name in RESERVED_KEYS or name == "fusion":
      raise ValueError(f"{name!r} cannot be a modality name (reserved: "
                       f"{RESERVED_KEYS + ('fusion',)})")
  os.makedirs(out_dir, exist_ok=True)
  info = dict(metadata, format=FORMAT, splits={}, dims={})
  for split, arrays in splits.items():
    n = len(arrays["label"])
    out = {"label": np.asarray(arrays["label"], np.int32),
           "clip_id": np.asarray([c.encode() if isinstance(c, str) else bytes(c)
                                  for c in arrays["clip_id"]], dtype=bytes)}
    for m in modalities:
      x = np.asarray(arrays[m], np.float32)
      if x.ndim != 2 or len(x) != n:
        raise ValueError(f"split {split!r}, modality {m!r}: expected [{n}, D], got {x.shape}")
      out[m] = x
      info["dims"][m] = int(x.shape[1])
    path = os.path.join(out_dir, split_file(split))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    info["splits"][split] = int(n)
  path = os.path.join(out_dir, METADATA_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return out_dir


def load_info(data_dir: str) -> dict[str, Any]:
  """metadata.json of an array dataset, plus 'data_dir'.

  Raises:
    FileNotFoundError: when the directory holds no finished dataset.
    ValueError: when it holds a dataset of another format (e.g. TFRecords).
  """
  path = os.path.join(data_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {data_dir} is not a prepared array dataset "
                            "(python -m data_prep.synthetic_features --out_dir ...)")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ValueError(f"{data_dir} is not an array dataset (metadata.json format "
                     f"{info.get('format')!r}); read TFRecord datasets with iib_jax.data")
  info["data_dir"] = os.path.abspath(data_dir)
  return info


def load_split(data_dir: str, split: str) -> dict[str, np.ndarray]:
  """All arrays of one split, in memory (clip ids as a bytes array)."""
  path = os.path.join(data_dir, split_file(split))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {data_dir} has no split {split!r}")
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


class Batches:
  """One epoch of numpy batches: iterable (any number of times, same batches) with a length."""

  def __init__(self, make: Callable[[], Iterator[Batch]], length: int):
    self._make = make
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __iter__(self) -> Iterator[Batch]:
    return self._make()


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  return process_index, process_count


class ArrayData:
  """An array dataset as the runner reads it: batches per split, host-local numpy.

  Attributes:
    info: metadata.json (see `load_info`).
    num_classes: C.
    class_names: names of the classes, in label order.
    modalities: the batch keys, in the order given (default: the stored order).
    batch_size, eval_batch_size: global batch sizes of training and evaluation.
  """

  def __init__(self, data_dir: str, *, batch_size: int, eval_batch_size: Optional[int] = None,
               modalities: Union[None, Sequence[str], Mapping[str, str]] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    """Opens a dataset (reads metadata.json; splits are loaded on first use).

    Args:
      data_dir: the dataset directory.
      batch_size: the global training batch size (divisible by the number of hosts).
      eval_batch_size: the global evaluation batch size (default: batch_size).
      modalities: batch keys to deliver: a sequence of stored modality names, or
        {batch key: stored modality}; default every stored modality under its own name.
      process_index, process_count: this host (default: jax's).
    """
    self.info = load_info(data_dir)
    self.dir = self.info["data_dir"]
    self.num_classes = int(self.info["num_classes"])
    self.class_names = list(self.info.get("class_names", [str(c) for c in
                                                          range(self.num_classes)]))
    stored = list(self.info["modalities"])
    if modalities is None:
      modalities = {m: m for m in stored}
    elif not isinstance(modalities, Mapping):
      modalities = {m: m for m in modalities}
    unknown = sorted(set(modalities.values()) - set(stored))
    if unknown:
      raise ValueError(f"modalities {unknown} are not stored in {self.dir}; stored: {stored}")
    self._keys = dict(modalities)
    self.modalities = tuple(self._keys)
    self._index, self._count = _process(process_index, process_count)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
      if size <= 0 or size % self._count:
        raise ValueError(f"{name} {size} must be a positive multiple of the {self._count} hosts")
    self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
    self._cache: dict[str, dict[str, np.ndarray]] = {}

  # -- sizes -------------------------------------------------------------------------------------

  def num_examples(self, split: str) -> int:
    if split not in self.info["splits"]:
      raise ValueError(f"{self.dir} has no split {split!r}; it has {sorted(self.info['splits'])}")
    return int(self.info["splits"][split])

  def steps_per_epoch(self) -> int:
    """Training batches per epoch: the last partial batch is dropped."""
    return self.num_examples("train") // self.batch_size

  def num_eval_batches(self, split: str) -> int:
    """Evaluation batches of a split: the last one padded, every example seen once."""
    return math.ceil(self.num_examples(split) / self.eval_batch_size)

  # -- batches -----------------------------------------------------------------------------------

  def _split(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._cache:
      self.num_examples(split)                      # names the split when it does not exist
      self._cache[split] = load_split(self.dir, split)
    return self._cache[split]

  def _gather(self, arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> Batch:
    batch = {key: arrays[stored][idx] for key, stored in self._keys.items()}
    batch["label"] = arrays["label"][idx].astype(np.int32)
    batch["clip_id"] = np.asarray(list(arrays["clip_id"][idx]), dtype=object)
    return batch

  def _local(self, global_batch: int) -> slice:
    local = global_batch // self._count
    return slice(self._index * local, (self._index + 1) * local)

  def train(self, epoch: int, seed: int, start_batch: int = 0) -> Batches:
    """One training epoch: order a function of (seed, epoch) only; `start_batch` resumes it.

    Returns:
      `steps_per_epoch() − start_batch` batches of batch_size // process_count examples.
    """
    arrays = self._split("train")
    n = self.num_examples("train")
    steps = self.steps_per_epoch()
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    local = self._local(self.batch_size)

    def make():
      for b in range(start_batch, steps):
        idx = order[b * self.batch_size:(b + 1) * self.batch_size][local]
        batch = self._gather(arrays, idx)
        batch["mask"] = np.ones(len(idx), np.float32)
        yield batch

    return Batches(make, max(steps - start_batch, 0))

  def eval(self, split: str) -> Batches:
    """One pass over a split in stored order; the last batch padded with zeros, mask 0 there."""
    arrays = self._split(split)
    n = self.num_examples(split)
    size = self.eval_batch_size
    local = self._local(size)

    def make():
      for b in range(self.num_eval_batches(split)):
        idx = np.arange(b * size, (b + 1) * size)[local]
        valid = idx < n
        batch = self._gather(arrays, np.where(valid, idx, 0))
        for key in self._keys:
          batch[key] = np.where(valid[:, None], batch[key], 0).astype(np.float32)
        batch["label"] = np.where(valid, batch["label"], 0).astype(np.int32)
        batch["clip_id"] = np.asarray([c if v else b"" for c, v in zip(batch["clip_id"], valid)],
                                      dtype=object)
        batch["mask"] = valid.astype(np.float32)
        yield batch

    return Batches(make, self.num_eval_batches(split))

  def example(self, size: int = 2) -> Batch:
    """A small evaluation-style batch (first examples of validation, or of train) for shapes."""
    split = "validation" if "validation" in self.info["splits"] else "train"
    arrays = self._split(split)
    idx = np.arange(min(size, self.num_examples(split)))
    batch = self._gather(arrays, idx)
    batch["mask"] = np.ones(len(idx), np.float32)
    return batch


def verify(data_dir: str) -> None:
  """Checks that every split file exists, loads, and holds its recorded number of examples.

  Raises:
    iib_jax.schema.DatasetError: naming the file and the problem.
  """
  from iib_jax.schema import DatasetError
  info = load_info(data_dir)
  for split, count in info["splits"].items():
    path = os.path.join(data_dir, split_file(split))
    try:
      arrays = load_split(data_dir, split)
    except FileNotFoundError:
      problem = f"{path}: missing (the metadata records {count} examples)"
      raise DatasetError(problem, [problem]) from None
    except (OSError, ValueError) as e:      # a truncated or corrupted archive
      problem = f"{path}: unreadable ({type(e).__name__}: {e})"
      raise DatasetError(problem, [problem]) from None
    for key, value in arrays.items():
      if len(value) != count:
        problem = f"{path}: {key!r} holds {len(value)} examples, the metadata records {count}"
        raise DatasetError(problem, [problem])
