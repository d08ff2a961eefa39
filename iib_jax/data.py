"""tf.data input pipeline: prepared TFRecord shards → numpy batches (imports TensorFlow).

  info = data.load_info(data_dir)
  train = data.make_dataset(data_dir, 'train', batch_size=32, train=True, seed=0, epoch=epoch)
  for batch in sharding.prefetch_to_device(train, batch_sharding):   # or plain `for batch in train`
    ...

Batch contract (numpy, host-local part of the global batch):
  'video'    float32 [B, T, H, W, 3]   ImageNet-normalised frames (frames_dtype='float32'), or
             uint8   [B, T, H, W, 3]   frames in [0, 255] that the model normalises on the device
                                       (frames_dtype='uint8')
  'audio'    float32 [B, time, bins]   audio features, cropped / padded, normalised
  'label'    int32   [B]
  'mask'     float32 [B]               1 for a real clip, 0 for padding (evaluation only)
  'clip_id'  bytes   [B]               host-only; never sent to a device
  'present'  float32 [B, M]            1 = kept, 0 = removed by `drop_modalities`, in the order
                                       of `modalities`; only in training with a drop op
The modality keys are configurable (`modalities={'visual': 'video', 'audio': 'audio'}` maps a
batch key to a stored modality), and a subset skips the other modality's decoding.

Order: a function of (seed, epoch) only; `start_batch` resumes an epoch at an exact batch.
Multi-host (`host_sharding='global'`, the default): every host reads the whole split in the same
order and shuffle, and yields its slice (`batch_size // process_count` examples) of each global
batch, so the global batches are those of one process whatever the process count; every host
yields the same number of batches (`num_batches`). 'file' reads whole shards per host instead
(less reading, batches that depend on the process count).
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import re
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from iib_jax import preprocess, quiet, schema
from iib_jax.schema import DatasetError, load_info

tf = quiet.import_tensorflow()

try:
  # The input pipeline runs on the host; never let TensorFlow take accelerator memory.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # already initialised by the caller: leave it as it is
  pass

AUTOTUNE = tf.data.AUTOTUNE
FRAMES_DTYPES = schema.FRAMES_DTYPES
__all__ = ["load_info", "make_dataset", "make_tf_dataset", "num_batches", "host_files",
           "audio_normalization", "Batches", "verify_dataset", "DatasetError", "checked_damage"]

_log = logging.getLogger(__name__)
# What a user does about a shard that is not as recorded.
REPAIR = ("Rerun the preparation command (python -m data_prep.<dataset> with the same flags): it "
          "rewrites exactly the shards that are missing or differ from their records")


def _first_line(error: Exception) -> str:
  """TensorFlow's message without its op and function decorations, e.g. 'corrupted record at 12'."""
  text = str(getattr(error, "message", None) or error).strip()
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
  text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
  return text.splitlines()[0].strip() if text else type(error).__name__


def _count_records(path: str) -> int:
  """Records in a TFRecord file, each length and payload CRC checked by TensorFlow."""
  return int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64),
                                                  lambda n, _: n + 1).numpy())


