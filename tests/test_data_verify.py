"""iib_jax.data.verify_dataset and the checks while reading: damaged shards are named before any
training, reading errors name the shard, and rerunning the preparation repairs exactly them.

The dataset is a tiny Kinetics-Sounds layout (4 train clips, 2 test clips, 1 s, 32x32 at 4 fps,
2 clips per shard). Record boundaries, sizes and digests are read from the files with struct and
hashlib, not with the code under test.
"""
import hashlib
import json
import logging
import os
import shutil
import struct

import numpy as np
import pytest

from data_prep import kinetics_sounds
from data_prep.synthetic import write_video
from iib_jax import data

SR = 16000
FLAGS = ["--fps", "4", "--image_size", "32", "--workers", "0", "--val_fraction", "0",
         "--clips_per_shard", "2", "--audio_frames", "100", "--no_progress"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  raw = tmp_path_factory.mktemp("verify_raw")
  (raw / "videos").mkdir()
  for n in range(6):
    tone = (0.3 * np.sin(2 * np.pi * (300 + 100 * n) * np.arange(SR) / SR)).astype(np.float32)
    write_video(str(raw / "videos" / f"v{n}.mp4"), np.full((4, 32, 32, 3), 30 * n, np.uint8),
                4, tone, SR)
  (raw / "train.txt").write_text("".join(f"v{n},1,{n % 2}\n" for n in range(4)))
  (raw / "test.txt").write_text("v4,1,0\nv5,1,1\n")
  out = tmp_path_factory.mktemp("verify_out")
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out)] + FLAGS) == 0
  return str(raw), str(out)


@pytest.fixture()
def dataset(prepared, tmp_path):
  """A fresh copy of the prepared dataset: (the command's arguments for it, its directory)."""
  raw, out = prepared
  copy = tmp_path / "out"
  shutil.copytree(out, copy)
  return ["--raw_dir", raw, "--out_dir", str(copy)] + FLAGS, str(copy / "kinetics_sounds")


def shard(data_dir, split, index=0):
  names = sorted(n for n in os.listdir(data_dir) if n.startswith(split + "-"))
  return os.path.join(data_dir, names[index])


def record_ends(path):
  """Byte offsets where each TFRecord ends (length u64, crc u32, payload, crc u32)."""
  data, pos, ends = open(path, "rb").read(), 0, []
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    pos += 8 + 4 + length + 4
    ends.append(pos)
  return ends


def state(data_dir):
  """{file: (sha256, mtime)} of every shard."""
  return {n: (hashlib.sha256(open(os.path.join(data_dir, n), "rb").read()).hexdigest(),
              os.stat(os.path.join(data_dir, n)).st_mtime_ns)
          for n in sorted(os.listdir(data_dir)) if n.endswith(".tfrecord")}


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)          # inside the last record


def flip_bit(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, 1)
    f.write(bytes([byte ^ 0x10]))


def cut_at_record(path):
  with open(path, "r+b") as f:
    f.truncate(record_ends(path)[0])                 # one whole record of two


DAMAGE = {"truncated": truncate, "bit_flipped": flip_bit, "cut_at_record": cut_at_record,
          "missing": os.remove}


