"""The prepared-dataset format: TFRecord feature names, dtypes and shapes, and the dataset info.

Shared by the writer (`data_prep/tfrecords.py`) and the reader (`iib_jax/data.py`); docs/DATA.md
documents the same table. This module imports neither TensorFlow nor any media library, so the
training side can read a dataset's info (class names, split sizes, preprocessing) without them.

A prepared dataset is one directory `<out_dir>/<dataset>/` holding

  <split>-<shard:05d>-of-<num_shards:05d>.tfrecord   tf.train.Example records (FEATURES below)
  dataset_info.json, features.json, label.labels.txt  tensorflow-datasets metadata
  metadata.json                                       preprocessing parameters, classes, statistics,
                                                      each shard's size and SHA-256
  skipped.csv                                         clips that could not be prepared, with reasons

and `tfds.builder_from_directory(<out_dir>/<dataset>)` loads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

# Feature keys of one tf.train.Example. The '/' names are the flattened form of the nested
# tensorflow-datasets FeaturesDict {'video': {...}, 'audio': {...}}.
CLIP_ID = "clip_id"
LABEL = "label"
LABEL_NAME = "label_name"
DURATION = "duration"
VIDEO_FRAMES = "video/frames"
VIDEO_FPS = "video/fps"
AUDIO_VALUE = "audio/spectrogram/value"
AUDIO_SHAPE = "audio/spectrogram/shape"
AUDIO_SAMPLE_RATE = "audio/sample_rate"


@dataclasses.dataclass(frozen=True)
class Feature:
  """One tf.train.Example feature.

  Attributes:
    name: the key in the Example.
    kind: the Example list type: 'bytes', 'int64' or 'float'.
    shape: the number of values: () for one value, (None,) for a variable count, (n,) for n.
    doc: what the values mean.
  """
  name: str
  kind: str
  shape: tuple
  doc: str


FEATURES: tuple[Feature, ...] = (
    Feature(CLIP_ID, "bytes", (), "clip identifier, UTF-8 (file stem of the source media)"),
    Feature(LABEL, "int64", (), "class index into metadata.json's class_names"),
    Feature(LABEL_NAME, "bytes", (), "class name, UTF-8"),
    Feature(DURATION, "float", (), "seconds of audio in the clip after segment clipping, before "
            "any tiling or padding of the features"),
    Feature(VIDEO_FRAMES, "bytes", (None,), "[num_frames] JPEG-encoded RGB frames of "
            "metadata.video.height x width, at video/fps, in time order"),
    Feature(VIDEO_FPS, "float", (), "frames per second of video/frames"),
    Feature(AUDIO_VALUE, "bytes", (), "audio features: float32 little-endian, row-major "
            "[time, bins]"),
    Feature(AUDIO_SHAPE, "int64", (2,), "[time, bins] of audio/spectrogram/value"),
    Feature(AUDIO_SAMPLE_RATE, "int64", (), "sample rate (Hz) of the waveform the features "
            "were computed from"),
)

# Kinds of stored modality, and the batch key each is delivered under unless a caller maps it
# elsewhere (the model code reads batch keys; a dataset with more modalities adds entries here).
MODALITY_FEATURES: Mapping[str, tuple[str, ...]] = {
    "video": (VIDEO_FRAMES, VIDEO_FPS),
    "audio": (AUDIO_VALUE, AUDIO_SHAPE),
}
DEFAULT_BATCH_KEYS: Mapping[str, str] = {"video": "video", "audio": "audio"}

# Files of a prepared dataset.
METADATA_FILE = "metadata.json"
TFDS_INFO_FILE = "dataset_info.json"
SKIPPED_FILE = "skipped.csv"
SHARD_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
FILE_FORMAT = "tfrecord"
SPLITS = ("train", "validation", "test")

# Audio normalisation constants of the Kinetics-Sounds Kaldi fbank recipe (OGM-GE
# data/KineticSound/process_audio.py): x -> (x - KS_FBANK_MEAN) / (2 * KS_FBANK_STD).
KS_FBANK_MEAN = -4.503877
KS_FBANK_STD = 5.141276

# ImageNet statistics used by every reference implementation for the frames (METHODS.md §1.3).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How frames leave the input pipeline: ImageNet-normalised float32, or uint8 in [0, 255] that
# the model normalises on the device.
FRAMES_DTYPES = ("float32", "uint8")


def shard_name(split: str, index: int, num_shards: int) -> str:
  """File name of shard `index` of `num_shards` of a split, e.g. 'train-00003-of-00012.tfrecord'.

  Matches tensorflow-datasets' SHARD_TEMPLATE expansion (five digits at least).
  """
  digits = max(5, len(str(num_shards)))
  return f"{split}-{index:0{digits}d}-of-{num_shards:0{digits}d}.{FILE_FORMAT}"


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes (as `sha256sum` prints it); the checksum of a shard."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


class DatasetError(ValueError):
  """A prepared dataset is not as its metadata records it.

  The message names each bad shard (or the split) and the problem, and says what to do.

  Attributes:
    problems: one line per problem, each starting with the shard's path (or the dataset's).
  """

  def __init__(self, message: str, problems: Sequence[str] = ()):
    super().__init__(message)
    self.problems = list(problems)


def load_info(data_dir: str) -> dict[str, Any]:
  """Reads a prepared dataset's info without TensorFlow.

  Args:
    data_dir: the dataset directory (`<out_dir>/<dataset>`), as given to
      `tfds.builder_from_directory`.

  Returns:
    The dict stored in metadata.json (keys include 'name', 'num_classes', 'class_names',
    'splits' {split: num_examples}, 'audio' {preset, sample_rate, bins, frames, ...},
    'video' {fps, height, width, ...}, 'shards' {split: [{file, num_examples, num_bytes,
    sha256}]} for datasets prepared since shard checksums were recorded), plus 'data_dir',
    'shard_lengths' {split: [n per shard]} and 'files' {split: [absolute shard paths]}.

  Raises:
    FileNotFoundError: naming the missing file, when the directory is not a prepared dataset
      (or its preparation has not finished).
  """
  meta_path = os.path.join(data_dir, METADATA_FILE)
  tfds_path = os.path.join(data_dir, TFDS_INFO_FILE)
  for path in (meta_path, tfds_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: {data_dir} is not a prepared dataset (run python -m "
          f"data_prep.<dataset> --raw_dir ... --out_dir ... until it reports success)")
  with open(meta_path) as f:
    info = json.load(f)
  with open(tfds_path) as f:
    tfds_info = json.load(f)
  info["data_dir"] = os.path.abspath(data_dir)
  info["shard_lengths"], info["files"] = {}, {}
  for split in tfds_info.get("splits", []):
    lengths = [int(n) for n in split.get("shardLengths", [])]
    info["shard_lengths"][split["name"]] = lengths
    info["files"][split["name"]] = [
        os.path.join(info["data_dir"], shard_name(split["name"], i, len(lengths)))
        for i in range(len(lengths))]
  return info


def audio_normalization(info: Mapping[str, Any],
                        audio_norm: None | str | Sequence[float] = None
                        ) -> tuple[float, float] | None:
  """(mean, std) of the audio normalisation, or None for none.

  Args:
    info: a dataset's metadata (`load_info`).
    audio_norm: None (the preset's recommendation recorded in the metadata), 'none',
      'dataset' (the training split's mean and std, from the metadata), 'ks' (the
      Kinetics-Sounds fbank constants: mean -4.503877, std 2 * 5.141276) or (mean, std).
  """
  audio = info["audio"]
  if audio_norm is None:
    audio_norm = audio.get("norm", "none")
  if isinstance(audio_norm, str):
    if audio_norm == "none":
      return None
    if audio_norm == "dataset":
      return float(audio["mean"]), float(audio["std"]) or 1.0
    if audio_norm == "ks":
      return KS_FBANK_MEAN, 2 * KS_FBANK_STD
    raise ValueError(f"audio_norm must be none, dataset, ks or (mean, std), got {audio_norm!r}")
  mean, std = audio_norm
  return float(mean), float(std)
