"""Sharded TFRecords, written in parallel, atomically and resumably, with dataset metadata.

`prepare(listing, out_dir, config)` turns the clips of a `splits.Listing` into
`<out_dir>/<name>/<split>-NNNNN-of-MMMMM.tfrecord` (the feature table is `iib_jax.schema`) and
writes tensorflow-datasets metadata so that `tfds.builder_from_directory(<out_dir>/<name>)`
loads the result.

Resumability: the clips of each split are shuffled with the seed and cut into shards before any
work starts (the plan, kept in `.prepare/plan.json`). A shard is written to `.prepare/tmp/`,
renamed into place, and only then is its record (`.prepare/<shard>.json`: example count, bytes,
skipped clips, statistics) renamed into place; a shard counts as finished when both exist and
agree. A rerun deletes stray temporary files and redoes unfinished shards only, so a run killed
at any moment and started again ends with the same dataset as an uninterrupted run.

Decoding runs in `workers` spawned processes (`data_prep.examples`, free of TensorFlow and JAX;
the parent serialises and writes); a tqdm bar reports clips/s and the ETA.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import errno
import fcntl
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from data_prep.examples import PrepareConfig, single_threaded_children, work
from data_prep.splits import Clip, Listing, Skip, check_dataset_name, stable_seed
from iib_jax import schema

FORMAT_VERSION = 1
_STATE_DIR = ".prepare"


class PrepareError(Exception):
  """The dataset could not be prepared (nothing written, too many skipped clips, bad setup)."""


@dataclasses.dataclass
class PrepareResult:
  """What `prepare` wrote: the dataset directory, examples per split, every skipped clip."""
  data_dir: str
  splits: dict
  skipped: list
  metadata: dict


# ---------------------------------------------------------------------------------------------
# Plan and state.


def plan_shards(clips: Sequence[Clip], split: str, config: PrepareConfig) -> list[list[Clip]]:
  """Seeded shuffle of a split's clips, cut into contiguous shards of near-equal size.

  Shuffling before sharding mixes the classes within every shard, so a reader interleaving a
  few shards already sees a class-balanced stream.
  """
  if not clips:
    return []
  clips = sorted(clips, key=lambda c: c.clip_id)
  order = np.random.default_rng(stable_seed(config.seed, "shards", split)).permutation(len(clips))
  shuffled = [clips[i] for i in order]
  if config.num_shards is not None:
    num_shards = max(1, min(int(config.num_shards), len(clips)))
  else:
    num_shards = max(1, math.ceil(len(clips) / max(1, int(config.clips_per_shard))))
  bounds = np.linspace(0, len(clips), num_shards + 1).round().astype(int)
  return [shuffled[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _write_failure(path: str, tmp: str, error: Exception) -> PrepareError:
  """Removes the partial file `tmp` and returns the one-line error naming `path`."""
  with contextlib.suppress(OSError):
    os.remove(tmp)
  if isinstance(error, OSError):
    reason = error.strerror or str(error)
  else:  # TensorFlow's errors read "<file>; <reason>"
    reason = str(getattr(error, "message", error)).rsplit("; ", 1)[-1]
  reason = (reason.strip().splitlines() or [type(error).__name__])[0]
  return PrepareError(f"cannot write {path}: {reason}. The partial file was removed and the "
                      f"shards finished so far are kept: free some space (or fix the cause) and "
                      f"rerun the same command")


def _atomic_write(path: str, data: bytes | str, tmp_dir: str) -> None:
  os.makedirs(tmp_dir, exist_ok=True)
  tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:  # a full disk, a quota, a read-only file system
    raise _write_failure(path, tmp, e) from e


@contextlib.contextmanager
def _locked(path: str, blocking: bool) -> Iterator[None]:
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise PrepareError(f"another preparation run is writing {os.path.dirname(path)}; "
                           f"wait for it to finish") from e
      raise
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _shard_done(data_dir: str, state_dir: str, name: str) -> Optional[dict]:
  record_path = os.path.join(state_dir, name + ".json")
  shard_path = os.path.join(data_dir, name)
  if not (os.path.exists(record_path) and os.path.exists(shard_path)):
    return None
  try:
    with open(record_path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  if record.get("num_bytes") != os.path.getsize(shard_path):
    return None
  # A shard damaged after it was written (a bit flip, an overwrite of the same size) is redone.
  if "sha256" in record:
    return record if record["sha256"] == schema.file_sha256(shard_path) else None
  # A record from before checksums: the shard's records and their CRCs are read instead.
  tf = _import_tf()
  try:
    count = sum(1 for _ in tf.data.TFRecordDataset(shard_path))
  except tf.errors.OpError:
    return None
  return record if count == record.get("num_examples") else None


def _import_tf():
  from iib_jax.quiet import import_tensorflow
  tf = import_tensorflow()

  try:
    # The writer needs no accelerator; never take GPU memory from a training job.
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass
  return tf


def _serialize(tf, ex: dict) -> bytes:
  def b(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  def i(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  def f(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))

  feature = {
      schema.CLIP_ID: b([ex["clip_id"].encode("utf-8")]),
      schema.LABEL: i([ex["label"]]),
      schema.LABEL_NAME: b([ex["label_name"].encode("utf-8")]),
      schema.DURATION: f([ex["duration"]]),
      schema.VIDEO_FRAMES: b(ex["frames"]),
      schema.VIDEO_FPS: f([ex["fps"]]),
      schema.AUDIO_VALUE: b([ex["audio"]]),
      schema.AUDIO_SHAPE: i(ex["audio_shape"]),
      schema.AUDIO_SAMPLE_RATE: i([ex["sample_rate"]]),
  }
  # deterministic: map entries in key order, so a shard's bytes do not depend on the process
  # (hash seed) that wrote it and a resumed run reproduces an uninterrupted one byte for byte.
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def tfds_features(class_names: Sequence[str], image_size: Sequence[int]):
  """The tensorflow-datasets FeaturesDict whose serialized form is the schema's Example.

  Args:
    class_names: in label order.
    image_size: (height, width) of the stored frames.
  """
  import tensorflow_datasets as tfds

  height, width = int(image_size[0]), int(image_size[1])
  return tfds.features.FeaturesDict({
      "clip_id": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "label_name": tfds.features.Text(),
      "duration": tfds.features.Scalar(np.float32),
      "video": {
          "frames": tfds.features.Sequence(
              tfds.features.Image(shape=(height, width, 3), encoding_format="jpeg")),
          "fps": tfds.features.Scalar(np.float32),
      },
      "audio": {
          # (None, None): tfds then stores the shape beside the raw float32 bytes.
          "spectrogram": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                              encoding="bytes"),
          "sample_rate": tfds.features.Scalar(np.int64),
      },
  })


# ---------------------------------------------------------------------------------------------
# The run.


def _summary_stats(values: Sequence[float]) -> dict:
  if not values:
    return {"min": None, "max": None, "mean": None}
  return {"min": min(values), "max": max(values), "mean": float(np.mean(values))}


def _write_skipped(path: str, skipped: Sequence[Skip], tmp_dir: str) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["split", "clip_id", "kind", "reason"])
  for s in sorted(skipped, key=lambda s: (s.split, s.clip_id, s.kind, s.reason)):
    writer.writerow([s.split, s.clip_id, s.kind, s.reason])
  _atomic_write(path, buf.getvalue(), tmp_dir)


def _software_versions() -> dict:
  import av
  import librosa
  from iib_jax.quiet import import_tensorflow
  tf = import_tensorflow()
  import tensorflow_datasets as tfds

  return {"python": sys.version.split()[0], "numpy": np.__version__, "av": av.__version__,
          "librosa": librosa.__version__, "tensorflow": tf.__version__,
          "tensorflow_datasets": tfds.__version__}


def _prepare_dir(data_dir: str, overwrite: bool) -> None:
  if overwrite and os.path.isdir(data_dir):
    entries = os.listdir(data_dir)
    if entries and _STATE_DIR not in entries:
      raise PrepareError(f"{data_dir} is not a prepared dataset; refusing to delete it for "
                         f"--overwrite")
    shutil.rmtree(data_dir)
  os.makedirs(os.path.join(data_dir, _STATE_DIR, "tmp"), exist_ok=True)


def prepare(listing: Listing, out_dir: str, config: PrepareConfig, *, workers: int = 1,
            max_skip_fraction: float = 0.05, overwrite: bool = False,
            progress: Optional[bool] = None, log=print) -> PrepareResult:
  """Writes (or finishes writing) the prepared dataset `<out_dir>/<listing.name>`.

  Args:
    listing: clips per split, class names and listing-time rejects, from a dataset reader.
    out_dir: the parent directory.
    config: the preparation parameters.
    workers: decoding processes; 0 or 1 decodes in this process.
    max_skip_fraction: fail when more than this share of the listed clips was skipped.
    overwrite: delete an earlier preparation in the same place first (needed when the clips or
      parameters changed; a rerun with the same ones resumes instead).
    progress: show a tqdm bar (None: when stderr is a terminal).
    log: where the summary lines go.

  Returns:
    A PrepareResult.

  Raises:
    PrepareError: the name is not a plain directory name, the listing has no train clip (both
      before anything is written), nothing or no train clip could be written, too many clips
      were skipped (the shards written so far are kept; rerun with a larger max_skip_fraction
      to accept them), a file could not be written (a full disk: the partial file is removed),
      the output holds a preparation with other parameters, or another run holds the directory.
  """
  try:
    check_dataset_name(listing.name)
  except ValueError as e:
    raise PrepareError(str(e)) from None
  _check_train_listed(listing)
  data_dir = os.path.join(out_dir, listing.name)
  state_dir = os.path.join(data_dir, _STATE_DIR)
  tmp_dir = os.path.join(state_dir, "tmp")
  _prepare_dir(data_dir, overwrite)
  with _locked(os.path.join(state_dir, "lock"), blocking=False):
    # Leftovers of a killed run: never part of the dataset, safe to drop.
    for entry in os.listdir(tmp_dir):
      path = os.path.join(tmp_dir, entry)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return _prepare_locked(listing, data_dir, state_dir, tmp_dir, config, workers,
                           max_skip_fraction, progress, log)


def _check_train_listed(listing: Listing) -> None:
  """Raises PrepareError, naming the train split file, when the listing has no train clip."""
  if listing.splits.get("train"):
    return
  source = listing.split_files.get("train") or listing.source.get("raw_dir", "the raw dataset")
  rejected = [s for s in listing.skipped if s.split == "train"]
  detail = "it lists no clip"
  if rejected:
    kinds = collections.Counter(s.kind for s in rejected)
    detail = (f"all {len(rejected)} of its lines were skipped ("
              + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
              + f"; the first: {rejected[0].reason})")
  raise PrepareError(f"{source}: no train clip to prepare: {detail}. Nothing was written; a "
                     f"dataset without train examples cannot be trained on")


def _prepare_locked(listing, data_dir, state_dir, tmp_dir, config, workers, max_skip_fraction,
                    progress, log) -> PrepareResult:
  order = [s for s in schema.SPLITS if s in listing.splits]
  order += sorted(s for s in listing.splits if s not in schema.SPLITS)
  splits = {s: listing.splits[s] for s in order if listing.splits[s]}
  plan = {split: plan_shards(clips, split, config) for split, clips in splits.items()}
  shard_names = {split: [schema.shard_name(split, i, len(shards)) for i in range(len(shards))]
                 for split, shards in plan.items()}
  plan_json = {
      "format_version": FORMAT_VERSION, "name": listing.name,
      "class_names": list(listing.class_names), "config": config.to_json(),
      "shards": {n: [dataclasses.asdict(c) for c in clips]
                 for split in plan for n, clips in zip(shard_names[split], plan[split])},
  }
  text = json.dumps(plan_json, indent=1, sort_keys=True)
  fingerprint = hashlib.sha256(text.encode()).hexdigest()
  plan_path = os.path.join(state_dir, "plan.json")
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      old = hashlib.sha256(f.read().encode()).hexdigest()
    if old != fingerprint:
      raise PrepareError(
          f"{data_dir} holds a preparation with other clips or parameters (see {plan_path}); "
          f"use another --out_dir or --overwrite")
  else:
    _atomic_write(plan_path, text, tmp_dir)

  # What is left to do.
  todo: list[tuple[str, str, list[Clip]]] = []
  records: dict[str, dict] = {}
  for split in plan:
    for name, clips in zip(shard_names[split], plan[split]):
      record = _shard_done(data_dir, state_dir, name)
      if record is None:
        todo.append((split, name, clips))
      else:
        records[name] = record
  num_todo = sum(len(c) for _, _, c in todo)
  total = sum(len(c) for c in splits.values())
  if records:
    log(f"{data_dir}: {len(records)} shards already written, {len(todo)} to go "
        f"({num_todo} of {total} clips)")

  if todo:
    _write_shards(todo, data_dir, state_dir, tmp_dir, config, workers, progress, records)

  # Everything is on disk: gather the records, check, write the metadata.
  skipped = list(listing.skipped)
  examples = collections.Counter()
  num_bytes = collections.Counter()
  shard_lengths: dict[str, list[int]] = {}
  shard_files: dict[str, list[dict]] = {}
  frames_per_clip: dict[str, list[int]] = collections.defaultdict(list)
  audio_frames_per_clip: list[int] = []
  audio_sum = audio_sumsq = audio_count = 0.0
  for split in plan:
    shard_lengths[split], shard_files[split] = [], []
    for name in shard_names[split]:
      record = records[name]
      if "sha256" not in record:  # a shard finished before checksums were recorded
        record["sha256"] = schema.file_sha256(os.path.join(data_dir, name))
        _atomic_write(os.path.join(state_dir, name + ".json"), json.dumps(record), tmp_dir)
      shard_files[split].append({"file": name, "num_examples": record["num_examples"],
                                 "num_bytes": record["num_bytes"], "sha256": record["sha256"]})
      shard_lengths[split].append(record["num_examples"])
      examples[split] += record["num_examples"]
      num_bytes[split] += record["num_bytes"]
      skipped.extend(Skip(**s) for s in record["skipped"])
      frames_per_clip[split].extend(record["num_frames"])
      audio_frames_per_clip.extend(record["audio_valid_frames"])
      if split == "train":
        audio_sum += record["audio_sum"]
        audio_sumsq += record["audio_sumsq"]
        audio_count += record["audio_count"]
  _write_skipped(os.path.join(data_dir, schema.SKIPPED_FILE), skipped, tmp_dir)

  listed = listing.num_listed
  by_kind = dict(sorted(collections.Counter(s.kind for s in skipped).items()))
  fraction = len(skipped) / max(listed, 1)
  written = sum(examples.values())
  split_text = ", ".join(f"{s} {examples[s]}" for s in plan)
  kinds_text = ", ".join(f"{k} {n}" for k, n in by_kind.items())
  if skipped:
    log(f"skipped {len(skipped)} of {listed} clips ({100 * fraction:.1f}%): {kinds_text}; "
        f"reasons in {os.path.join(data_dir, schema.SKIPPED_FILE)}")
  if written == 0:
    raise PrepareError(f"no clip of {listing.name} could be prepared ({listed} listed; "
                       f"reasons in {os.path.join(data_dir, schema.SKIPPED_FILE)})")
  if not examples["train"]:
    raise PrepareError(
        f"no train clip of {listing.name} could be prepared ({len(splits.get('train', []))} "
        f"listed; reasons in {os.path.join(data_dir, schema.SKIPPED_FILE)}): a dataset without "
        f"train examples cannot be trained on")
  if fraction > max_skip_fraction:
    raise PrepareError(
        f"{len(skipped)} of {listed} clips ({100 * fraction:.1f}%) were skipped, more than "
        f"--max_skip_fraction {max_skip_fraction}: {kinds_text}. The reasons are in "
        f"{os.path.join(data_dir, schema.SKIPPED_FILE)}; fix the inputs and rerun, or rerun "
        f"with a larger --max_skip_fraction to accept the {written} prepared clips (finished "
        f"shards are kept)")

  audio = dict(config.audio)
  mean = audio_sum / audio_count if audio_count else 0.0
  var = max(audio_sumsq / audio_count - mean ** 2, 0.0) if audio_count else 1.0
  fixed = audio.get("frames")
  # A preset of fixed length (ogm_ge_stft, kaldi_fbank) already stores the length to use.
  default_frames = fixed or config.audio_frames or max(audio_frames_per_clip)
  audio.update({
      "frames": fixed, "default_frames": int(default_frames),
      "mean": float(mean), "std": float(math.sqrt(var)),
      "valid_frames_per_clip": _summary_stats(audio_frames_per_clip),
  })
  metadata = {
      "format_version": FORMAT_VERSION,
      "name": listing.name,
      "num_classes": len(listing.class_names),
      "class_names": list(listing.class_names),
      "splits": {s: int(examples[s]) for s in plan},
      "listed": {s: len(c) for s, c in splits.items()},
      "skipped": {"total": len(skipped), "fraction": fraction, "by_kind": by_kind},
      "audio": audio,
      "video": {
          "fps": float(config.fps), "height": int(config.image_size[0]),
          "width": int(config.image_size[1]), "jpeg_quality": int(config.jpeg_quality),
          "resize": "libswscale area, aspect ratio not kept",
          "frames_per_clip": {s: _summary_stats(v) for s, v in frames_per_clip.items()},
      },
      "source": dict(listing.source),
      "prepare": {"seed": config.seed, "clips_per_shard": config.clips_per_shard,
                  "num_shards": {s: len(n) for s, n in shard_names.items()},
                  "num_bytes": {s: int(num_bytes[s]) for s in plan}},
      # What iib_jax.data.verify_dataset checks before a run: every shard's size and checksum.
      "shards": shard_files,
      "software": _software_versions(),
  }
  _write_tfds_metadata(data_dir, listing, config, shard_lengths, num_bytes, metadata)
  log(f"wrote {written} clips ({split_text}) to {data_dir}")
  return PrepareResult(data_dir=data_dir, splits=dict(metadata["splits"]), skipped=skipped,
                       metadata=metadata)


def _write_shards(todo, data_dir, state_dir, tmp_dir, config, workers, progress, records):
  tf = _import_tf()
  from tqdm import tqdm

  items = [(i, clip) for i, clip in enumerate(c for _, _, clips in todo for c in clips)]
  fn = functools.partial(work, config=config)
  pool = None
  if workers > 1:
    # spawn: the parent may hold TensorFlow's threads, which a fork would copy mid-flight.
    ctx = multiprocessing.get_context("spawn")
    with single_threaded_children():
      pool = ctx.Pool(workers)
    results = pool.imap(fn, items, chunksize=1)
  else:
    results = map(fn, items)
  bar = tqdm(total=len(items), unit="clip", desc="preparing", dynamic_ncols=True,
             disable=(not sys.stderr.isatty()) if progress is None else not progress,
             mininterval=1.0, smoothing=0.1)
  try:
    for split, name, clips in todo:
      tmp = os.path.join(tmp_dir, f"{name}.{os.getpid()}.tmp")
      final = os.path.join(data_dir, name)
      record = {"split": split, "num_examples": 0, "skipped": [], "num_frames": [],
                "audio_valid_frames": [], "audio_sum": 0.0, "audio_sumsq": 0.0,
                "audio_count": 0}
      try:
        with tf.io.TFRecordWriter(tmp) as writer:
          for clip in clips:
            _, status, payload = next(results)
            bar.update(1)
            if status != "ok":
              record["skipped"].append(dataclasses.asdict(
                  Skip(split, clip.clip_id, status, payload)))
              continue
            writer.write(_serialize(tf, payload))
            stats = payload["stats"]
            record["num_examples"] += 1
            record["num_frames"].append(stats["num_frames"])
            record["audio_valid_frames"].append(stats["audio_valid_frames"])
            record["audio_sum"] += stats["audio_sum"]
            record["audio_sumsq"] += stats["audio_sumsq"]
            record["audio_count"] += stats["audio_count"]
        os.replace(tmp, final)
      except (OSError, tf.errors.OpError) as e:  # a full disk, a quota, a read-only directory
        raise _write_failure(final, tmp, e) from e
      record["num_bytes"] = os.path.getsize(final)
      record["sha256"] = schema.file_sha256(final)
      # The record goes last: a shard without its record is redone by the next run.
      _atomic_write(os.path.join(state_dir, name + ".json"), json.dumps(record), tmp_dir)
      records[name] = record
      bar.set_postfix_str(f"{len(records)} shards done", refresh=False)
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()


def _write_tfds_metadata(data_dir, listing, config, shard_lengths, num_bytes, metadata):
  from iib_jax.quiet import import_tensorflow
  tf = import_tensorflow()
  import tensorflow_datasets as tfds
  from absl import logging as absl_logging
  from tensorflow_datasets.core import naming

  template = naming.ShardedFileTemplate(
      data_dir=data_dir, template=schema.SHARD_TEMPLATE, dataset_name=listing.name,
      filetype_suffix=schema.FILE_FORMAT)
  split_infos = [
      tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=int(num_bytes[split]),
                          filename_template=template.replace(split=split))
      for split, lengths in shard_lengths.items()]
  description = (
      f"{listing.name}, prepared by data_prep ({metadata['audio']['preset']} audio "
      f"front-end, frames at {config.fps:g} fps, {config.image_size[0]}x{config.image_size[1]} "
      f"JPEG). Every preprocessing parameter is in metadata.json; the format is documented in "
      f"docs/DATA.md.")
  tmp_dir = os.path.join(data_dir, _STATE_DIR, "tmp")
  # tfds writes its files in place; written beside them first and renamed, they are never seen
  # half written (a full disk leaves the previous ones, or none).
  tfds_dir = os.path.join(tmp_dir, f"tfds.{os.getpid()}")
  verbosity = absl_logging.get_verbosity()
  # tfds's own deprecation warnings about its internals say nothing about this dataset.
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    # check_data=False: tfds would read the first split, which may be empty; the check below
    # reads the first non-empty one instead.
    try:
      os.makedirs(tfds_dir, exist_ok=True)
      # tfds reads the dataset name, file suffix and split names off file names of the shards'
      # pattern (the split infos are given): an empty stand-in per split is enough.
      for split, lengths in shard_lengths.items():
        open(os.path.join(tfds_dir, schema.shard_name(split, 0, len(lengths))), "wb").close()
      with contextlib.redirect_stdout(io.StringIO()):
        tfds.folder_dataset.write_metadata(
            data_dir=tfds_dir, features=tfds_features(listing.class_names, config.image_size),
            split_infos=split_infos, filename_template=template, check_data=False,
            description=description, metadata=tfds.core.MetadataDict(metadata))
      for entry in sorted(os.listdir(tfds_dir)):
        # tfds's metadata.json is the one written below, indented.
        if not entry.endswith("." + schema.FILE_FORMAT) and entry != schema.METADATA_FILE:
          os.replace(os.path.join(tfds_dir, entry), os.path.join(data_dir, entry))
    except (OSError, tf.errors.OpError) as e:  # e.g. a full disk
      raise _write_failure(os.path.join(data_dir, schema.TFDS_INFO_FILE), tfds_dir, e) from e
    finally:
      shutil.rmtree(tfds_dir, ignore_errors=True)
    # Same content as tfds wrote, indented for people reading it.
    _atomic_write(os.path.join(data_dir, schema.METADATA_FILE),
                  json.dumps(metadata, indent=2) + "\n", tmp_dir)
    builder = tfds.builder_from_directory(data_dir)
    split = next(s for s, lengths in shard_lengths.items() if sum(lengths))
    for _ in builder.as_dataset(split=f"{split}[:1]").take(1):
      pass
  finally:
    absl_logging.set_verbosity(verbosity)
  _atomic_write(os.path.join(data_dir, _STATE_DIR, "done.json"),
                json.dumps({"finished": time.time()}), tmp_dir)
