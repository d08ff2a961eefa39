"""A synthetic audio-visual dataset of real media files, in the Kinetics-Sounds layout.

  python -m data_prep.synthetic --out_dir /tmp/synth_raw
  python -m data_prep.kinetics_sounds --raw_dir /tmp/synth_raw --out_dir /tmp/synth_prep \\
      --name synthetic --fps 8 --image_size 64 --audio_frames 300 --workers 2

or, from Python, `ensure_synthetic(cache_dir)` does both once and returns the prepared directory.

The classes are built to behave like the paper's datasets (docs/DATA.md, "Synthetic dataset"):

* Audio (the strong, fast modality): class c is a tone at a class pitch (250 Hz to ~2.5 kHz,
  0.37 octave apart, +-1 semitone jitter) with a weaker second harmonic, in bursts, plus noise
  at 0-12 dB SNR. A share of the clips (`uninformative_audio`, 35%) carries no class evidence:
  two thirds of them are noise only, one third is the tone of a random *other* class.
  An audio-only model therefore tops out near 65% + chance on the noise clips.
* Video (the weak, slow modality): a disc whose hue encodes the class, with a hue jitter of 0.5
  class spacings (so neighbouring classes overlap: about 60% is the best any model can read
  from it), moving over a noisy, randomly tinted background among two squares of random hue.
  The class is in every clip's video, including those whose audio is uninformative, so a good
  fusion beats either modality; the noise, the small object and the distractors make the video
  branch learn slowly, so plain joint training leans on the audio and under-trains it.

The imbalance dial (`dial`, docs/DATA.md): 0 is the published dataset above (35% uninformative
audio, hue jitter 0.5), whose two modalities have nearly equal information budgets; raising it
makes the audio cleaner (fewer uninformative clips) and the video noisier (a wider hue jitter),
linearly, to 10% and 1.0 class spacings at 1, while the video still carries the class on the
clips whose audio does not. `dial=None` is the legacy generator: the published dataset, with
the published synthetic.json (no dial recorded). The default is DEFAULT_DIAL.

Everything is drawn from numpy generators seeded by (seed, clip index): the same arguments give
the same media.
"""
from __future__ import annotations

import argparse
import colorsys
import contextlib
import fcntl
import functools
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import av
import numpy as np

NAME = "synthetic"
# Standard deviation of the disc hue around its class hue, in class spacings: neighbouring
# classes overlap, which caps what any model can read from the video.
HUE_JITTER = 0.5
UNINFORMATIVE_AUDIO = 0.35      # the published dataset's share (dial 0 and dial None)
GENERATOR_VERSION = 1
# The dial's end points: (uninformative audio share, hue jitter) at dial 0 and at dial 1.
DIAL_START = (UNINFORMATIVE_AUDIO, HUE_JITTER)
DIAL_END = (0.10, 1.0)
DEFAULT_DIAL = 0.5         # β_audio 0.90–0.98 over 3 seeds (docs/DATA.md)


def dial_parameters(dial: Optional[float]) -> tuple[float, float]:
  """(uninformative_audio, hue_jitter) at an imbalance dial in [0, 1]; None: the legacy values.

  Linear between DIAL_START (0: the published dataset) and DIAL_END (1: audio clean, video
  noisy).
  """
  if dial is None:
    return DIAL_START
  if not 0.0 <= dial <= 1.0:
    raise ValueError(f"dial must lie in [0, 1] (0: the published, nearly balanced dataset; 1: "
                     f"strongly imbalanced) or be None (legacy), got {dial}")
  (u0, j0), (u1, j1) = DIAL_START, DIAL_END
  return u0 + (u1 - u0) * dial, j0 + (j1 - j0) * dial


