"""data_prep on hostile or broken input, as a user hits it: names leading out of the raw
directory, undecodable split lines, no train clip, a dataset name leaving OUT_DIR, a full disk.

Each test checks the message (the file, the line), the exit status and that nothing already
written changed. Media are tiny (32x32 at 4 fps, 1 s).
"""
import csv
import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import ave, crema_d, kinetics_sounds, tfrecords
from data_prep.synthetic import write_video, write_wav

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--fps", "4", "--image_size", "32", "--workers", "0", "--val_fraction", "0",
         "--audio_frames", "100", "--no_progress"]


def tone(seconds, freq=440.0):
  t = np.arange(int(seconds * SR)) / SR
  return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def clip(path, seconds=1.0, level=100):
  frames = np.full((int(4 * seconds), 32, 32, 3), level, np.uint8)
  write_video(str(path), frames, 4, tone(seconds), SR)


def skipped_rows(data_dir):
  with open(os.path.join(data_dir, "skipped.csv")) as f:
    return list(csv.DictReader(f))


def digests(directory):
  """{file: sha256} of every file under `directory` (recursively), by hashlib."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.fixture()
def outside(tmp_path):
  """A real media file outside the raw directory, which a split line tries to reach."""
  target = tmp_path / "elsewhere" / "secret.mp4"
  target.parent.mkdir()
  clip(target, level=200)
  return target


# ---------------------------------------------------------------------------------------------
# Names leading out of the raw directory.


def test_names_out_of_the_raw_dir_are_skipped_rows(tmp_path, outside):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  for name in ("a", "b", "c"):
    clip(raw / "videos" / f"{name}.mp4")
  os.symlink(outside, raw / "videos" / "linked.mp4")
  climb = os.path.relpath(str(outside)[:-4], raw / "videos")  # ../../elsewhere/secret
  assert os.path.exists(os.path.join(raw, "videos", climb + ".mp4"))  # the target exists
  (raw / "train.txt").write_text(f"a,1,0\nb,1,1\n{climb},1,0\n{str(outside)[:-4]},1,1\n"
                                 f"linked,1,0\n")
  (raw / "test.txt").write_text("c,1,0\n")
  out = tmp_path / "out"
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out),
                               "--max_skip_fraction", "0.7"] + FLAGS) == 0
  data_dir = out / "kinetics_sounds"
  rows = {r["clip_id"]: r for r in skipped_rows(data_dir)}
  assert {k: r["kind"] for k, r in rows.items()} == {
      "train.txt:3": "outside_raw_dir", "train.txt:4": "outside_raw_dir",
      "train.txt:5": "outside_raw_dir"}
  assert "'..'" in rows["train.txt:3"]["reason"] and climb in rows["train.txt:3"]["reason"]
  assert "absolute path" in rows["train.txt:4"]["reason"]
  assert "symbolic link" in rows["train.txt:5"]["reason"] and str(outside) in rows[
      "train.txt:5"]["reason"]
  meta = json.load(open(data_dir / "metadata.json"))
  assert meta["splits"] == {"train": 2, "test": 1}
  # With the links accepted on purpose, the linked file is read.
  listing = kinetics_sounds.list_clips(str(raw), val_fraction=0.0, follow_symlinks=True)
  assert "linked" in {c.clip_id for c in listing.splits["train"]}
  assert {s.clip_id for s in listing.skipped} == {"train.txt:3", "train.txt:4"}


def test_a_linked_media_folder_is_part_of_the_layout(tmp_path):
  store = tmp_path / "big_disk" / "videos"
  store.mkdir(parents=True)
  clip(store / "a.mp4")
  raw = tmp_path / "raw"
  raw.mkdir()
  os.symlink(store, raw / "videos")
  (raw / "train.txt").write_text("a,1,0\n")
  (raw / "test.txt").write_text("a,1,0\n")
  listing = kinetics_sounds.list_clips(str(raw))
  assert [c.clip_id for c in listing.splits["train"]] == ["a"] and not [
      s for s in listing.skipped if s.kind == "outside_raw_dir"]


def test_crema_d_and_ave_names_out_of_the_raw_dir_are_skipped_rows(tmp_path, outside):
  raw = tmp_path / "crema"
  (raw / "VideoFlash").mkdir(parents=True)
  (raw / "AudioWAV").mkdir()
  good = "1001_DFA_ANG_XX"
  write_wav(str(raw / "AudioWAV" / f"{good}.wav"), tone(1.0), SR)
  os.symlink(outside, raw / "VideoFlash" / "1002_DFA_NEU_XX.flv")
  (raw / "train.csv").write_text(f"{good},ANG\n../../elsewhere/1003_DFA_SAD_XX,SAD\n"
                                 f"1002_DFA_NEU_XX,NEU\n")
  (raw / "test.csv").write_text("/etc/1004_DFA_HAP_XX,HAP\n")
  listing = crema_d.list_clips(str(raw), split="csv", val_fraction=0.0)
  assert [c.clip_id for c in listing.splits["train"]] == [good]
  assert {(s.split, s.clip_id, s.kind) for s in listing.skipped} == {
      ("train", "train.csv:2", "outside_raw_dir"), ("train", "train.csv:3", "outside_raw_dir"),
      ("test", "test.csv:1", "outside_raw_dir")}

  raw = tmp_path / "ave"
  (raw / "AVE").mkdir(parents=True)
  os.symlink(outside, raw / "AVE" / "linked.mp4")
  (raw / "trainSet.txt").write_text("Bark&good&x&0&1\nBark&../../elsewhere/secret&x&0&1\n"
                                    "Bark&linked&x&0&1\n")
  (raw / "testSet.txt").write_text(f"Bark&{str(outside)[:-4]}&x&0&1\n")
  listing = ave.list_clips(str(raw), val_fraction=0.0)
  assert [c.clip_id for c in listing.splits["train"]] == ["good"]
  assert {(s.split, s.clip_id, s.kind) for s in listing.skipped} == {
      ("train", "trainSet.txt:2", "outside_raw_dir"),
      ("train", "trainSet.txt:3", "outside_raw_dir"),
      ("test", "testSet.txt:1", "outside_raw_dir")}


@pytest.mark.parametrize("name", ["../x", "/abs/x", ".", "a/b"])
def test_a_dataset_name_out_of_out_dir_is_refused_before_writing(tmp_path, name, capsys):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  clip(raw / "videos" / "a.mp4")
  (raw / "train.txt").write_text("a,1,0\n")
  (raw / "test.txt").write_text("a,1,0\n")
  out = tmp_path / "deep" / "out"
  before = sorted(os.listdir(tmp_path))
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out), "--name", name]
                              + FLAGS) == 1
  err = capsys.readouterr().err
  assert f"--name {name!r}" in err and len(err.strip().splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == before and not out.exists()


# ---------------------------------------------------------------------------------------------
# Bad split lines, no train clip.


def test_undecodable_split_lines_are_skipped_and_the_rest_is_read(tmp_path):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  for name in ("a", "b", "c"):
    clip(raw / "videos" / f"{name}.mp4")
  (raw / "train.txt").write_bytes(b"a,1,0\nb\xff\xfe,1,1\nb,1,1\n")
  (raw / "test.txt").write_bytes(b"\xc3(,1,0\nc,1,0\n")
  out = tmp_path / "out"
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out),
                               "--max_skip_fraction", "0.5"] + FLAGS) == 0
  rows = {r["clip_id"]: r for r in skipped_rows(out / "kinetics_sounds")}
  assert {k: (r["split"], r["kind"]) for k, r in rows.items()} == {
      "train.txt:2": ("train", "bad_line"), "test.txt:1": ("test", "bad_line")}
  assert rows["train.txt:2"]["reason"].startswith("train.txt:2: not UTF-8 text")
  assert "0xff" in rows["train.txt:2"]["reason"]
  assert json.load(open(out / "kinetics_sounds" / "metadata.json"))["splits"] == {
      "train": 2, "test": 1}


def test_an_undecodable_class_list_names_its_line(tmp_path, capsys):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "train.txt").write_text("a,1,0\n")
  (raw / "test.txt").write_text("a,1,0\n")
  (raw / "classes.txt").write_bytes(b"alpha\nbe\xfft\n")
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(tmp_path / "out")]
                              + FLAGS) == 1
  assert f"{raw / 'classes.txt'}:2: not UTF-8 text" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("train_text", ["", "not a line\n../x,1,0\nz,1,9\n"])
def test_no_train_clip_is_an_error_before_anything_is_written(tmp_path, capsys, train_text):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  clip(raw / "videos" / "a.mp4")
  (raw / "train.txt").write_text(train_text)
  (raw / "test.txt").write_text("a,1,0\n")
  (raw / "classes.txt").write_text("alpha\nbeta\n")
  out = tmp_path / "out"
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out),
                               "--max_skip_fraction", "1"] + FLAGS) == 1
  err = capsys.readouterr().err
  assert f"{raw / 'train.txt'}: no train clip to prepare" in err
  if train_text:
    assert "all 3 of its lines were skipped (bad_line 1, outside_raw_dir 1, unknown_label 1" in err
  assert not out.exists()


def test_no_train_clip_prepared_is_an_error(tmp_path, capsys):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  clip(raw / "videos" / "a.mp4")
  (raw / "train.txt").write_text("gone_1,1,0\ngone_2,1,0\n")
  (raw / "test.txt").write_text("a,1,0\n")
  out = tmp_path / "out"
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out),
                               "--max_skip_fraction", "1"] + FLAGS) == 1
  assert "no train clip of kinetics_sounds could be prepared (2 listed" in capsys.readouterr().err
  assert not (out / "kinetics_sounds" / "metadata.json").exists()


# ---------------------------------------------------------------------------------------------
# A full disk.


def limited_command(module, args, limit):
  """`python -m module args` in which no file may grow past `limit` bytes.

  Writes past the limit then fail with EFBIG, as writes on a full disk fail with ENOSPC (SIGXFSZ
  is ignored, or it would kill the process). Set in the child itself: a preexec_fn would fork
  this multithreaded (JAX) process.
  """
  code = (f"import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
          f"sys.argv = [{module!r}] + {list(args)!r}; "
          f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
  return [sys.executable, "-c", code]


def test_a_full_disk_while_writing_a_shard_names_it_and_keeps_finished_shards(tmp_path):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  lines = []
  for n in range(4):  # shards of one clip: about 60 KB for 1 s, 350 KB for the 6 s clip
    clip(raw / "videos" / f"c{n}.mp4", seconds=6.0 if n == 2 else 1.0, level=40 * n)
    lines.append(f"c{n},1,{n % 2}")
  (raw / "train.txt").write_text("\n".join(lines[:3]) + "\n")
  (raw / "test.txt").write_text(lines[3] + "\n")
  out = tmp_path / "out"
  args = ["--raw_dir", str(raw), "--out_dir", str(out), "--clips_per_shard", "1"] + FLAGS
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(limited_command("data_prep.kinetics_sounds", args, 200_000), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  data_dir = out / "kinetics_sounds"
  plan = json.load(open(data_dir / ".prepare" / "plan.json"))
  big = next(n for n, clips in plan["shards"].items() if clips[0]["clip_id"] == "c2")
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == [l for l in result.stderr.splitlines() if l.strip()][-1:]  # one line, last
  assert errors[0].startswith(f"error: cannot write {data_dir / big}: File too large.")
  assert os.listdir(data_dir / ".prepare" / "tmp") == []  # the partial shard was removed
  assert not (data_dir / big).exists() and not (data_dir / "metadata.json").exists()
  finished = {n: json.load(open(data_dir / ".prepare" / (n + ".json")))
              for n in plan["shards"] if (data_dir / ".prepare" / (n + ".json")).exists()}
  before = digests(data_dir)
  for name, record in finished.items():
    assert before[name] == record["sha256"]
  # With space again, the same command finishes, leaving the finished shards as they were.
  mtimes = {n: os.stat(data_dir / n).st_mtime_ns for n in finished}
  assert kinetics_sounds.main(args) == 0
  after = digests(data_dir)
  assert {n: after[n] for n in finished} == {n: before[n] for n in finished}
  assert {n: os.stat(data_dir / n).st_mtime_ns for n in finished} == mtimes
  assert json.load(open(data_dir / "metadata.json"))["splits"] == {"train": 3, "test": 1}


def test_a_full_disk_while_writing_the_metadata_leaves_the_old_one(tmp_path, monkeypatch,
                                                                    capsys):
  raw = tmp_path / "raw"
  (raw / "videos").mkdir(parents=True)
  clip(raw / "videos" / "a.mp4")
  clip(raw / "videos" / "b.mp4")
  (raw / "train.txt").write_text("a,1,0\n")
  (raw / "test.txt").write_text("b,1,0\n")
  out = tmp_path / "out"
  args = ["--raw_dir", str(raw), "--out_dir", str(out)] + FLAGS
  assert kinetics_sounds.main(args) == 0
  data_dir = out / "kinetics_sounds"
  before = digests(data_dir)
  real_fsync = os.fsync

  def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").startswith(str(data_dir / ".prepare" / "tmp" /
                                                          "metadata.json")):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_fsync(fd)

  monkeypatch.setattr(tfrecords.os, "fsync", fsync)
  capsys.readouterr()
  assert kinetics_sounds.main(args) == 1  # a rerun, when the disk has filled up meanwhile
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      f"error: cannot write {data_dir / 'metadata.json'}: No space left on device.")
  assert os.listdir(data_dir / ".prepare" / "tmp") == []
  after = digests(data_dir)
  # Shards, records and the earlier metadata are as they were (tfds's files are rewritten
  # with the same bytes by renaming).
  assert after == before