def _shard_problems(info: Mapping[str, Any], split: str, files: Sequence[str], *,
                    checksums: bool, scan: bool) -> list[str]:
  """The problems of some shards of a split, one line each, starting with the shard's path.

  Against metadata.json's `shards` record (size, then sha256 when `checksums`); where the
  dataset has no such record, or with `scan`, by counting each shard's records (which also
  checks TFRecord's per-record CRCs).
  """
  names = [os.path.basename(f) for f in info["files"][split]]
  lengths = dict(zip(names, info["shard_lengths"][split]))
  recorded = {e["file"]: e for e in (info.get("shards") or {}).get(split, [])}
  problems, to_hash, to_scan = [], [], []
  for path in files:
    name = os.path.basename(path)
    entry = recorded.get(name)
    expected = entry["num_examples"] if entry else lengths[name]
    if not os.path.exists(path):
      problems.append(f"{path}: missing (the metadata records {expected} examples)")
      continue
    if entry is not None:
      size = os.path.getsize(path)
      if size != entry["num_bytes"]:
        problems.append(f"{path}: size differs: expected {entry['num_bytes']} bytes, found "
                        f"{size}")
        continue
      if checksums:
        to_hash.append((path, entry["sha256"]))
    if entry is None or scan:
      to_scan.append((path, expected))
  if to_hash:
    # hashlib releases the GIL: shards hash in parallel, at the speed of the disk.
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      found = list(pool.map(schema.file_sha256, [p for p, _ in to_hash]))
    for (path, want), got in zip(to_hash, found):
      if got != want:
        problems.append(f"{path}: checksum differs: sha256 expected {want}, found {got}")
  for path, expected in to_scan:
    if any(p.startswith(path + ": ") for p in problems):
      continue
    try:
      count = _count_records(path)
    except tf.errors.OpError as e:  # DataLossError: a truncated or corrupted record
      problems.append(f"{path}: unreadable: {type(e).__name__}: {_first_line(e)}")
      continue
    if count != expected:
      problems.append(f"{path}: record count differs: expected {expected}, found {count}")
  return sorted(problems)


def _raise(problems: Sequence[str], head: str) -> None:
  lines = "\n  ".join(problems)
  raise DatasetError(f"{head}:\n  {lines}\n{REPAIR}", problems)


def verify_dataset(data_dir: str, splits: Optional[Sequence[str]] = None, *,
                   checksums: bool = True) -> None:
  """Checks, before any training, that every shard is as the preparation recorded it.

  Every shard the metadata names must exist and have its recorded size and (with `checksums`)
  its SHA-256; per split, the shard lengths must add up to the recorded example count. A
  dataset prepared before sizes and checksums were recorded has each shard's records counted
  instead (reading every record and its CRCs; logged as a warning). Shard files are only read.

  Args:
    data_dir: the prepared dataset.
    splits: the splits to check (default: all).
    checksums: also hash every shard (about 1.5 GB/s per core, usually disk-bound; sizes alone
      miss a damaged byte).

  Raises:
    DatasetError: naming each bad shard and its problem (missing; size differs: expected N
      bytes, found M; checksum differs; record count differs; unreadable), a split the dataset
      lacks, or a dataset that is not prepared.
  """
  try:
    info = load_info(data_dir)
  except FileNotFoundError as e:
    raise DatasetError(str(e), [str(e)]) from None
  wanted = list(info["files"]) if splits is None else list(splits)
  problems = []
  legacy = [s for s in wanted if s in info["files"] and s not in (info.get("shards") or {})]
  if legacy:
    _log.warning("%s: metadata.json records no shard sizes or checksums (prepared before they "
                 "were recorded); counting the records of splits %s instead. Rerunning the "
                 "preparation command records them.", data_dir, legacy)
  for split in wanted:
    if split not in info["files"]:
      problems.append(f"{data_dir}: no split {split!r}; it has {sorted(info['files'])}")
      continue
    if sum(info["shard_lengths"][split]) != info["splits"].get(split):
      problems.append(f"{data_dir}: split {split!r}: the shard lengths of dataset_info.json add up "
                      f"to {sum(info['shard_lengths'][split])}, metadata.json records "
                      f"{info['splits'].get(split)} examples")
    recorded = [e["file"] for e in (info.get("shards") or {}).get(split, [])]
    names = [os.path.basename(f) for f in info["files"][split]]
    if recorded and recorded != names:
      problems.append(f"{data_dir}: split {split!r}: metadata.json records the shards "
                      f"{recorded}, dataset_info.json {names}")
      continue
    problems += _shard_problems(info, split, info["files"][split], checksums=checksums,
                                scan=False)
  if problems:
    _raise(problems, f"{data_dir}: the prepared dataset is not as its metadata records")




