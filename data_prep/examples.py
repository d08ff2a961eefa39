"""One clip → the values of one example; runs in the worker processes of preparation and of
prediction from raw files (`experiments.predict`), which decode clips by the same path
(`decode_clip`).

Nothing here imports TensorFlow or JAX, so a spawned worker starts in a fraction of a second.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from data_prep import features as features_lib
from data_prep import media
from data_prep.splits import Clip

ERROR = "error"  # an unexpected exception while preparing a clip (kept per clip, never fatal)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """Every parameter of a preparation run that shapes the stored examples.

  Attributes:
    audio: the audio front-end, from `features.resolve_preset`.
    fps: video frames per second.
    image_size: (height, width) of the stored frames.
    jpeg_quality: quality of the stored JPEGs; None keeps frames as uint8 arrays (prediction
      from raw files, `prediction_config`).
    audio_frames: the audio length (frames) the input pipeline crops or pads to by default;
      recorded in the metadata. A preset with a fixed length (audio['frames']) uses that
      instead; None: the longest clip.
    clips_per_shard: clips per shard, when num_shards is None.
    num_shards: shards per split (capped at the split's clip count), or None.
    seed: seeds the shard plan (the shuffled clip order).
  """
  audio: Mapping[str, Any]
  fps: float = 16.0
  image_size: tuple = (224, 224)
  jpeg_quality: Optional[int] = 90
  audio_frames: Optional[int] = None
  clips_per_shard: int = 64
  num_shards: Optional[int] = None
  seed: int = 0

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["image_size"] = list(self.image_size)
    d["audio"] = dict(self.audio)
    return d


@dataclasses.dataclass
class ClipMedia:
  """One clip decoded and turned into features, as preparation stores it.

  Attributes:
    wave: float32 [num_samples], mono, at the preset's sample rate.
    video: the frames (`media.VideoClip`: JPEG bytes, or uint8 arrays without JPEG).
    features: float32 [time, bins], the audio features (padded to a fixed length if the preset
      has one).
    valid: the number of feature frames computed from the signal, before that padding.
  """
  wave: np.ndarray
  video: media.VideoClip
  features: np.ndarray
  valid: int


def decode_clip(clip: Clip, config: PrepareConfig) -> ClipMedia:
  """Decodes one clip and computes its audio features: the one path of preparation
  (`process_clip`) and of prediction from raw files (`experiments.predict`).

  With `config.jpeg_quality=None` the frames stay uint8 arrays (no JPEG rounding).

  Raises:
    media.MediaError: the clip's media cannot be used.
  """
  audio_params = config.audio
  wave = media.decode_audio(clip.audio_path or clip.video_path,
                            sample_rate=int(audio_params["sample_rate"]), start=clip.start,
                            end=clip.end)
  video = media.decode_video(clip.video_path, fps=config.fps, size=config.image_size,
                             start=clip.start, end=clip.end, jpeg_quality=config.jpeg_quality)
  feats, valid = features_lib.compute_features(wave, audio_params)
  return ClipMedia(wave=wave, video=video, features=feats, valid=int(valid))


def process_clip(clip: Clip, config: PrepareConfig) -> dict:
  """Decodes one clip and computes its features.

  Returns:
    A dict with the example's values (see `iib_jax.schema`) and per-clip statistics.

  Raises:
    media.MediaError: the clip's media cannot be used.
  """
  decoded = decode_clip(clip, config)
  wave, video, feats, valid = decoded.wave, decoded.video, decoded.features, decoded.valid
  audio_params = config.audio
  body = feats[:valid].astype(np.float64)
  return {
      "clip_id": clip.clip_id,
      "label": int(clip.label),
      "label_name": clip.label_name,
      "duration": len(wave) / float(audio_params["sample_rate"]),
      "frames": video.frames,
      "fps": float(video.fps),
      # Explicit little-endian: the schema fixes the byte order, whatever the host's.
      "audio": feats.astype("<f4").tobytes(),
      "audio_shape": list(feats.shape),
      "sample_rate": int(audio_params["sample_rate"]),
      "stats": {"num_frames": len(video.frames), "audio_frames": int(feats.shape[0]),
                "audio_valid_frames": int(valid), "audio_sum": float(body.sum()),
                "audio_sumsq": float((body ** 2).sum()), "audio_count": int(body.size)},
  }


def prediction_config(info: Mapping[str, Any], jpeg: bool = False) -> PrepareConfig:
  """The preparation parameters a prepared dataset recorded (`metadata.json`: `audio`,
  `video`), to decode new clips exactly as its own were.

  Args:
    info: the dataset's metadata (`iib_jax.schema.load_info`, or a trained run's
      `iib_jax.inference` info).
    jpeg: round the frames through JPEG at the recorded quality, as the stored frames were;
      False keeps them as decoded (uint8 arrays).
  """
  video = info["video"]
  return PrepareConfig(audio=dict(info["audio"]), fps=float(video["fps"]),
                       image_size=(int(video["height"]), int(video["width"])),
                       jpeg_quality=int(video["jpeg_quality"]) if jpeg else None)


def clip_example(clip: Clip, config: PrepareConfig) -> dict:
  """One clip as the stored-form example prediction reads: 'video' uint8 [N, H, W, 3] (every
  frame at the recorded fps and size), 'audio' float32 [time, bins] (the recorded features,
  unnormalised), 'clip_id', 'label'.

  JPEG frames (`config.jpeg_quality` set) are decoded with libjpeg's accurate integer DCT, as
  the input pipeline decodes the stored ones.

  Raises:
    media.MediaError: the clip's media cannot be used.
  """
  decoded = decode_clip(clip, config)
  frames = decoded.video.frames
  if config.jpeg_quality is not None:
    frames = [media.decode_jpeg(f) for f in frames]
  return {"clip_id": clip.clip_id, "label": int(clip.label),
          "video": np.stack(frames).astype(np.uint8), "audio": decoded.features}


def media_clip(path: str, audio_path: Optional[str] = None) -> Clip:
  """A clip to predict from one media file (its stem as the id; no label: -1)."""
  return Clip(clip_id=os.path.splitext(os.path.basename(path))[0], label=-1, label_name="",
              video_path=path, audio_path=audio_path)


def work(item: tuple[int, Clip], config: PrepareConfig,
         process: Callable[[Clip, PrepareConfig], dict] = process_clip) -> tuple[int, str, Any]:
  """(index, 'ok', process(clip, config)) or (index, kind of failure, reason naming the file).

  `process` is `process_clip` (preparation's stored values) or `clip_example` (prediction)."""
  index, clip = item
  try:
    return index, "ok", process(clip, config)
  except media.MediaError as e:
    return index, e.kind, str(e)
  except Exception as e:  # one odd clip never stops the run; its reason is kept
    return index, ERROR, f"{clip.video_path}: {type(e).__name__}: {e}"


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
  """Processes started inside inherit one-thread BLAS / OpenMP settings.

  There is already one worker per core; thread pools inside each (numpy's BLAS in the Mel
  projection, OpenMP) would only oversubscribe the cores.
  """
  names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
  saved = {n: os.environ.get(n) for n in names}
  os.environ.update({n: "1" for n in names})
  try:
    yield
  finally:
    for n, value in saved.items():
      if value is None:
        os.environ.pop(n, None)
      else:
        os.environ[n] = value


def map_clips(clips: Sequence[Clip], config: PrepareConfig,
              process: Callable[[Clip, PrepareConfig], Any] = clip_example,
              workers: int = 1) -> Iterator[tuple[int, str, Any]]:
  """`work` over `clips`, in order, in `workers` spawned processes (1 or fewer: in this one).

  Yields:
    (index, 'ok', process(clip, config)) or (index, kind of failure, reason naming the file).
  """
  fn = functools.partial(work, config=config, process=process)
  items = list(enumerate(clips))
  if workers <= 1 or len(items) <= 1:
    yield from map(fn, items)
    return
  # spawn: the parent may hold JAX's or TensorFlow's threads, which a fork would copy mid-flight.
  with single_threaded_children():
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(items)))
  try:
    yield from pool.imap(fn, items, chunksize=1)
  finally:
    pool.terminate()
    pool.join()
