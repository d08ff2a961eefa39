"""The synthetic dataset: layout, seeded determinism, class signals, ensure_synthetic."""
import json
import os
import time

import numpy as np
import pytest

from data_prep import kinetics_sounds, media, synthetic

SMALL = dict(num_classes=3, clips_per_class=6, duration=1.0, fps=4, size=32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth_raw"))
  synthetic.generate(out, **SMALL, seed=5)
  return out


def test_generated_files_follow_the_kinetics_sounds_layout(raw):
  listing = kinetics_sounds.list_clips(raw, val_fraction=0.0)
  assert listing.skipped == []
  assert len(listing.class_names) == 3
  clips = listing.splits["train"] + listing.splits["test"]
  assert len(clips) == 18 and all(os.path.exists(c.video_path) for c in clips)
  # test_fraction 0.2 of 6 clips per class: 1 per class.
  assert sorted(c.label for c in listing.splits["test"]) == [0, 1, 2]
  clip = media.decode_video(clips[0].video_path, fps=4, size=(32, 32))
  assert len(clip.frames) == 4 and clip.source_fps == 4


def test_a_third_of_each_class_has_uninformative_audio(raw):
  modes = json.load(open(os.path.join(raw, "synthetic.json")))["clips"]
  for label in range(3):
    mine = [m for name, m in modes.items() if name.startswith(f"s{label:02d}_")]
    # round(0.35 * 5) train + round(0.35 * 1) test uninformative clips per class.
    assert sum(m != "class" for m in mine) == 2
    assert set(mine) <= {"class", "noise", "other"}


def test_audio_carries_the_class_pitch(raw):
  modes = json.load(open(os.path.join(raw, "synthetic.json")))["clips"]
  for name, mode in sorted(modes.items()):
    if mode == "noise":
      continue
    label = int(name[1:3])
    wave = media.decode_audio(os.path.join(raw, "videos", name + ".mp4"), sample_rate=16000)
    segment = wave[:16000]
    peak = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / len(segment)  # 1 Hz resolution
    semitones = [abs(12 * np.log2(peak / synthetic.class_pitch(c, 3))) for c in range(3)]
    nearest = int(np.argmin(semitones))
    assert semitones[nearest] < 1.5  # the pitch jitter is at most one semitone
    assert (nearest == label) == (mode == "class"), (name, mode, peak)


def test_generation_is_deterministic(raw, tmp_path):
  again = str(tmp_path / "again")
  synthetic.generate(again, **SMALL, seed=5)
  for name in ("train.txt", "test.txt", "classes.txt", "synthetic.json"):
    assert open(os.path.join(raw, name)).read() == open(os.path.join(again, name)).read()
  for name in sorted(os.listdir(os.path.join(raw, "videos")))[:3]:
    a = media.decode_video(os.path.join(raw, "videos", name), fps=4, size=(32, 32))
    b = media.decode_video(os.path.join(again, "videos", name), fps=4, size=(32, 32))
    assert a.frames == b.frames
    np.testing.assert_array_equal(
        media.decode_audio(os.path.join(raw, "videos", name), sample_rate=16000),
        media.decode_audio(os.path.join(again, "videos", name), sample_rate=16000))


def test_ensure_synthetic_prepares_once(tmp_path):
  cache = str(tmp_path / "cache")
  data_dir = synthetic.ensure_synthetic(cache, **SMALL, workers=0)
  assert os.path.exists(os.path.join(data_dir, "dataset_info.json"))
  meta = json.load(open(os.path.join(data_dir, "metadata.json")))
  assert meta["name"] == "synthetic" and sum(meta["splits"].values()) == 18
  assert meta["audio"]["default_frames"] == 100 and meta["video"]["height"] == 32
  shards = sorted(n for n in os.listdir(data_dir) if n.endswith(".tfrecord"))
  mtimes = [os.path.getmtime(os.path.join(data_dir, n)) for n in shards]
  start = time.time()
  assert synthetic.ensure_synthetic(cache, **SMALL, workers=0) == data_dir
  assert time.time() - start < 2
  assert [os.path.getmtime(os.path.join(data_dir, n)) for n in shards] == mtimes