def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  return process_index, process_count


def _split_info(info: Mapping[str, Any], split: str) -> tuple[list[str], list[int]]:
  if split not in info["files"]:
    raise ValueError(f"{info['data_dir']} has no split {split!r}; it has "
                     f"{sorted(info['files'])}")
  return info["files"][split], info["shard_lengths"][split]


HOST_SHARDINGS = ("global", "auto", "file", "example")


def _file_level(lengths: Sequence[int], process_count: int, host_sharding: str) -> bool:
  if host_sharding not in HOST_SHARDINGS:
    raise ValueError(f"host_sharding must be one of {HOST_SHARDINGS}, got {host_sharding!r}")
  if process_count == 1:
    return True
  if host_sharding == "global":
    return False
  if host_sharding == "example":
    return False
  if len(lengths) < process_count:
    if host_sharding == "file":
      raise ValueError(f"{len(lengths)} shards cannot be split over {process_count} hosts")
    return False
  if host_sharding == "file":
    return True
  counts = [sum(lengths[h::process_count]) for h in range(process_count)]
  # Whole shards per host only when the hosts then hold nearly equal shares; otherwise the
  # smallest host would set the number of training batches for all.
  return max(counts) - min(counts) <= 0.05 * max(counts)


def host_files(data_dir: str, split: str, *, process_index: Optional[int] = None,
               process_count: Optional[int] = None, host_sharding: str = "global"
               ) -> tuple[list[str], int, bool]:
  """The shards a host reads, its example count, and whether it reads whole shards.

  host_sharding:
    'global' (default): every host reads every shard, in the same order and the same shuffle,
      and takes its slice of each global batch, so the global batches are those of one process
      whatever the number of processes (N processes compute what one does, up to reduction
      order); every host reads the whole split.
    'file': whole shards per host (less reading; the batches depend on the process count);
    'example': every host reads every shard and keeps every process_count-th example;
    'auto': 'file' when the hosts' shares are within 5 %, else 'example'.

  Returns:
    (files, number of examples this host yields per epoch before batching (for 'global': the
    whole split's, before the host takes its slices), file_level).
  """
  index, count = _process(process_index, process_count)
  files, lengths = _split_info(load_info(data_dir), split)
  if _file_level(lengths, count, host_sharding):
    return files[index::count], sum(lengths[index::count]), True
  total = sum(lengths)
  if host_sharding == "global":
    return files, total, False
  return files, max(0, (total - index + count - 1) // count), False


def num_batches(data_dir: str, split: str, *, batch_size: int, train: bool,
                process_count: Optional[int] = None, host_sharding: str = "global") -> int:
  """Batches per epoch, the same on every host.

  Training drops the remainder (floor of the smallest host's share); evaluation pads (ceil of
  the largest host's share), so every clip is seen exactly once.

  Args:
    batch_size: the global batch size (divisible by the number of hosts).
  """
  if process_count is None:
    import jax

    process_count = jax.process_count()
  count = process_count
  local = _local_batch(batch_size, count)
  if host_sharding == "global" or count == 1:
    total = sum(_split_info(load_info(data_dir), split)[1])
    return total // batch_size if train else math.ceil(total / batch_size)
  shares = [host_files(data_dir, split, process_index=h, process_count=count,
                       host_sharding=host_sharding)[1] for h in range(count)]
  if train:
    return min(shares) // local
  return max(math.ceil(s / local) for s in shares)


def _local_batch(batch_size: int, process_count: int) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the number of "
                     f"hosts ({process_count})")
  return batch_size // process_count


# One definition for the pipeline and for prediction (`iib_jax.inference`, which needs no
# TensorFlow).
audio_normalization = schema.audio_normalization