def generator_args(*, num_classes: int = 10, clips_per_class: int = 60, duration: float = 3.0,
                   fps: float = 8.0, size: int = 64, sample_rate: int = 16000,
                   test_fraction: float = 0.2, uninformative_audio: Optional[float] = None,
                   hue_jitter: Optional[float] = None, dial: Optional[float] = DEFAULT_DIAL,
                   seed: int = 0) -> dict:
  """The generator's arguments as synthetic.json records them, the dial resolved.

  `uninformative_audio` and `hue_jitter` default to the dial's values (`dial_parameters`); given,
  they override it. With dial None and no hue_jitter the record is the legacy one, key for key
  (no 'dial', no 'hue_jitter'), so a published dataset's cache stays valid.
  """
  u, j = dial_parameters(dial)
  args = dict(version=GENERATOR_VERSION, num_classes=num_classes,
              clips_per_class=clips_per_class, duration=duration, fps=fps, size=size,
              sample_rate=sample_rate, test_fraction=test_fraction,
              uninformative_audio=u if uninformative_audio is None else uninformative_audio,
              seed=seed)
  if dial is not None or hue_jitter is not None:
    args["dial"] = dial
    args["hue_jitter"] = j if hue_jitter is None else hue_jitter
  return args


# ---------------------------------------------------------------------------------------------
# Writing media with PyAV.


# Encoders in order of preference for the mp4 files (PyAV builds differ in what they ship).
VIDEO_ENCODERS = ("libx264", "h264", "libopenh264", "mpeg4")
AUDIO_ENCODERS = ("aac", "libfdk_aac", "libmp3lame")


def available_encoder(candidates: Sequence[str]) -> str:
  """The first of `candidates` that this PyAV build can encode with.

  Raises:
    RuntimeError: naming the candidates, when none is available.
  """
  for name in candidates:
    try:
      av.Codec(name, "w")
      return name
    except Exception:  # av raises UnknownCodecError (or ValueError in older releases)
      continue
  raise RuntimeError(f"this PyAV build has none of the encoders {list(candidates)}")


def write_video(path: str, frames: Optional[np.ndarray], fps: float,
                audio: Optional[np.ndarray] = None, sample_rate: int = 16000, *,
                video_codec: Optional[str] = None, audio_codec: Optional[str] = None,
                options: Optional[dict] = None) -> None:
  """Writes a video file (container from the extension) with an optional mono audio track.

  Args:
    path: the output file, e.g. '.mp4' (h264 + aac by default) or '.flv' (video_codec 'flv',
      audio_codec 'libmp3lame').
    frames: uint8 [N, H, W, 3] RGB (H and W even for h264), or None for an audio-only file.
    fps: frames per second.
    audio: float32 [num_samples] in [-1, 1], or None for a file without an audio stream.
    sample_rate: of `audio`.
    video_codec, audio_codec: PyAV encoder names (default: the first available of
      VIDEO_ENCODERS / AUDIO_ENCODERS).
    options: container (muxer) options, e.g. {'movflags': 'faststart'}.
  """
  video_codec = video_codec or available_encoder(VIDEO_ENCODERS)
  audio_codec = audio_codec or available_encoder(AUDIO_ENCODERS)
  with av.open(path, "w", options=options or {}) as container:
    vstream = astream = None
    if frames is not None:
      # veryfast: three times faster than x264's default at these sizes, nearly as small.
      codec_options = {"preset": "veryfast"} if video_codec in ("libx264", "h264") else {}
      vstream = container.add_stream(video_codec, rate=int(round(fps)), options=codec_options)
      vstream.height, vstream.width = int(frames.shape[1]), int(frames.shape[2])
      vstream.pix_fmt = "yuv420p"
      # One encoder thread. Even so the h264 bytes are not reproducible: two generations on one
      # machine differed in a few early frames of about a third of the clips (measured; the
      # rendered frames, the audio and every text file were identical). Compare generations by
      # `render_clip_arrays`, not by the files' bytes.
      vstream.codec_context.thread_count = 1
    if audio is not None:
      astream = container.add_stream(audio_codec, rate=int(sample_rate), layout="mono")
    if vstream is not None:
      for frame in frames:
        for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in vstream.encode(None):
        container.mux(packet)
    if astream is not None:
      _encode_audio(container, astream, audio, sample_rate)


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
  audio = np.asarray(audio, np.float32)
  step = 1024
  for start in range(0, len(audio), step):
    chunk = audio[start:start + step]
    frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
    frame.sample_rate = int(sample_rate)
    frame.pts = start
    for packet in stream.encode(frame):
      container.mux(packet)
  for packet in stream.encode(None):
    container.mux(packet)


