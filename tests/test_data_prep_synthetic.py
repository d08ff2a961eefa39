"""The synthetic dataset: layout, seeded determinism, class signals, the imbalance dial, the
legacy (published) generator, ensure_synthetic."""
import hashlib
import json
import os
import time

import numpy as np
import pytest

from data_prep import kinetics_sounds, media, synthetic

SMALL = dict(num_classes=3, clips_per_class=6, duration=1.0, fps=4, size=32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """The legacy generator (dial None): 35 % uninformative audio."""
  out = str(tmp_path_factory.mktemp("synth_raw"))
  synthetic.generate(out, **SMALL, seed=5, dial=None)
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
  synthetic.generate(again, **SMALL, seed=5, dial=None)
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
  # A dial's dataset lives beside the legacy one, not over it.
  assert data_dir == os.path.join(cache, f"dial_{synthetic.DEFAULT_DIAL:g}", "prepared",
                                  "synthetic")
  gen = json.load(open(os.path.join(os.path.dirname(os.path.dirname(data_dir)), "raw",
                                    "synthetic.json")))
  assert gen["dial"] == synthetic.DEFAULT_DIAL
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


# ------------------------------------------------------------------------------------------------
# The imbalance dial and the legacy generator.

# What the published generator (before the dial) recorded and drew at its defaults, seed 0:
# synthetic.json's arguments, a digest of the clip plan, and, for four clips (audio modes noise,
# class, other, other), a digest of the frames and values of the waveform. Frozen from that
# generator's code: the published results were made from this dataset.
LEGACY_ARGS = {"version": 1, "num_classes": 10, "clips_per_class": 60, "duration": 3.0,
               "fps": 8.0, "size": 64, "sample_rate": 16000, "test_fraction": 0.2,
               "uninformative_audio": 0.35, "seed": 0}
LEGACY_PLAN_SHA256 = "18f3815b533f23680a387705f0b58409f5131e22f4b40e78efdd19033d0dde1a"
LEGACY_CLIPS = {
    # index: (frames sha256, waveform mean, std, values at samples 0, 1000, 24000, 47999)
    0: ("25d4e28978d05b62952b3d3a2705656ee32ebc5906fc5af5088e73ffe11aef04",
        -9.043459116070326e-05, 0.006158435366785328,
        (-0.002819661283865571, -0.007447284646332264, -0.005407843738794327,
         -0.2609844505786896)),
    1: ("2d86d93ed75ddc2c86134f50a3051eb204c8c1b72624049740a7c1799c2bbe3a",
        0.0001794980497021399, 0.0769216528089889,
        (0.07051102817058563, -0.08083391934633255, -0.06919917464256287,
         0.005381950177252293)),
    6: ("c8bc4ac49c28edd8a74d5cfb44aeb76cd1a518030bccdcc4e2e53fff25171a8a",
        0.00020014565216258618, 0.02734004270247032,
        (-0.012967989780008793, 0.008692773059010506, 0.031350716948509216,
         0.5534235239028931)),
    599: ("3f9be77c97219906995b315f164cf036de958dccd00087659393593ff20d05bf",
          -0.00021647503591343782, 0.12433431308271173,
          (0.00672696391120553, 0.014368448406457901, -0.18131011724472046,
           -0.03599017485976219)),
}


def _plan(args):
  return synthetic._clip_plan(args["num_classes"], args["clips_per_class"],
                              args["test_fraction"], args["uninformative_audio"], args["seed"])


def _arrays(item, args):
  return synthetic.render_clip_arrays(item, num_classes=10, duration=3.0, fps=8.0, size=64,
                                      sample_rate=16000, seed=0,
                                      hue_jitter=args.get("hue_jitter", synthetic.HUE_JITTER))


@pytest.mark.parametrize("dial", [None, 0.0])
def test_legacy_and_dial_zero_draw_the_published_dataset(dial):
  args = synthetic.generator_args(dial=dial)
  if dial is None:
    assert args == LEGACY_ARGS                 # key for key: old caches and records stay valid
  else:
    assert {k: v for k, v in args.items() if k not in ("dial", "hue_jitter")} == LEGACY_ARGS
    assert args["hue_jitter"] == synthetic.HUE_JITTER == 0.5
  plan = _plan(args)
  text = json.dumps([[p["name"], p["label"], p["split"], p["audio"]] for p in plan])
  assert hashlib.sha256(text.encode()).hexdigest() == LEGACY_PLAN_SHA256
  for index, (frames_sha, mean, std, values) in LEGACY_CLIPS.items():
    frames, audio = _arrays(plan[index], args)
    assert hashlib.sha256(frames.tobytes()).hexdigest() == frames_sha, index
    audio = audio.astype(np.float64)
    np.testing.assert_allclose([audio.mean(), audio.std()], [mean, std], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(audio[[0, 1000, 24000, 47999]], values, rtol=1e-6, atol=1e-7)


def test_dial_moves_the_audio_share_and_the_hue_jitter_linearly():
  assert synthetic.dial_parameters(None) == (0.35, 0.5)
  assert synthetic.dial_parameters(0.0) == (0.35, 0.5)
  # Halfway: 0.35 + (0.10 − 0.35) / 2 = 0.225 and 0.5 + (1.0 − 0.5) / 2 = 0.75.
  assert synthetic.dial_parameters(0.5) == pytest.approx((0.225, 0.75))
  assert synthetic.dial_parameters(1.0) == pytest.approx((0.10, 1.0))
  with pytest.raises(ValueError, match=r"dial must lie in \[0, 1\]"):
    synthetic.dial_parameters(1.2)
  # Explicit values override the dial's, and are recorded.
  args = synthetic.generator_args(dial=1.0, uninformative_audio=0.2, hue_jitter=0.6)
  assert (args["dial"], args["uninformative_audio"], args["hue_jitter"]) == (1.0, 0.2, 0.6)
  # Dial 1 at the default size: round(0.10 · 48) = 5 of each class's 48 train clips and
  # round(0.10 · 12) = 1 of its 12 test clips carry no class evidence (a third of them, rounded,
  # another class's tone).
  plan = _plan(synthetic.generator_args(dial=1.0))
  for label in range(10):
    mine = [p for p in plan if p["label"] == label]
    for split, expected in (("train", 5), ("test", 1)):
      assert sum(p["audio"] != "class" for p in mine if p["split"] == split) == expected


def test_hue_jitter_changes_the_frames_and_no_other_draw():
  item = {"index": 3, "label": 2, "audio": "class"}
  kwargs = dict(num_classes=10, duration=1.0, fps=4.0, size=32, sample_rate=16000, seed=0)
  frames_a, audio_a = synthetic.render_clip_arrays(item, hue_jitter=0.5, **kwargs)
  frames_b, audio_b = synthetic.render_clip_arrays(item, hue_jitter=1.0, **kwargs)
  assert not np.array_equal(frames_a, frames_b)
  np.testing.assert_array_equal(audio_a, audio_b)
  # Only the disc changes colour: the background and the squares keep their pixels.
  changed = np.any(frames_a != frames_b, axis=-1)
  assert 0.02 < changed.mean() < 0.25