def default_ops(info: Mapping[str, Any], *, train: bool, stored: Sequence[str],
                num_frames: int = 3, image_size: Optional[int] = None,
                audio_frames: Optional[int] = None,
                audio_norm: Union[None, str, Sequence[float]] = None,
                audio_pad: str = "zeros", audio_random_crop: bool = False,
                audio_position: str = "start", crop_scale: Sequence[float] = (0.08, 1.0),
                crop_ratio: Sequence[float] = (3 / 4, 4 / 3), per_frame: bool = True,
                frames_dtype: str = "float32") -> list:
  """The standard op list (METHODS.md §1.3): segment sampling, JPEG decoding, random resized
  crop + flip (train) or resize (eval), ImageNet normalisation; audio crop/pad, normalisation.

  Training decodes only each frame's crop box (`decode_random_resized_crop`). frames_dtype
  'float32' normalises the frames here; 'uint8' ships them rounded to uint8 and the model
  normalises them on the device (a third less host work per clip, a quarter of the bytes).
  """
  if frames_dtype not in FRAMES_DTYPES:
    raise ValueError(f"frames_dtype must be one of {FRAMES_DTYPES}, got {frames_dtype!r}")
  ops = []
  if "video" in stored:
    size = int(image_size or info["video"]["height"])
    ops.append(preprocess.sample_frames(num_frames, train=train))
  if "audio" in stored:
    frames = int(audio_frames or info["audio"]["default_frames"])
    ops.append(preprocess.crop_audio(frames, random=train and audio_random_crop, pad=audio_pad,
                                     position=audio_position))
  if "video" in stored:
    height, width = int(info["video"]["height"]), int(info["video"]["width"])
    if train:
      ops.append(preprocess.decode_random_resized_crop(size, crop_scale, crop_ratio, per_frame,
                                                       height=height, width=width))
      if frames_dtype == "uint8":   # flipping commutes with rounding: flip the smaller array
        ops.append(preprocess.quantize_frames())
      ops.append(preprocess.flip_left_right(per_frame))
    else:
      ops.append(preprocess.decode_frames(height, width))
      if frames_dtype == "float32" or (height, width) != (size, size):
        ops.append(preprocess.resize(size))
      if frames_dtype == "uint8":
        ops.append(preprocess.quantize_frames())
    if frames_dtype == "float32":
      ops.append(preprocess.normalize_frames())
  norm = audio_normalization(info, audio_norm) if "audio" in stored else None
  if norm is not None:
    ops.append(preprocess.normalize_audio(*norm))
  return ops


def _traced(fn):
  """`fn` traced by tf.data as written: the ops branch in TensorFlow (tf.cond, tf.where), never
  in Python on a tensor, so AutoGraph's conversion, which costs about a tenth of a second per
  map and dataset, has nothing to convert."""
  return tf.autograph.experimental.do_not_convert(fn)


def _epoch_seed(seed: int, epoch: int) -> int:
  # Distinct, reproducible seeds per (seed, epoch); tf.data seeds are int64.
  return int(np.random.default_rng([seed, epoch]).integers(0, 2 ** 31 - 1))