def write_wav(path: str, audio: np.ndarray, sample_rate: int, channels: int = 1) -> None:
  """Writes 16-bit PCM wav; `audio` float32 [num_samples] in [-1, 1] (may be empty)."""
  layout = "mono" if channels == 1 else "stereo"
  with av.open(path, "w", format="wav") as container:
    stream = container.add_stream("pcm_s16le", rate=int(sample_rate), layout=layout)
    container.start_encoding()  # the header, also when there is no sample to write
    audio = np.asarray(audio, np.float32)
    if len(audio):
      data = np.repeat(audio[None, :], channels, axis=0)
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T.reshape(1, -1)),
                                         format="flt", layout=layout)
      frame.sample_rate = int(sample_rate)
      frame.pts = 0
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


# ---------------------------------------------------------------------------------------------
# The class signals.


def class_pitch(label: int, num_classes: int) -> float:
  """The tone of class `label`, Hz: log-spaced from 250 Hz, 0.37 octave apart for 10 classes."""
  return 250.0 * 2.0 ** (label * 3.3 / max(num_classes - 1, 1))


def class_hue(label: int, num_classes: int) -> float:
  """The disc hue of class `label`, in [0, 1)."""
  return label / num_classes


def _tone(rng: np.random.Generator, freq: float, n: int, sample_rate: int) -> np.ndarray:
  t = np.arange(n) / sample_rate
  phase = rng.uniform(0, 2 * np.pi)
  wave = np.sin(2 * np.pi * freq * t + phase) + 0.3 * np.sin(4 * np.pi * freq * t + phase)
  # Bursts: the tone is on for 60-90% of 0.3-0.6 s periods, from a random offset.
  period = rng.uniform(0.3, 0.6)
  duty = rng.uniform(0.6, 0.9)
  gate = ((t + rng.uniform(0, period)) % period) < duty * period
  ramp = np.convolve(gate.astype(np.float64), np.hanning(161) / np.hanning(161).sum(), "same")
  return wave * ramp


def render_audio(rng: np.random.Generator, label: int, num_classes: int, duration: float,
                 sample_rate: int, mode: str) -> np.ndarray:
  """One clip's waveform: float32 [duration * sample_rate] in [-1, 1].

  Args:
    mode: 'class' (the clip's own tone), 'other' (the tone of another class) or 'noise'.
  """
  n = int(round(duration * sample_rate))
  noise = rng.standard_normal(n)
  if rng.random() < 0.5:  # half brown-ish noise: a differently coloured background
    noise = np.cumsum(noise)
    noise -= np.convolve(noise, np.ones(64) / 64, "same")
  noise /= noise.std() + 1e-12
  if mode == "noise":
    wave = noise
  else:
    tone_label = label
    if mode == "other":
      tone_label = (label + int(rng.integers(1, num_classes))) % num_classes
    freq = class_pitch(tone_label, num_classes) * 2.0 ** rng.uniform(-1 / 12, 1 / 12)
    tone = _tone(rng, freq, n, sample_rate)
    snr_db = rng.uniform(0.0, 12.0)
    tone *= 10 ** (snr_db / 20) / (tone.std() + 1e-12)
    wave = tone + noise
  wave = wave / (np.abs(wave).max() + 1e-12) * rng.uniform(0.2, 0.6)
  return wave.astype(np.float32)