def test_the_metadata_records_each_shard_as_it_is_on_disk(dataset):
  _, data_dir = dataset
  meta = json.load(open(os.path.join(data_dir, "metadata.json")))
  for split, count in (("train", 4), ("test", 2)):
    entries = meta["shards"][split]
    assert sum(e["num_examples"] for e in entries) == count == meta["splits"][split]
    for entry in entries:
      path = os.path.join(data_dir, entry["file"])
      assert entry["num_bytes"] == os.path.getsize(path)
      assert entry["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
      assert entry["num_examples"] == len(record_ends(path))


def test_a_clean_dataset_passes_and_is_only_read(dataset):
  _, data_dir = dataset
  before = state(data_dir)
  data.verify_dataset(data_dir)
  data.verify_dataset(data_dir, ["test"], checksums=False)
  assert state(data_dir) == before


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_damaged_shard_is_named_before_training(dataset, damage, split):
  _, data_dir = dataset
  path = shard(data_dir, split)
  size, ends = os.path.getsize(path), record_ends(path)
  DAMAGE[damage](path)
  before = state(data_dir)
  with pytest.raises(data.DatasetError) as err:
    data.verify_dataset(data_dir)
  expected = {
      "truncated": f"{path}: size differs: expected {size} bytes, found {size - 100}",
      "bit_flipped": f"{path}: checksum differs: sha256 expected",
      "cut_at_record": f"{path}: size differs: expected {size} bytes, found {ends[0]}",
      "missing": f"{path}: missing (the metadata records 2 examples)",
  }[damage]
  assert len(err.value.problems) == 1 and err.value.problems[0].startswith(expected)
  assert expected in str(err.value) and "Rerun the preparation command" in str(err.value)
  assert state(data_dir) == before
  # The other split alone is fine.
  data.verify_dataset(data_dir, [{"train": "test", "test": "train"}[split]])


@pytest.mark.parametrize("damage, expected", [
    ("cut_at_record", "record count differs: expected 2, found 1"),
    ("bit_flipped", "unreadable: DataLossError: corrupted record at"),
    ("missing", "missing (the metadata records 2 examples)"),
])
def test_a_dataset_without_recorded_sizes_has_its_records_counted(dataset, damage, expected,
                                                                   caplog):
  _, data_dir = dataset
  meta_path = os.path.join(data_dir, "metadata.json")
  meta = json.load(open(meta_path))
  del meta["shards"]  # as written before sizes and checksums were recorded
  json.dump(meta, open(meta_path, "w"))
  with caplog.at_level(logging.WARNING, logger="iib_jax.data"):
    data.verify_dataset(data_dir)
  assert "counting the records" in caplog.text
  path = shard(data_dir, "test")
  DAMAGE[damage](path)
  with pytest.raises(data.DatasetError) as err:
    data.verify_dataset(data_dir)
  assert len(err.value.problems) == 1 and err.value.problems[0].startswith(f"{path}: {expected}")


def test_reading_a_corrupted_shard_names_it(dataset):
  _, data_dir = dataset
  path = shard(data_dir, "test")
  flip_bit(path)
  batches = data.make_dataset(data_dir, "test", batch_size=2, train=False, process_index=0,
                              process_count=1)
  with pytest.raises(data.DatasetError) as err:
    list(batches)
  assert "split 'test'" in str(err.value) and "DataLossError" in str(err.value)
  assert err.value.problems[0].startswith(f"{path}: checksum differs")


def test_a_split_read_short_is_an_error_naming_the_shard(dataset):
  _, data_dir = dataset
  path = shard(data_dir, "test")
  cut_at_record(path)  # TensorFlow reads it without complaint: one example instead of two
  batches = data.make_dataset(data_dir, "test", batch_size=4, train=False, process_index=0,
                              process_count=1)
  with pytest.raises(data.DatasetError) as err:
    list(batches)
  assert "split 'test'" in str(err.value)
  assert "yielded 1 examples, the metadata records 2" in str(err.value)
  assert err.value.problems[0].startswith(f"{path}: size differs")


def test_reading_a_missing_shard_names_it(dataset):
  _, data_dir = dataset
  path = shard(data_dir, "train", 1)
  os.remove(path)
  batches = data.make_dataset(data_dir, "train", batch_size=2, train=True, process_index=0,
                              process_count=1)
  with pytest.raises(data.DatasetError) as err:
    list(batches)
  assert err.value.problems == [f"{path}: missing (the metadata records 2 examples)"]


@pytest.mark.parametrize("legacy", [False, True])
def test_rerunning_the_preparation_rewrites_exactly_the_damaged_shards(dataset, legacy):
  args, data_dir = dataset
  original = state(data_dir)
  if legacy:  # shard records and metadata written before checksums were recorded
    state_dir = os.path.join(data_dir, ".prepare")
    for name in os.listdir(state_dir):
      if name.endswith(".tfrecord.json"):
        record = json.load(open(os.path.join(state_dir, name)))
        del record["sha256"]
        json.dump(record, open(os.path.join(state_dir, name), "w"))
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    del meta["shards"]
    json.dump(meta, open(os.path.join(data_dir, "metadata.json"), "w"))
  flip_bit(shard(data_dir, "train", 0))
  os.remove(shard(data_dir, "test"))
  untouched = os.path.basename(shard(data_dir, "train", 1))
  with pytest.raises(data.DatasetError):
    data.verify_dataset(data_dir)
  assert kinetics_sounds.main(args) == 0
  data.verify_dataset(data_dir)
  now = state(data_dir)
  assert {n: d for n, (d, _) in now.items()} == {n: d for n, (d, _) in original.items()}
  assert now[untouched] == original[untouched]  # same bytes, never rewritten
