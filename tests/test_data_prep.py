"""data_prep: decoding, audio front-ends, dataset readers, TFRecords, bad inputs, resumption.

Every test writes its own tiny media with PyAV (32x32 video at a few fps, a couple of seconds of
audio) and checks the numbers against values worked out by hand or a literal numpy reference.
"""
import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data_prep import ave, crema_d, features, kinetics_sounds, media
from data_prep.splits import Clip, carve
from data_prep.synthetic import write_video, write_wav
from data_prep.tfrecords import PrepareConfig, PrepareError, prepare

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Tiny media.


def grey_frames(n, size=32, step=15, offset=0):
  """Frame i is uniformly grey at offset + step * i: its index can be read back from pixels."""
  levels = offset + step * np.arange(n)
  return np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).astype(np.uint8)


def tone(freq, seconds, sr=SR, amp=0.3):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def jpeg_mean(data):
  return float(np.asarray(Image.open(io.BytesIO(data))).mean())


def slaney_hz_to_mel(f):
  f = np.asarray(f, np.float64)
  log_part = 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27)
  return np.where(f < 1000, f / (200 / 3), log_part)


def slaney_mel_to_hz(m):
  m = np.asarray(m, np.float64)
  return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def slaney_bin_centre(k, n_mels=128, fmax=SR / 2):
  """Centre frequency of librosa's (Slaney) mel bin k, from the textbook definition."""
  points = np.linspace(0, slaney_hz_to_mel(fmax), n_mels + 2)
  return float(slaney_mel_to_hz(points[k + 1]))


def htk_mel(f):
  return 1127.0 * np.log(1 + np.asarray(f, np.float64) / 700)


def kaldi_bin_centre(k, n_mels=128, low=20.0, high=SR / 2):
  delta = (htk_mel(high) - htk_mel(low)) / (n_mels + 1)
  mel = htk_mel(low) + (k + 1) * delta
  return float(700 * (np.exp(mel / 1127.0) - 1))


# ---------------------------------------------------------------------------------------------
# Audio front-ends.