def _rgb(h: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def render_video(rng: np.random.Generator, label: int, num_classes: int, duration: float,
                 fps: float, size: int, hue_jitter: float = HUE_JITTER) -> np.ndarray:
  """One clip's frames: uint8 [round(duration * fps), size, size, 3].

  Args:
    hue_jitter: standard deviation of the disc hue around its class hue, in class spacings.
  """
  n = int(round(duration * fps))
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  base = _rgb(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.7))
  gradient = rng.uniform(-0.25, 0.25, 3)[:, None, None] * (xx / size - 0.5)
  background = np.clip(base[:, None, None] + gradient, 0, 1).transpose(1, 2, 0)

  def track(radius):
    pos = rng.uniform(radius, size - radius, 2)
    vel = rng.normal(0, size / 12, 2)  # pixels per second
    out = []
    for _ in range(n):
      out.append(pos.copy())
      pos = pos + vel / fps
      for d in range(2):  # bounce off the borders
        if not radius <= pos[d] <= size - radius:
          vel[d] = -vel[d]
          pos[d] = np.clip(pos[d], radius, size - radius)
    return out

  spacing = 1.0 / num_classes
  hue = class_hue(label, num_classes) + rng.normal(0, hue_jitter * spacing)
  disc_color = _rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
  disc_radius = rng.uniform(size * 0.12, size * 0.2)
  disc_track = track(disc_radius)
  squares = []
  for _ in range(2):
    half = rng.uniform(size * 0.05, size * 0.09)
    squares.append((_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)), half,
                    track(half)))
  noise_sigma = rng.uniform(0.08, 0.15)
  frames = np.empty((n, size, size, 3), np.uint8)
  for k in range(n):
    img = background.copy()
    for color, half, positions in squares:
      cy, cx = positions[k]
      img[(np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)] = color
    cy, cx = disc_track[k]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= disc_radius ** 2] = disc_color
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, noise_sigma, img.shape)
    frames[k] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
  return frames


# ---------------------------------------------------------------------------------------------
# The dataset.


def _clip_plan(num_classes: int, clips_per_class: int, test_fraction: float,
               uninformative_audio: float, seed: int) -> list[dict]:
  rng = np.random.default_rng([seed, 0])
  plan = []
  n_test = int(math.floor(test_fraction * clips_per_class + 0.5))
  for label in range(num_classes):
    test_idx = set(rng.permutation(clips_per_class)[:n_test].tolist())
    # The same share of uninformative audio in every class and in both splits.
    modes = np.array(["class"] * clips_per_class, dtype=object)
    for split_idx in (sorted(test_idx), sorted(set(range(clips_per_class)) - test_idx)):
      order = rng.permutation(split_idx)
      k = int(math.floor(uninformative_audio * len(split_idx) + 0.5))
      k_other = int(math.floor(k / 3 + 0.5))
      modes[order[:k_other]] = "other"
      modes[order[k_other:k]] = "noise"
    for i in range(clips_per_class):
      plan.append({"name": f"s{label:02d}_{i:04d}", "label": label,
                   "split": "test" if i in test_idx else "train", "audio": str(modes[i]),
                   "index": len(plan)})
  return plan


def render_clip_arrays(item: dict, *, num_classes: int, duration: float, fps: float, size: int,
                       sample_rate: int, seed: int, hue_jitter: float = HUE_JITTER
                       ) -> tuple[np.ndarray, np.ndarray]:
  """One planned clip's media before encoding: (frames uint8 [N, size, size, 3], waveform
  float32 [duration * sample_rate]), drawn from the generator seeded by (seed, 1, clip index)."""
  rng = np.random.default_rng([seed, 1, item["index"]])
  frames = render_video(rng, item["label"], num_classes, duration, fps, size, hue_jitter)
  audio = render_audio(rng, item["label"], num_classes, duration, sample_rate, item["audio"])
  return frames, audio


def _render_clip(item: dict, *, out_dir: str, num_classes: int, duration: float, fps: float,
                 size: int, sample_rate: int, seed: int, hue_jitter: float = HUE_JITTER) -> str:
  frames, audio = render_clip_arrays(item, num_classes=num_classes, duration=duration, fps=fps,
                                     size=size, sample_rate=sample_rate, seed=seed,
                                     hue_jitter=hue_jitter)
  path = os.path.join(out_dir, "videos", item["name"] + ".mp4")
  tmp = path + ".part.mp4"
  write_video(tmp, frames, fps, audio, sample_rate)
  os.replace(tmp, path)
  return path