def make_tf_dataset(data_dir: str, split: str, *, batch_size: int, train: bool,
                    num_frames: int = 3, image_size: Optional[int] = None,
                    audio_frames: Optional[int] = None,
                    audio_norm: Union[None, str, Sequence[float]] = None,
                    audio_pad: str = "zeros", audio_random_crop: bool = False,
                    audio_position: str = "start", per_frame_augment: bool = True,
                    crop_scale: Sequence[float] = (0.08, 1.0),
                    crop_ratio: Sequence[float] = (3 / 4, 4 / 3), frames_dtype: str = "float32",
                    seed: int = 0, epoch: int = 0,
                    start_batch: int = 0, shuffle_buffer: int = 1024,
                    modalities: Optional[Mapping[str, str]] = None,
                    ops: Union[None, str, Sequence] = None,
                    damage: Union[str, Sequence] = "",
                    process_index: Optional[int] = None, process_count: Optional[int] = None,
                    host_sharding: str = "global", cycle_length: int = 16,
                    num_parallel_calls: int = AUTOTUNE, prefetch: int = AUTOTUNE
                    ) -> tf.data.Dataset:
  """One epoch of batches as a tf.data.Dataset of dicts (see the module docstring).

  Args:
    data_dir: the prepared dataset directory.
    split: 'train', 'validation' or 'test'.
    batch_size: the global batch size; each host yields batch_size // process_count.
    train: training (shuffle, random frames and augmentation, drop the last partial batch) or
      evaluation (file order, centre frames, resize, pad the last batch and mark it in 'mask').
    num_frames: T, frames per clip (segment sampling).
    image_size: output frame size (default: the stored size).
    audio_frames: audio length (default: the metadata's default_frames).
    audio_norm: see `audio_normalization` (default: the preset's recommendation).
    audio_pad: 'zeros' or 'tile', for clips shorter than audio_frames.
    audio_random_crop: in training, crop audio at a random offset instead of `audio_position`.
    audio_position: 'start' or 'center', the deterministic crop window.
    per_frame_augment: independent crop / flip per frame (as the reference loaders) or one per
      clip.
    crop_scale, crop_ratio: RandomResizedCrop's area and aspect ranges.
    frames_dtype: 'float32' (normalised here) or 'uint8' (in [0, 255], normalised on the
      device by the model).
    seed, epoch: the order and the augmentation are functions of these (and the data only).
    start_batch: skip this many batches of the epoch (resume); the rest are unchanged.
    shuffle_buffer: examples in the shuffle buffer (after frame selection and audio cropping,
      so an example is T JPEGs + the audio window).
    modalities: {batch key: stored modality ('video' or 'audio')}; default
      schema.DEFAULT_BATCH_KEYS.
    ops: replaces the standard op list: a list of preprocess ops or a string for
      `preprocess.parse_ops`; the leading selection ops run before the shuffle buffer.
    damage: train-time modality damage (`preprocess.parse_damage`: a string such as
      "drop_modalities(audio=0.3, video=0.3)|noise(audio, max=1.0, p=0.5)", or a list of damage
      ops), applied per example to the batch keys after every other op; "" = none. Evaluation
      (train=False) never applies it (the spec is still checked).
    process_index, process_count: this host (default: jax.process_index() / process_count()).
    host_sharding: 'auto', 'file' or 'example' (see `host_files`).
    cycle_length: shards read concurrently in training.
    num_parallel_calls, prefetch: tf.data parallelism and prefetch depth.

  Returns:
    A tf.data.Dataset of batches, exactly `num_batches(...) - start_batch` of them.
  """
  info = load_info(data_dir)
  index, count = _process(process_index, process_count)
  local = _local_batch(batch_size, count)
  modalities = dict(schema.DEFAULT_BATCH_KEYS if modalities is None else modalities)
  for key, kind in modalities.items():
    if kind not in schema.MODALITY_FEATURES:
      raise ValueError(f"modality {key!r} maps to unknown stored modality {kind!r}; stored "
                       f"modalities: {sorted(schema.MODALITY_FEATURES)}")
  stored = sorted(set(modalities.values()))
  damage_ops = preprocess.parse_damage(damage, list(modalities))
  if not train:   # evaluation is never damaged
    damage_ops = []
  if ops is None:
    ops = default_ops(info, train=train, stored=stored, num_frames=num_frames,
                      image_size=image_size, audio_frames=audio_frames, audio_norm=audio_norm,
                      audio_pad=audio_pad, audio_random_crop=audio_random_crop,
                      audio_position=audio_position, crop_scale=crop_scale,
                      crop_ratio=crop_ratio, per_frame=per_frame_augment,
                      frames_dtype=frames_dtype)
  elif isinstance(ops, str):
    ops = preprocess.parse_ops(ops)
  ops = list(ops)
  n_select = 0
  while n_select < len(ops) and getattr(ops[n_select], "stage", None) == preprocess.SELECT:
    n_select += 1
  select_ops, transform_ops = ops[:n_select], ops[n_select:]

  files, _, file_level = host_files(data_dir, split, process_index=index, process_count=count,
                                    host_sharding=host_sharding)
  total_batches = num_batches(data_dir, split, batch_size=batch_size, train=train,
                              process_count=count, host_sharding=host_sharding)
  epoch_seed = _epoch_seed(seed, epoch)
  bins = int(info["audio"]["bins"])

  ds = tf.data.Dataset.from_tensor_slices(files)
  if train:
    ds = ds.shuffle(len(files), seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(cycle_length, len(files))),
                       block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
  else:
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1, num_parallel_calls=1,
                       deterministic=True)
  sliced = host_sharding == "global" and count > 1
  if not file_level and count > 1 and not sliced:
    ds = ds.shard(count, index)
  ds = ds.enumerate()

  def select(i, serialized):
    seed_pair = tf.stack([tf.constant(epoch_seed, tf.int64), tf.cast(i, tf.int64)])
    ex = preprocess.parse(serialized, stored, audio_bins=bins)
    return seed_pair, preprocess.apply(select_ops, ex, seed_pair)

  ds = ds.map(_traced(select), num_parallel_calls=num_parallel_calls, deterministic=True)
  if train:
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  if sliced:
    # The global stream is the same on every host; each keeps its slice of every global batch.
    if start_batch:
      ds = ds.skip(start_batch * batch_size)
    ds = ds.enumerate().filter(lambda j, item: (j % batch_size) // local == index)
    ds = ds.map(lambda j, item: item)
  elif start_batch:
    ds = ds.skip(start_batch * local)

  def transform(seed_pair, ex):
    ex = preprocess.apply(transform_ops, ex, seed_pair)
    out = {key: ex[kind] for key, kind in modalities.items()}
    if damage_ops:
      out = preprocess.apply_damage(damage_ops, out, seed_pair, list(modalities))
    out.update(label=ex["label"], clip_id=ex["clip_id"], mask=tf.constant(1.0, tf.float32))
    return out

  ds = ds.map(_traced(transform), num_parallel_calls=num_parallel_calls, deterministic=True)
  remaining = max(total_batches - start_batch, 0)
  if train:
    ds = ds.batch(local, drop_remainder=True).take(remaining)
  else:
    ds = ds.batch(local, drop_remainder=False).map(lambda b: _pad_batch(b, local))
    # Hosts with a smaller share add whole padding batches, so that every host runs the same
    # number of evaluation steps.
    padding = tf.data.Dataset.from_tensors(_zeros_like_spec(ds.element_spec)).repeat()
    ds = ds.concatenate(padding).take(remaining)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options).prefetch(prefetch)