def test_log_mel_frames_and_tone_peak_bin():
  params = features.resolve_preset("iibalance")
  assert (params["win_length"], params["hop_length"], params["n_fft"]) == (400, 160, 512)
  freq = slaney_bin_centre(60)
  feats, valid = features.compute_features(tone(freq, 1.5), params)
  # center=True: 1 + num_samples // hop frames.
  assert feats.shape == (1 + 24000 // 160, 128) == (151, 128)
  assert valid == 151 and feats.dtype == np.float32
  assert int(np.argmax(feats.mean(0))) == 60


def test_ogm_ge_stft_tiles_to_three_seconds_and_peaks_at_the_tone_bin():
  params = features.resolve_preset("ogm_ge_stft")
  assert params["frames"] == 188 and params["bins"] == 257
  freq = 46 * 22050 / 512  # exactly on FFT bin 46
  feats, _ = features.compute_features(tone(freq, 1.3, sr=22050), params)
  assert feats.shape == (188, 257)
  assert int(np.argmax(feats.mean(0))) == 46
  silent, _ = features.compute_features(np.zeros(22050, np.float32), params)
  np.testing.assert_allclose(silent, np.log(1e-7), rtol=1e-6)


def ref_kaldi_fbank(x, sr=SR, n_mels=128):
  """Literal per-frame transcription of Kaldi's fbank (hanning, htk mel, no dither)."""
  x = np.asarray(x, np.float64) - np.mean(x)
  win, hop, n_fft = 400, 160, 512
  n_frames = 1 + (len(x) - win) // hop
  mel_lo, mel_hi = htk_mel(20.0), htk_mel(sr / 2)
  delta = (mel_hi - mel_lo) / (n_mels + 1)
  out = np.zeros((n_frames, n_mels))
  window = [0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1)) for n in range(win)]
  for t in range(n_frames):
    frame = list(x[t * hop:t * hop + win])
    mean = sum(frame) / win
    frame = [v - mean for v in frame]
    frame = [frame[i] - 0.97 * frame[max(i - 1, 0)] for i in range(win)]
    frame = [frame[i] * window[i] for i in range(win)] + [0.0] * (n_fft - win)
    power = np.abs(np.fft.rfft(frame)) ** 2
    for m in range(n_mels):
      left, centre, right = (mel_lo + (m + j) * delta for j in range(3))
      energy = 0.0
      for k in range(n_fft // 2):
        mel = htk_mel(k * sr / n_fft)
        if left < mel < right:
          w = (mel - left) / (centre - left) if mel <= centre else (right - mel) / (right - centre)
          energy += w * power[k]
      out[t, m] = np.log(max(energy, np.finfo(np.float32).eps))
  return out


def test_kaldi_fbank_matches_literal_reference():
  params = features.resolve_preset("kaldi_fbank", {"frames": "none"})
  x = np.random.default_rng(0).normal(0, 0.1, 400 + 3 * 160 + 37).astype(np.float32)
  feats, valid = features.compute_features(x, params)
  assert feats.shape == (4, 128) and valid == 4  # snip_edges: 1 + (N - 400) // 160
  np.testing.assert_allclose(feats, ref_kaldi_fbank(x), rtol=1e-4, atol=1e-4)


def test_kaldi_fbank_pads_to_1024_frames_and_peaks_at_the_tone_bin():
  params = features.resolve_preset("kaldi_fbank")
  freq = kaldi_bin_centre(70)
  feats, valid = features.compute_features(tone(freq, 2.0), params)
  assert feats.shape == (1024, 128)
  assert valid == 1 + (32000 - 400) // 160 == 198
  assert int(np.argmax(feats[:valid].mean(0))) == 70
  np.testing.assert_array_equal(feats[valid:], 0.0)  # OGM-GE's zero padding
  silent, _ = features.compute_features(np.zeros(4000, np.float32), params)
  # log(float32 eps) where the signal is silent.
  np.testing.assert_allclose(silent[:10], -15.942385, rtol=1e-6)


def test_preset_overrides_are_checked():
  params = features.resolve_preset("iibalance", {"n_mels": "64", "hop_ms": "20"})
  assert params["bins"] == 64 and params["hop_length"] == 320
  with pytest.raises(ValueError, match="no parameter 'n_melz'"):
    features.resolve_preset("iibalance", {"n_melz": "64"})
  with pytest.raises(ValueError, match="unknown audio preset"):
    features.resolve_preset("mfcc")


# ---------------------------------------------------------------------------------------------
# Decoding.


@pytest.fixture(scope="module")
def grey_mp4(tmp_path_factory):
  """2 s at 8 fps: frame i grey at 15 i; a 1 kHz tone."""
  path = str(tmp_path_factory.mktemp("media") / "grey.mp4")
  write_video(path, grey_frames(16), 8, tone(1000, 2.0), SR)
  return path


@pytest.mark.parametrize("fps, expected_source_frames", [
    (16, [i // 2 for i in range(32)]),  # each source frame shown twice
    (8, list(range(16))),
    (4, list(range(0, 16, 2))),          # every other source frame
])
def test_decode_video_shows_the_frame_on_screen(grey_mp4, fps, expected_source_frames):
  clip = media.decode_video(grey_mp4, fps=fps, size=(32, 32))
  assert len(clip.frames) == len(expected_source_frames) == int(2.0 * fps)
  np.testing.assert_allclose([jpeg_mean(f) for f in clip.frames],
                             [15 * i for i in expected_source_frames], atol=4)
  assert clip.source_fps == 8


def test_decode_video_segment_and_resize(grey_mp4):
  clip = media.decode_video(grey_mp4, fps=4, size=(16, 24), start=0.5, end=1.5)
  # Times 0.5, 0.75, 1.0, 1.25 s show source frames 4, 6, 8, 10.
  np.testing.assert_allclose([jpeg_mean(f) for f in clip.frames], [60, 90, 120, 150], atol=4)
  assert np.asarray(Image.open(io.BytesIO(clip.frames[0]))).shape == (16, 24, 3)


def test_decode_audio_resamples_and_mixes_to_mono(tmp_path):
  path = str(tmp_path / "stereo.wav")
  write_wav(path, tone(440, 1.0, sr=44100), 44100, channels=2)
  wave = media.decode_audio(path, sample_rate=SR)
  assert abs(len(wave) - SR) <= 1
  spectrum = np.abs(np.fft.rfft(wave))
  assert abs(np.argmax(spectrum) * SR / len(wave) - 440) < 2
  assert abs(np.abs(wave).max() - 0.3) < 0.01  # mean of two equal channels, not their sum


def test_decode_audio_segment(tmp_path):
  path = str(tmp_path / "two_tones.wav")
  write_wav(path, np.concatenate([tone(500, 1.0), tone(2000, 1.0)]), SR)
  wave = media.decode_audio(path, sample_rate=SR, start=1.25, end=1.75)
  assert len(wave) == 8000
  assert abs(np.argmax(np.abs(np.fft.rfft(wave))) * SR / len(wave) - 2000) < 3


def test_bad_media_errors_name_the_file_and_kind(tmp_path, grey_mp4):
  missing = str(tmp_path / "missing.mp4")
  zero = tmp_path / "zero.mp4"
  zero.write_bytes(b"")
  truncated = tmp_path / "truncated.mp4"
  data = open(grey_mp4, "rb").read()
  truncated.write_bytes(data[:len(data) // 2])
  silent = str(tmp_path / "silent.mp4")
  write_video(silent, grey_frames(8), 8)
  empty_wav = str(tmp_path / "empty.wav")
  write_wav(empty_wav, np.zeros(0, np.float32), SR)
  cases = [
      (media.decode_video, missing, media.MISSING),
      (media.decode_video, str(zero), media.EMPTY),
      (media.decode_video, str(truncated), media.UNREADABLE),
      (media.decode_audio, silent, media.NO_AUDIO),
      (media.decode_audio, empty_wav, media.EMPTY),
      (media.decode_video, empty_wav, media.NO_VIDEO),
  ]
  for fn, path, kind in cases:
    kwargs = {"sample_rate": SR} if fn is media.decode_audio else {"fps": 4}
    with pytest.raises(media.MediaError) as err:
      fn(path, **kwargs)
    assert err.value.kind == kind and path in str(err.value), (path, err.value)


def test_stream_cut_short_is_truncated(tmp_path):
  # faststart puts the index first: a cut file still opens, with less data than it declares.
  full = str(tmp_path / "fast.mp4")
  write_video(full, grey_frames(16), 8, None, options={"movflags": "faststart"})
  data = open(full, "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[:len(data) * 6 // 10])
  with pytest.raises(media.MediaError) as err:
    media.decode_video(str(cut), fps=8)
  assert err.value.kind in (media.TRUNCATED, media.UNREADABLE)


# ---------------------------------------------------------------------------------------------
# Splits.


def test_carve_is_seeded_stratified_and_disjoint():
  clips = [Clip(f"c{label}_{i}", label, str(label), "v") for label in range(3) for i in range(10)]
  kept, carved = carve(clips, 0.2, seed=1)
  assert sorted(c.clip_id for c in kept + carved) == sorted(c.clip_id for c in clips)
  assert [sum(c.label == l for c in carved) for l in range(3)] == [2, 2, 2]
  assert carve(clips, 0.2, seed=1)[1] == carved and carve(clips, 0.2, seed=2)[1] != carved


def test_crema_d_speaker_split_keeps_actors_apart(tmp_path):
  (tmp_path / "AudioWAV").mkdir()
  for actor in range(1001, 1011):
    for emo in crema_d.EMOTIONS:
      (tmp_path / "AudioWAV" / f"{actor}_IEO_{emo}_MD.wav").write_bytes(b"x")
  listing = crema_d.list_clips(str(tmp_path), split="speaker", val_fraction=0.2,
                               test_fraction=0.2, seed=0)
  actors = {s: {c.clip_id.split("_")[0] for c in clips} for s, clips in listing.splits.items()}
  assert all(actors[s] for s in ("train", "validation", "test"))
  assert not (actors["train"] & actors["test"]) and not (actors["train"] & actors["validation"])
  assert not (actors["validation"] & actors["test"])
  assert sum(len(c) for c in listing.splits.values()) == 60


# ---------------------------------------------------------------------------------------------
# Raw layouts → TFRecords.


def read_prepared(data_dir):
  """{split: {clip_id: example}} read with tensorflow-datasets (not with iib_jax.data)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(data_dir)
  out = {}
  for split in builder.info.splits:
    out[split] = {}
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      out[split][ex["clip_id"].decode()] = ex
  return builder, out


def skipped_rows(data_dir):
  with open(os.path.join(data_dir, "skipped.csv")) as f:
    return list(csv.DictReader(f))


KS_FREQS = [slaney_bin_centre(k) for k in (80, 95, 105)]  # per class: audio track tone
KS_WAV_FREQ = slaney_bin_centre(115)


@pytest.fixture(scope="module")
def ks_raw(tmp_path_factory):
  """Kinetics-Sounds layout: 3 classes, 9 good train clips, 3 test clips, and bad inputs."""
  raw = tmp_path_factory.mktemp("ks_raw")
  (raw / "videos").mkdir()
  (raw / "audio").mkdir()
  train, test = [], []
  for label in range(3):
    for i in range(4):
      name = f"-{label}x{i}_000010_000020" if i == 0 else f"c{label}_{i}"
      write_video(str(raw / "videos" / f"{name}.mp4"), grey_frames(16, offset=10 * label), 8,
                  tone(KS_FREQS[label], 2.0), SR)
      (test if i == 3 else train).append(f"{name},2,{label}")
  # A wav beside the video replaces its audio track.
  write_wav(str(raw / "audio" / "c1_1.wav"), tone(KS_WAV_FREQ, 2.0), SR)
  # Bad inputs.
  write_video(str(raw / "videos" / "bad_truncated.mp4"), grey_frames(16), 8, tone(500, 2.0), SR)
  data = (raw / "videos" / "bad_truncated.mp4").read_bytes()
  (raw / "videos" / "bad_truncated.mp4").write_bytes(data[:len(data) // 2])
  write_video(str(raw / "videos" / "bad_silent.mp4"), grey_frames(16), 8)
  write_video(str(raw / "videos" / "bad_emptywav.mp4"), grey_frames(16), 8, tone(500, 2.0), SR)
  write_wav(str(raw / "audio" / "bad_emptywav.wav"), np.zeros(0, np.float32), SR)
  train += ["bad_truncated,2,0", "bad_silent,2,1", "bad_emptywav,2,2", "ghost_clip,2,1",
            "not a split line", "c9_unknown,2,7"]
  (raw / "my_train.txt").write_text("\n".join(train) + "\n")
  (raw / "my_test.txt").write_text("\n".join(test) + "\n")
  (raw / "classes.txt").write_text("alpha\nbeta\ngamma\n")
  return str(raw)


KS_FLAGS = ["--fps", "4", "--image_size", "32", "--clips_per_shard", "3", "--workers", "0",
            "--val_fraction", "0.25", "--audio_frames", "200", "--no_progress"]


@pytest.fixture(scope="module")
def ks_prepared(ks_raw, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ks_out"))
  args = ["--raw_dir", ks_raw, "--out_dir", out] + KS_FLAGS
  # 6 of 18 listed entries are bad: more than the default 5%, so the command fails...
  assert kinetics_sounds.main(args) == 1
  assert not os.path.exists(os.path.join(out, "kinetics_sounds", "metadata.json"))
  # ...and a rerun that accepts them reuses the finished shards and succeeds.
  assert kinetics_sounds.main(args + ["--max_skip_fraction", "0.5"]) == 0
  return os.path.join(out, "kinetics_sounds")


def test_kinetics_sounds_bad_inputs_are_skipped_with_reasons(ks_prepared):
  rows = {r["clip_id"]: r for r in skipped_rows(ks_prepared)}
  kinds = {k: r["kind"] for k, r in rows.items()}
  assert kinds == {"bad_truncated": "unreadable", "bad_silent": "no_audio",
                   "bad_emptywav": "empty", "ghost_clip": "missing",
                   "my_train.txt:14": "bad_line", "c9_unknown": "unknown_label"}
  assert "bad_truncated.mp4" in rows["bad_truncated"]["reason"]
  assert "bad_emptywav.wav" in rows["bad_emptywav"]["reason"]
  assert "ghost_clip.mp4" in rows["ghost_clip"]["reason"]
  meta = json.load(open(os.path.join(ks_prepared, "metadata.json")))
  assert meta["skipped"]["total"] == 6 and meta["skipped"]["by_kind"]["unreadable"] == 1


def test_kinetics_sounds_examples_are_what_they_should_be(ks_prepared):
  builder, examples = read_prepared(ks_prepared)
  assert set(examples) == {"train", "validation", "test"}
  assert builder.info.features["label"].names == ["alpha", "beta", "gamma"]
  good_train = {f"-{l}x0_000010_000020" for l in range(3)} | {
      f"c{l}_{i}" for l in range(3) for i in (1, 2)}
  assert set(examples["train"]) | set(examples["validation"]) == good_train
  assert not set(examples["train"]) & set(examples["validation"])
  assert set(examples["test"]) == {f"c{l}_3" for l in range(3)}
  meta = json.load(open(os.path.join(ks_prepared, "metadata.json")))
  assert meta["splits"] == {s: len(e) for s, e in examples.items()}
  assert meta["class_names"] == ["alpha", "beta", "gamma"] and meta["num_classes"] == 3
  assert meta["audio"]["preset"] == "iibalance" and meta["audio"]["hop_length"] == 160
  assert meta["audio"]["default_frames"] == 200 and meta["video"]["fps"] == 4.0
  for split in examples.values():
    for clip_id, ex in split.items():
      label = int(clip_id[1])  # "-<label>x..." or "c<label>_..."
      assert ex["label"] == label and ex["label_name"].decode() == ["alpha", "beta", "gamma"][label]
      # 2 s at 4 fps: 8 frames of 32x32, source frames 0, 2, 4, ... (grey 10 label + 15 i).
      assert ex["video"]["frames"].shape == (8, 32, 32, 3) and ex["video"]["fps"] == 4.0
      np.testing.assert_allclose(ex["video"]["frames"].mean((1, 2, 3)),
                                 10 * label + 30 * np.arange(8), atol=4)
      spec = ex["audio"]["spectrogram"]
      assert ex["audio"]["sample_rate"] == SR and spec.dtype == np.float32
      freq = KS_WAV_FREQ if clip_id == "c1_1" else KS_FREQS[label]
      assert int(np.argmax(spec.mean(0))) == int(np.argmin(
          [abs(slaney_bin_centre(k) - freq) for k in range(128)]))
      if clip_id == "c1_1":  # from the wav: exactly 2 s, 1 + 32000 // 160 frames
        assert spec.shape == (201, 128) and ex["duration"] == pytest.approx(2.0)
      else:  # the aac track decodes with up to one codec frame of padding
        assert 201 <= spec.shape[0] <= 208 and spec.shape[1] == 128


def test_crema_d_layout_end_to_end(tmp_path):
  raw = tmp_path / "crema"
  (raw / "VideoFlash").mkdir(parents=True)
  (raw / "AudioWAV").mkdir()
  ids = [f"{actor}_DFA_{emo}_XX" for actor in (1001, 1002) for emo in ("ANG", "NEU", "SAD")]
  for n, clip_id in enumerate(ids):
    write_video(str(raw / "VideoFlash" / f"{clip_id}.flv"), grey_frames(6, offset=5 * n), 4,
                tone(300, 1.5, sr=22050), 22050, video_codec="flv", audio_codec="libmp3lame")
    write_wav(str(raw / "AudioWAV" / f"{clip_id}.wav"), tone(800 + 100 * n, 1.5), SR)
  (raw / "train.csv").write_text("\n".join(f"{i},{i.split('_')[2]}" for i in ids[:4]) + "\n")
  (raw / "test.csv").write_text("\n".join(f"{i},{i.split('_')[2]}" for i in ids[4:]) + "\n")
  out = tmp_path / "out"
  code = crema_d.main(["--raw_dir", str(raw), "--out_dir", str(out), "--fps", "2",
                       "--image_size", "32", "--workers", "0", "--preset", "ogm_ge_stft",
                       "--val_fraction", "0.25", "--no_progress"])
  assert code == 0
  _, examples = read_prepared(str(out / "crema_d"))
  assert sum(len(e) for e in examples.values()) == 6
  meta = json.load(open(out / "crema_d" / "metadata.json"))
  assert meta["audio"]["default_frames"] == 188 and meta["audio"]["norm"] == "none"
  assert set(examples["test"]) == set(ids[4:])
  for split in examples.values():
    for clip_id, ex in split.items():
      emo = clip_id.split("_")[2]
      assert ex["label"] == crema_d.EMOTIONS.index(emo) and ex["label_name"].decode() == emo
      assert ex["audio"]["spectrogram"].shape == (188, 257)  # [time, bins], time first
      assert ex["audio"]["sample_rate"] == 22050
      n = ids.index(clip_id)
      peak = int(np.argmax(ex["audio"]["spectrogram"].mean(0)))
      assert abs(peak - (800 + 100 * n) * 512 / 22050) <= 1  # the wav's tone, not the flv's
      assert ex["video"]["frames"].shape == (3, 32, 32, 3)  # 1.5 s at 2 fps


def test_ave_layout_keeps_only_the_event_segment(tmp_path):
  raw = tmp_path / "ave_raw"
  (raw / "AVE").mkdir(parents=True)
  lines = {"train": [], "validation": [], "test": []}
  cats = ["Church bell", "Male speech, man speaking"]
  for n in range(6):
    vid = f"vid{n}"
    # 4 s; the event [1, 3) s has 2 kHz audio, the rest 500 Hz.
    audio = np.concatenate([tone(500, 1.0), tone(2000, 2.0), tone(500, 1.0)])
    write_video(str(raw / "AVE" / f"{vid}.mp4"), grey_frames(16), 4, audio, SR)
    split = ["train", "train", "train", "validation", "test", "test"][n]
    lines[split].append(f"{cats[n % 2]}&{vid}&good&1&3")
  header = "Category&VideoID&Quality&StartTime&EndTime"
  all_lines = [header] + [l for v in lines.values() for l in v]
  (raw / "Annotations.txt").write_text("\n".join(all_lines) + "\n")
  for split, name in ave.SPLIT_FILES.items():
    (raw / name).write_text("\n".join(lines[split]) + "\n")
  out = tmp_path / "out"
  assert ave.main(["--raw_dir", str(raw), "--out_dir", str(out), "--fps", "4",
                   "--image_size", "32", "--workers", "0", "--no_progress"]) == 0
  _, examples = read_prepared(str(out / "ave"))
  assert {s: len(e) for s, e in examples.items()} == {"train": 3, "validation": 1, "test": 2}
  meta = json.load(open(out / "ave" / "metadata.json"))
  assert meta["class_names"] == sorted(cats)
  for split in examples.values():
    for clip_id, ex in split.items():
      n = int(clip_id[3:])
      assert ex["label_name"].decode() == cats[n % 2]
      assert ex["label"] == sorted(cats).index(cats[n % 2])
      # [1, 3) s at 4 fps: 8 frames showing source frames 4..11 (grey 15 i).
      np.testing.assert_allclose(ex["video"]["frames"].mean((1, 2, 3)),
                                 15 * np.arange(4, 12), atol=4)
      spec = ex["audio"]["spectrogram"]
      assert spec.shape == (1 + 32000 // 160, 128)
      assert ex["duration"] == pytest.approx(2.0, abs=0.01)
      peak_hz = slaney_bin_centre(int(np.argmax(spec[5:-5].mean(0))))
      assert abs(peak_hz - 2000) < 80


# ---------------------------------------------------------------------------------------------
# Resumption.


def shard_digests(data_dir):
  return {name: hashlib.sha256(open(os.path.join(data_dir, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(data_dir)) if name.endswith(".tfrecord")}


@pytest.fixture(scope="module")
def resume_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp("resume_raw")
  (raw / "videos").mkdir()
  lines = {"train": [], "test": []}
  for n in range(10):
    write_video(str(raw / "videos" / f"r{n}.mp4"), grey_frames(4, offset=n), 4,
                tone(400 + 50 * n, 1.0), SR)
    lines["test" if n >= 8 else "train"].append(f"r{n},1,{n % 2}")
  for split, rows in lines.items():
    (raw / f"{split}.txt").write_text("\n".join(rows) + "\n")
  listing = kinetics_sounds.list_clips(str(raw), val_fraction=0.2)
  config = PrepareConfig(audio=features.resolve_preset("iibalance"), fps=4, image_size=(32, 32),
                         clips_per_shard=1)
  reference = str(tmp_path_factory.mktemp("resume_ref"))
  prepare(listing, reference, config, workers=0, max_skip_fraction=0.0, log=lambda *a: None)
  return str(raw), listing, config, shard_digests(os.path.join(reference, "kinetics_sounds"))


def test_rerun_after_damage_gives_the_same_dataset(resume_raw, tmp_path):
  _, listing, config, reference = resume_raw
  prepare(listing, str(tmp_path), config, workers=0, log=lambda *a: None)
  data_dir = str(tmp_path / "kinetics_sounds")
  names = sorted(reference)
  os.remove(os.path.join(data_dir, names[0]))                     # a shard lost
  with open(os.path.join(data_dir, names[1]), "r+b") as f:         # a shard cut short
    f.truncate(10)
  os.remove(os.path.join(data_dir, ".prepare", names[2] + ".json"))  # renamed, record missing
  with open(os.path.join(data_dir, ".prepare", "tmp", "stray.tmp"), "wb") as f:
    f.write(b"half a shard")
  os.remove(os.path.join(data_dir, "dataset_info.json"))
  prepare(listing, str(tmp_path), config, workers=0, log=lambda *a: None)
  assert shard_digests(data_dir) == reference
  assert os.listdir(os.path.join(data_dir, ".prepare", "tmp")) == []
  read_prepared(data_dir)


def test_killed_command_resumes_to_the_same_dataset(resume_raw, tmp_path):
  raw, _, _, reference = resume_raw
  out = str(tmp_path)
  cmd = [sys.executable, "-m", "data_prep.kinetics_sounds", "--raw_dir", raw, "--out_dir", out,
         "--fps", "4", "--image_size", "32", "--clips_per_shard", "1", "--workers", "1",
         "--val_fraction", "0.2", "--no_progress"]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  data_dir = os.path.join(out, "kinetics_sounds")
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(data_dir) and any(n.endswith(".tfrecord") for n in os.listdir(data_dir)):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)  # right after the first shard was renamed into place
  proc.wait()
  assert not os.path.exists(os.path.join(data_dir, "dataset_info.json"))  # it was cut short
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert shard_digests(data_dir) == reference


def test_rerun_with_other_parameters_is_refused(resume_raw, tmp_path):
  _, listing, config, _ = resume_raw
  prepare(listing, str(tmp_path), config, workers=0, log=lambda *a: None)
  other = PrepareConfig(audio=config.audio, fps=8, image_size=(32, 32), clips_per_shard=1)
  with pytest.raises(PrepareError, match="other clips or parameters"):
    prepare(listing, str(tmp_path), other, workers=0, log=lambda *a: None)


def test_nothing_prepared_fails_with_a_clear_message(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "train.txt").write_text("gone_a,2,0\ngone_b,2,1\n")
  (raw / "test.txt").write_text("gone_c,2,0\n")
  out = tmp_path / "out"
  assert kinetics_sounds.main(["--raw_dir", str(raw), "--out_dir", str(out), "--workers", "0",
                               "--max_skip_fraction", "1", "--no_progress"]) == 1
  rows = skipped_rows(str(out / "kinetics_sounds"))
  assert {r["clip_id"] for r in rows} == {"gone_a", "gone_b", "gone_c"}
  assert all(r["kind"] == "missing" for r in rows)