def generate(out_dir: str, *, num_classes: int = 10, clips_per_class: int = 60,
             duration: float = 3.0, fps: float = 8.0, size: int = 64, sample_rate: int = 16000,
             test_fraction: float = 0.2, uninformative_audio: Optional[float] = None,
             hue_jitter: Optional[float] = None, dial: Optional[float] = DEFAULT_DIAL,
             seed: int = 0, workers: int = 1, progress: bool = False) -> dict:
  """Writes the raw synthetic dataset in the Kinetics-Sounds layout.

  Files: videos/<name>.mp4 (h264 + aac), train.txt and test.txt (`name,duration,label`),
  classes.txt, synthetic.json (the arguments, and each clip's audio mode).

  Args:
    out_dir: the raw dataset directory (created).
    num_classes, clips_per_class: the size.
    duration: seconds per clip.
    fps, size: the source video's frame rate and (square) frame size.
    sample_rate: the audio track's rate.
    test_fraction: share of each class in test.
    uninformative_audio: share of each class (and split) whose audio carries no class evidence
      (default: the dial's).
    hue_jitter: standard deviation of the disc hue, in class spacings (default: the dial's).
    dial: the imbalance dial in [0, 1] (module docstring), or None for the legacy generator:
      the published dataset, byte for byte in its media arrays, split files and synthetic.json.
    seed: seeds everything.
    workers: encoding processes.
    progress: show a progress bar.

  Returns:
    The generator arguments (as written to synthetic.json; `generator_args`).
  """
  args = generator_args(num_classes=num_classes, clips_per_class=clips_per_class,
                        duration=duration, fps=fps, size=size, sample_rate=sample_rate,
                        test_fraction=test_fraction, uninformative_audio=uninformative_audio,
                        hue_jitter=hue_jitter, dial=dial, seed=seed)
  if size % 2:
    raise ValueError(f"size must be even (h264), got {size}")
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  plan = _clip_plan(num_classes, clips_per_class, test_fraction, args["uninformative_audio"],
                    seed)
  render = functools.partial(_render_clip, out_dir=out_dir, num_classes=num_classes,
                             duration=duration, fps=fps, size=size, sample_rate=sample_rate,
                             seed=seed, hue_jitter=args.get("hue_jitter", HUE_JITTER))
  from tqdm import tqdm

  bar = tqdm(total=len(plan), unit="clip", desc="generating", disable=not progress)
  if workers > 1:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      for _ in pool.imap_unordered(render, plan, chunksize=4):
        bar.update(1)
  else:
    for item in plan:
      render(item)
      bar.update(1)
  bar.close()
  names = [f"{c:02d}_{class_pitch(c, num_classes):.0f}hz_"
           f"hue{int(360 * class_hue(c, num_classes)):03d}" for c in range(num_classes)]
  for split in ("train", "test"):
    lines = [f"{p['name']},{duration:g},{p['label']}" for p in plan if p["split"] == split]
    _write_text(os.path.join(out_dir, f"{split}.txt"), "\n".join(lines) + "\n")
  _write_text(os.path.join(out_dir, "classes.txt"), "\n".join(names) + "\n")
  info = dict(args, clips={p["name"]: p["audio"] for p in plan})
  _write_text(os.path.join(out_dir, "synthetic.json"), json.dumps(info, indent=1) + "\n")
  return args


def _write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