def _pad_batch(batch: dict, size: int) -> dict:
  n = tf.shape(batch["label"])[0]

  def pad(x):
    paddings = [[0, size - n]] + [[0, 0]] * (len(x.shape) - 1)
    return tf.ensure_shape(tf.pad(x, paddings), [size] + list(x.shape[1:]))

  return {k: pad(v) for k, v in batch.items()}  # 'mask' pads with 0: padding never counts


def _zeros_like_spec(spec: Mapping[str, tf.TensorSpec]) -> dict:
  return {k: (tf.fill(s.shape, tf.constant("", tf.string)) if s.dtype == tf.string
              else tf.zeros(s.shape, s.dtype)) for k, s in spec.items()}


class Batches:
  """One epoch of numpy batches: iterable (any number of times, same batches) with a length.

  Iterating raises `DatasetError` naming the shard when TensorFlow cannot read one (a
  truncated or corrupted record, a missing file), and at the end of the epoch when it yielded
  fewer batches than its length, or (evaluation from the first batch) fewer real examples than
  the metadata records.

  Attributes:
    dataset: the underlying tf.data.Dataset.
  """

  def __init__(self, dataset: tf.data.Dataset, length: int, *,
               info: Optional[Mapping[str, Any]] = None, split: Optional[str] = None,
               files: Sequence[str] = (), num_examples: Optional[int] = None):
    self.dataset = dataset
    self._length = length
    self._info, self._split, self._files = info, split, list(files)
    self._num_examples = num_examples

  def __len__(self) -> int:
    return self._length

  def _fail(self, what: str, error: Optional[Exception] = None) -> DatasetError:
    where = f"split {self._split!r} of {self._info['data_dir']}" if self._info else "the dataset"
    problems = []
    if self._info is not None:
      problems = _shard_problems(self._info, self._split, self._files, checksums=True,
                                 scan=False)
      if not problems:  # as recorded, yet unreadable: find the shard by reading each
        problems = _shard_problems(self._info, self._split, self._files, checksums=False,
                                   scan=True)
    head = f"{where}: {what}"
    if error is not None:
      head += f" ({type(error).__name__}: {_first_line(error)})"
    if not problems:
      return DatasetError(f"{head}; every shard ({', '.join(self._files)}) is as recorded", [])
    lines = "\n  ".join(problems)
    return DatasetError(f"{head}:\n  {lines}\n{REPAIR}", problems)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    iterator = self.dataset.as_numpy_iterator()
    batches = examples = 0
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        break
      except tf.errors.OpError as e:  # TensorFlow names a byte offset, never the file
        raise self._fail("reading failed", e) from e
      batches += 1
      if "mask" in batch:
        examples += int(np.sum(batch["mask"]))
      yield batch
    if batches < self._length:
      raise self._fail(f"yielded {batches} batches, expected {self._length}")
    if self._num_examples is not None and examples != self._num_examples:
      raise self._fail(f"yielded {examples} examples, the metadata records {self._num_examples}")


