"""Decoding with PyAV: video frames at a fixed rate, resized, as JPEG; audio as a mono waveform.

Every failure raises `MediaError`, whose message names the file; `kind` sorts failures for the
summary of skipped clips.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from fractions import Fraction
from typing import Optional, Sequence

import av
import numpy as np
from PIL import Image

# Kinds of failure, as written to skipped.csv.
MISSING, EMPTY, UNREADABLE, TRUNCATED, NO_VIDEO, NO_AUDIO = (
    "missing", "empty", "unreadable", "truncated", "no_video", "no_audio")

# A stream that ends this much before the duration its header declares is taken as truncated
# (a cut-off download whose index survived); the slack absorbs rounding of declared durations.
_TRUNCATION_SLACK_S = 0.5
_TRUNCATION_SLACK_FRACTION = 0.05
# Seek instead of decoding from the start when a segment starts this late.
_SEEK_AFTER_S = 2.0


class MediaError(Exception):
  """A media file could not be used.

  Attributes:
    path: the file.
    kind: one of 'missing', 'empty', 'unreadable', 'truncated', 'no_video', 'no_audio'.
    reason: what went wrong, in words.
  """

  def __init__(self, path: str, kind: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.kind, self.reason = path, kind, reason


@dataclasses.dataclass
class VideoClip:
  """Frames of one clip.

  Attributes:
    frames: [num_frames] JPEG bytes, RGB, height x width (or uint8 [height, width, 3] arrays,
      `decode_video(jpeg_quality=None)`); frame k is the source frame ffmpeg's fps filter gives
      at start + k / fps (`decode_video`).
    fps: the output frame rate.
    height, width: the frame size.
    duration: seconds covered by the frames (num_frames / fps).
    source_fps: the stream's average frame rate (0 when unknown).
  """
  frames: list
  fps: float
  height: int
  width: int
  duration: float
  source_fps: float


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise MediaError(path, MISSING, "file not found")
  if os.path.getsize(path) == 0:
    raise MediaError(path, EMPTY, "file is empty (0 bytes)")


def _open(path: str):
  _check_file(path)
  try:
    container = av.open(path)
  except Exception as e:  # PyAV raises FFmpegError subclasses, OSError or ValueError here
    raise MediaError(path, UNREADABLE, f"cannot open: {e}") from e
  if not container.streams.video and not container.streams.audio:
    container.close()
    # e.g. an mp4 cut inside its index: it opens, but declares nothing.
    raise MediaError(path, UNREADABLE, "no audio or video stream (truncated, or not a media "
                     "file?)")
  return container


def _declared_duration(stream) -> Optional[float]:
  if stream.duration is None or stream.time_base is None:
    return None
  return float(stream.duration * stream.time_base)


def _check_not_truncated(path: str, what: str, decoded_end: float, declared: Optional[float],
                         start: float, end: Optional[float]) -> None:
  """Raises when the decoded stream stops well before its declared end (inside the segment)."""
  if declared is None or declared <= 0:
    return
  expected_end = declared if end is None else min(declared, end)
  if expected_end <= start:
    return
  slack = max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * declared)
  if decoded_end < expected_end - slack:
    raise MediaError(path, TRUNCATED,
                     f"{what} stream ends at {decoded_end:.2f} s but declares {declared:.2f} s "
                     f"(truncated file?)")


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of one RGB image.

  Args:
    rgb: uint8 [H, W, 3].
    quality: JPEG quality, 1-95.
  """
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """uint8 [H, W, 3] RGB of JPEG bytes, with libjpeg's accurate integer DCT and fancy
  upsampling: the pixels of the input pipeline's `tf.io.decode_jpeg(dct_method=
  'INTEGER_ACCURATE')` (checked by tests/test_predict.py)."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def _round_near(x: Fraction) -> int:
  """x to the nearest integer, halves away from zero (libavutil's AV_ROUND_NEAR_INF)."""
  n = math.floor(abs(x) + Fraction(1, 2))
  return n if x >= 0 else -n


def _seconds(x: float) -> Fraction:
  # Microseconds, as ffmpeg's options: 0.1 s is 1/10, not the binary float nearest to it.
  return Fraction(x).limit_denominator(1_000_000)


def _frame_duration(frame, pts: int, prev_pts: Optional[int], rate_ticks: int) -> int:
  """The display time of a frame in stream ticks, as ffmpeg's command line estimates it.

  fftools/ffmpeg_dec.c (video_duration_estimate): the frame's own duration, unless it is a
  made-up 1 tick, else the gap since the previous frame, else one period of the stream's rate.
  FLV frames carry no duration, so their last frame is shown for the gap before it.
  """
  duration = frame.duration or 0
  gap = pts - prev_pts if prev_pts is not None else -1
  if duration > 0 and not (duration == 1 and gap > 2):
    return duration
  if gap > 0:
    return gap
  return duration if duration > 0 else rate_ticks


def decode_video(path: str, *, fps: float = 16.0, size: Sequence[int] = (224, 224),
                 start: Optional[float] = None, end: Optional[float] = None,
                 jpeg_quality: Optional[int] = 90, interpolation: str = "AREA") -> VideoClip:
  """Decodes a video stream into frames at a fixed rate, resized and JPEG-encoded.

  The frames are those of ffmpeg's fps filter (`fps=FPS:start_time=S`, rounding 'near', the
  end of the last frame as its end of stream), for any time base of the stream: each source
  frame's timestamp, relative to S, is rounded to the nearest multiple of 1 / fps, and output
  frame k is the last source frame whose rounded timestamp is at or before k / fps (a source
  frame repeats when fps is above the source rate and is dropped when below). S is the stream's
  start plus `start`; output frames are those at times below `end` and below the end of the
  last source frame rounded to 1 / fps. All timestamp arithmetic is exact (integers and
  fractions), so millisecond stamps (FLV, Matroska, MP4 at timescale 1000) select the same
  frames as exact ones.

  Args:
    path: the media file.
    fps: output frames per second.
    size: (height, width) of the output frames; the aspect ratio is not preserved (as
      torchvision's Resize((224, 224)) in the reference pipelines).
    start, end: the segment in seconds relative to the stream's start, or None for the
      stream's start / end.
    jpeg_quality: quality of the stored JPEGs; None keeps the resized frames as uint8 RGB
      arrays (prediction from raw files, which skips the storage's JPEG rounding).
    interpolation: libswscale interpolation for the resize ('AREA' averages when shrinking).

  Returns:
    A VideoClip.

  Raises:
    MediaError: missing, empty, unreadable or truncated file, no video stream, no frame in the
      segment.
  """
  height, width = int(size[0]), int(size[1])
  start = 0.0 if start is None else float(start)
  rate = Fraction(fps).limit_denominator(1_001_000)  # as av_d2q for the filter's fps option
  if rate <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  # Output frames k < max_frames lie before the segment's end.
  max_frames = math.inf if end is None else max(0, math.ceil((_seconds(end) - _seconds(start))
                                                             * rate))
  container = _open(path)
  try:
    if not container.streams.video:
      raise MediaError(path, NO_VIDEO, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    source_rate = stream.average_rate or stream.guessed_rate
    source_fps = float(source_rate) if source_rate else 0.0
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1_000_000)
    stream_start = stream.start_time if stream.start_time is not None else 0
    rate_ticks = max(1, _round_near(1 / (Fraction(source_rate) * time_base))) if source_rate else 1
    # The filter's offsets: the segment start in stream ticks, and the same in output ticks.
    in_offset = stream_start + _round_near(_seconds(start) / time_base)
    out_offset = _round_near(in_offset * time_base * rate)

    def tick(pts):
      return _round_near((pts - in_offset) * time_base * rate)

    if start > _SEEK_AFTER_S and stream.time_base is not None:
      # Lands on the keyframe at or before the target; frames before `start` are decoded and
      # only kept as candidates for the first output frame.
      container.seek(stream_start + int((start - 1.0) / time_base), stream=stream,
                     backward=True)

    frames: list[bytes] = []
    prev, prev_jpeg, prev_pts = None, None, None
    k, index = 0, 0

    def emit():
      nonlocal prev_jpeg
      if prev_jpeg is None:
        rgb = prev.reformat(width=width, height=height, format="rgb24",
                            interpolation=interpolation).to_ndarray()
        prev_jpeg = rgb if jpeg_quality is None else encode_jpeg(rgb, jpeg_quality)
      frames.append(prev_jpeg)

    try:
      for frame in container.decode(stream):
        # A frame without a timestamp follows the previous one by a period of the stream.
        pts = frame.pts if frame.pts is not None else (
            stream_start if prev_pts is None else prev_pts + rate_ticks)
        index += 1
        if prev is not None:
          # The filter outputs the buffered frame until the next one's rounded time comes.
          next_tick = tick(pts)
          while k < next_tick and k < max_frames:
            emit()
            k += 1
        if k >= max_frames:
          break
        duration = _frame_duration(frame, pts, prev_pts, rate_ticks)
        prev, prev_jpeg, prev_pts = frame, None, pts
    except MediaError:
      raise
    except Exception as e:
      raise MediaError(path, UNREADABLE, f"video decoding failed after {index} frames: {e}") from e

    if prev is None:
      raise MediaError(path, NO_VIDEO, "video stream has no decodable frame")
    if k < max_frames:
      # The stream ends where its last frame does, rounded to the output rate (the filter's
      # end of stream, in absolute output ticks).
      media_end = prev_pts + duration
      _check_not_truncated(path, "video", float((media_end - stream_start) * time_base),
                           _declared_duration(stream), start,
                           None if end is None else float(end))
      end_frames = _round_near(media_end * time_base * rate) - out_offset
      while k < min(max_frames, end_frames):
        emit()
        k += 1
    if not frames:
      raise MediaError(path, EMPTY, f"no video frame in the segment [{start:.2f}, {end}] s")
    return VideoClip(frames=frames, fps=float(fps), height=height, width=width,
                     duration=len(frames) / fps, source_fps=source_fps)
  finally:
    container.close()


def decode_audio(path: str, *, sample_rate: int, start: Optional[float] = None,
                 end: Optional[float] = None) -> np.ndarray:
  """Decodes the first audio stream to a mono float32 waveform at `sample_rate`.

  Channels are averaged (as librosa.load(mono=True) does); resampling uses librosa's default
  resampler (soxr 'high quality'), so a wav read here equals librosa.load(path, sr=sample_rate).

  Args:
    path: a wav file or a video with an audio track.
    sample_rate: output rate in Hz.
    start, end: the segment in seconds (relative to the stream's first sample), or None.

  Returns:
    float32 [num_samples].

  Raises:
    MediaError: missing, empty, unreadable or truncated file, no audio stream, no samples in
      the segment.
  """
  import librosa  # imported here: loading it costs ~1 s and only audio decoding needs it

  container = _open(path)
  try:
    if not container.streams.audio:
      raise MediaError(path, NO_AUDIO, "no audio stream")
    stream = container.streams.audio[0]
    # Planar float keeps the channels apart, whatever the source sample format.
    resampler = av.AudioResampler(format="fltp")
    chunks, native_rate = [], stream.rate
    try:
      for frame in container.decode(stream):
        native_rate = frame.sample_rate or native_rate
        for out in resampler.resample(frame):
          chunks.append(out.to_ndarray())
      for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    except Exception as e:
      raise MediaError(path, UNREADABLE, f"audio decoding failed: {e}") from e
    declared = _declared_duration(stream)
  finally:
    container.close()

  if not chunks or sum(c.shape[-1] for c in chunks) == 0:
    raise MediaError(path, EMPTY, "audio stream has no samples")
  wave = np.concatenate(chunks, axis=-1).astype(np.float32)
  wave = wave.mean(axis=0) if wave.ndim == 2 else wave
  seg_start = 0.0 if start is None else float(start)
  _check_not_truncated(path, "audio", len(wave) / native_rate, declared, seg_start, end)
  first = int(round(seg_start * native_rate))
  last = len(wave) if end is None else min(len(wave), int(round(float(end) * native_rate)))
  wave = wave[first:last]
  if wave.size == 0:
    raise MediaError(path, EMPTY, f"no audio samples in the segment [{seg_start:.2f}, {end}] s")
  if native_rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=native_rate, target_sr=sample_rate)
  return np.ascontiguousarray(wave, dtype=np.float32)
