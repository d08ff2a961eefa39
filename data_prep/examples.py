"""One clip → the values of one example; runs in the preparation's worker processes.

Nothing here imports TensorFlow or JAX, so a spawned worker starts in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

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
    jpeg_quality: quality of the stored JPEGs.
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
  jpeg_quality: int = 90
  audio_frames: Optional[int] = None
  clips_per_shard: int = 64
  num_shards: Optional[int] = None
  seed: int = 0

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["image_size"] = list(self.image_size)
    d["audio"] = dict(self.audio)
    return d


def process_clip(clip: Clip, config: PrepareConfig) -> dict:
  """Decodes one clip and computes its features.

  Returns:
    A dict with the example's values (see `iib_jax.schema`) and per-clip statistics.

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


def work(item: tuple[int, Clip], config: PrepareConfig) -> tuple[int, str, Any]:
  """(index, 'ok', example values) or (index, kind of failure, reason naming the file)."""
  index, clip = item
  try:
    return index, "ok", process_clip(clip, config)
  except media.MediaError as e:
    return index, e.kind, str(e)
  except Exception as e:  # one odd clip never stops the run; its reason is kept
    return index, ERROR, f"{clip.video_path}: {type(e).__name__}: {e}"