def checked_damage(spec: Optional[str], modalities: Sequence[str],
                   key: str = "data.train_damage") -> str:
  """`spec` itself once `preprocess.parse_damage` accepts it for these batch keys.

  For the commands, which build their pipeline options once: a bad damage string stops them
  before any training, naming the config key.

  Raises:
    ValueError: `invalid config: <key>=<spec>; <the parser's reason>`.
  """
  spec = spec or ""
  try:
    preprocess.parse_damage(spec, list(modalities))
  except ValueError as e:
    raise ValueError(f"invalid config: {key}={spec!r}; {e}") from None
  return spec


def make_dataset(data_dir: str, split: str, *, batch_size: int, train: bool,
                 start_batch: int = 0, process_count: Optional[int] = None,
                 host_sharding: str = "global", **kwargs) -> Batches:
  """One epoch of numpy batches (the batch contract of the module docstring).

  Takes the arguments of `make_tf_dataset`; `len()` of the result is the number of batches.
  """
  ds = make_tf_dataset(data_dir, split, batch_size=batch_size, train=train,
                       start_batch=start_batch, process_count=process_count,
                       host_sharding=host_sharding, **kwargs)
  total = num_batches(data_dir, split, batch_size=batch_size, train=train,
                      process_count=process_count, host_sharding=host_sharding)
  files, share, _ = host_files(data_dir, split, process_index=kwargs.get("process_index"),
                               process_count=process_count, host_sharding=host_sharding)
  index, count = _process(kwargs.get("process_index"), process_count)
  if host_sharding == "global" and count > 1:
    # This host's slices of the global batches: full batches, then its part of the last one.
    local = _local_batch(batch_size, count)
    share = (share // batch_size) * local + min(max(share % batch_size - index * local, 0),
                                                local)
  # Evaluation from its first batch yields every example of this host's share exactly once.
  num_examples = share if not train and not start_batch else None
  return Batches(ds, max(total - start_batch, 0), info=load_info(data_dir), split=split,
                 files=files, num_examples=num_examples)