@contextlib.contextmanager
def _lock(path: str):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic(cache_dir: str, *, num_classes: int = 10, clips_per_class: int = 60,
                     duration: float = 3.0, fps: float = 8.0, size: int = 64, seed: int = 0,
                     dial: Optional[float] = DEFAULT_DIAL, test_fraction: float = 0.2,
                     image_size: Optional[int] = None,
                     preset: str = "iibalance", clips_per_shard: int = 64,
                     workers: Optional[int] = None, progress: bool = False) -> str:
  """Generates and prepares the synthetic dataset under `cache_dir` unless already there.

  Idempotent and safe to call from several processes at once (a file lock serialises them);
  a call with other arguments regenerates what they change.

  Args:
    cache_dir: holds raw/ (the media) and prepared/synthetic/ (the TFRecords) of the legacy
      dataset (dial None), and the same under dial_<dial>/ for a dial, so that datasets of
      different dials share a cache without regenerating one another.
    num_classes, clips_per_class, duration, fps, size, seed, dial, test_fraction: see
      `generate`.
    image_size: stored frame size (default: `size`).
    preset: the audio front-end.
    clips_per_shard: shard size of the prepared dataset.
    workers: processes (default: the usable cores).
    progress: show progress bars.

  Returns:
    The prepared dataset directory, for `iib_jax.data.make_dataset` / `load_info`.
  """
  from data_prep import features, kinetics_sounds
  from data_prep.tfrecords import PrepareConfig, PrepareError, prepare

  if getattr(multiprocessing.current_process(), "_inheriting", False):
    # A spawned worker re-imports the parent's main module; a script calling this at import
    # time would wait here on the parent's lock for ever.
    raise RuntimeError(
        "ensure_synthetic was called while a worker process was starting: call it under "
        "`if __name__ == '__main__':` in scripts")
  if workers is None:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  gen_args = generator_args(num_classes=num_classes, clips_per_class=clips_per_class,
                            duration=duration, fps=fps, size=size, dial=dial, seed=seed,
                            test_fraction=test_fraction)
  if dial is not None:
    cache_dir = os.path.join(cache_dir, f"dial_{dial:g}")
  os.makedirs(cache_dir, exist_ok=True)
  raw_dir = os.path.join(cache_dir, "raw")
  out_dir = os.path.join(cache_dir, "prepared")
  data_dir = os.path.join(out_dir, NAME)
  image_size = size if image_size is None else image_size
  with _lock(os.path.join(cache_dir, ".lock")):
    stamp = os.path.join(cache_dir, "synthetic_ready.json")
    wanted = dict(generator=gen_args, image_size=image_size, preset=preset,
                  clips_per_shard=clips_per_shard)
    if os.path.exists(stamp) and os.path.exists(os.path.join(data_dir, ".prepare", "done.json")):
      with open(stamp) as f:
        if json.load(f) == wanted:
          return data_dir
    info_path = os.path.join(raw_dir, "synthetic.json")
    current = None
    if os.path.exists(info_path):
      with open(info_path) as f:
        current = {k: v for k, v in json.load(f).items() if k != "clips"}
    if current != gen_args:
      if os.path.exists(raw_dir):
        shutil.rmtree(raw_dir)
      generate(raw_dir, **{k: v for k, v in gen_args.items() if k not in ("version", "dial")},
               dial=gen_args.get("dial"), workers=workers, progress=progress)
    listing = kinetics_sounds.list_clips(raw_dir, val_fraction=0.1, seed=seed, name=NAME)
    listing.source["dataset"] = "synthetic"
    listing.source["generator"] = gen_args
    config = PrepareConfig(audio=features.resolve_preset(preset), fps=fps,
                           image_size=(image_size, image_size),
                           audio_frames=int(round(duration * 100)),
                           clips_per_shard=clips_per_shard, seed=seed)
    try:
      prepare(listing, out_dir, config, workers=workers, max_skip_fraction=0.0,
              progress=progress, log=lambda *a: None)
    except PrepareError:
      # Earlier files made with other arguments: start over once.
      prepare(listing, out_dir, config, workers=workers, max_skip_fraction=0.0,
              overwrite=True, progress=progress, log=lambda *a: None)
    _write_text(stamp, json.dumps(wanted))
  return data_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True, help="the raw dataset directory to write")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--clips_per_class", type=int, default=60)
  p.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
  p.add_argument("--fps", type=float, default=8.0, help="source video frame rate")
  p.add_argument("--size", type=int, default=64, help="source frame size (square, even)")
  p.add_argument("--test_fraction", type=float, default=0.2)
  p.add_argument("--dial", default=str(DEFAULT_DIAL),
                 help="imbalance dial in [0, 1], or 'none' for the legacy (published) dataset")
  p.add_argument("--uninformative_audio", type=float, default=None,
                 help="share of clips whose audio carries no class evidence (default: the dial's)")
  p.add_argument("--hue_jitter", type=float, default=None,
                 help="disc hue jitter in class spacings (default: the dial's)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int,
                 default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
  args = p.parse_args(argv)
  start = time.time()
  generate(args.out_dir, num_classes=args.num_classes, clips_per_class=args.clips_per_class,
           duration=args.duration, fps=args.fps, size=args.size,
           test_fraction=args.test_fraction, uninformative_audio=args.uninformative_audio,
           hue_jitter=args.hue_jitter,
           dial=None if args.dial.lower() == "none" else float(args.dial),
           seed=args.seed, workers=args.workers, progress=sys.stderr.isatty())
  n = args.num_classes * args.clips_per_class
  print(f"wrote {n} clips to {args.out_dir} in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
