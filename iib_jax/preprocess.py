"""Preprocessing ops for one example: small named `dict -> dict` functions (imports TensorFlow).

Every op is built by a factory and called as `op(example, seed)`, where `example` is a dict of
tensors and `seed` an int32 [2] stateless seed for that example; deterministic ops ignore the
seed, random ops fold their own name into it (so their draws are independent of each other and
of the order of the ops). The same (seed, example) gives the same output in eager mode and
inside tf.data.

Example keys between ops: 'clip_id' (string), 'label' (int), 'video' (JPEG strings [N], then
[T] after `sample_frames`, then uint8 / float32 [T, H, W, 3] after `decode_frames`) and 'audio'
(float32 [time, bins]).

Ops can be composed from a string, e.g.
`parse_ops("sample_frames(3, train=True)|decode_frames|random_resized_crop(224)|flip_left_right")`.
"""
from __future__ import annotations

import ast
import zlib
from typing import Callable, Optional, Sequence

import tensorflow as tf

from iib_jax import schema

Example = dict
Op = Callable[[Example, tf.Tensor], Example]

# Ops that only select (frames, an audio window) and shrink an example; the pipeline runs them
# before its shuffle buffer, which then holds a few JPEGs instead of a whole clip.
SELECT = "select"
TRANSFORM = "transform"


def _named(name: str, stage: str = TRANSFORM):
  def wrap(fn):
    fn.op_name, fn.stage = name, stage
    return fn
  return wrap


def _op_seed(seed: tf.Tensor, name: str, index: int = 0) -> tf.Tensor:
  salt = zlib.crc32(f"{name}:{index}".encode()) & 0x7FFFFFFF
  return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)


# ---------------------------------------------------------------------------------------------
# Parsing.


def parse_features(modalities: Sequence[str] = ("video", "audio")) -> dict:
  """tf.io parsing spec for the schema's features of the given stored modalities."""
  spec = {
      schema.CLIP_ID: tf.io.FixedLenFeature([], tf.string),
      schema.LABEL: tf.io.FixedLenFeature([], tf.int64),
  }
  if "video" in modalities:
    spec[schema.VIDEO_FRAMES] = tf.io.RaggedFeature(tf.string)
  if "audio" in modalities:
    spec[schema.AUDIO_VALUE] = tf.io.FixedLenFeature([], tf.string)
    spec[schema.AUDIO_SHAPE] = tf.io.FixedLenFeature([2], tf.int64)
  return spec


def parse(serialized: tf.Tensor, modalities: Sequence[str] = ("video", "audio"),
          audio_bins: Optional[int] = None) -> Example:
  """One serialized tf.train.Example -> {'clip_id', 'label', 'video'?, 'audio'?}.

  Args:
    serialized: scalar string.
    modalities: the stored modalities to decode ('video', 'audio').
    audio_bins: the feature width, to give 'audio' a static last dimension.

  Returns:
    'clip_id' string, 'label' int32, 'video' string [num_frames] (JPEG), 'audio' float32
    [time, bins].
  """
  raw = tf.io.parse_single_example(serialized, parse_features(modalities))
  out = {"clip_id": raw[schema.CLIP_ID], "label": tf.cast(raw[schema.LABEL], tf.int32)}
  if "video" in modalities:
    out["video"] = raw[schema.VIDEO_FRAMES]
  if "audio" in modalities:
    values = tf.io.decode_raw(raw[schema.AUDIO_VALUE], tf.float32, little_endian=True)
    audio = tf.reshape(values, tf.cast(raw[schema.AUDIO_SHAPE], tf.int32))
    if audio_bins is not None:
      audio = tf.ensure_shape(audio, [None, audio_bins])
    out["audio"] = audio
  return out


# ---------------------------------------------------------------------------------------------
# Video.


def segment_indices(num_available: tf.Tensor, num_frames: int, train: bool,
                    seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Segment sampling: the clip is cut into `num_frames` equal segments; one frame per segment.

  Training takes a uniformly random frame within each segment, evaluation its centre (as
  BalanceMM's loaders). With fewer frames than segments, frames repeat.

  Args:
    num_available: scalar int, the clip's frame count N.
    num_frames: T.
    train: random (True) or centre (False) positions.
    seed: int [2], for training.

  Returns:
    int32 [T] indices in [0, N).
  """
  n = tf.cast(num_available, tf.int32)
  i = tf.range(num_frames, dtype=tf.int32)
  starts = (i * n) // num_frames
  ends = ((i + 1) * n) // num_frames
  lengths = tf.maximum(ends - starts, 1)
  if train:
    u = tf.random.stateless_uniform([num_frames], seed=seed)
    offsets = tf.minimum(tf.cast(tf.floor(u * tf.cast(lengths, tf.float32)), tf.int32),
                         lengths - 1)
  else:
    offsets = lengths // 2
  return tf.minimum(starts + offsets, n - 1)


def sample_frames(num_frames: int = 3, train: bool = False) -> Op:
  """Keeps `num_frames` of the clip's JPEG frames by segment sampling ('video': [N] -> [T])."""

  @_named("sample_frames", SELECT)
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = ex["video"]
    idx = segment_indices(tf.shape(frames)[0], num_frames, train,
                          _op_seed(seed, "sample_frames") if train else None)
    return {**ex, "video": tf.gather(frames, idx)}
  return op


def decode_frames(height: Optional[int] = None, width: Optional[int] = None) -> Op:
  """JPEG strings [T] -> uint8 [T, H, W, 3] (H, W: the stored size, set statically if given)."""

  @_named("decode_frames")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = tf.map_fn(
        lambda b: tf.io.decode_jpeg(b, channels=3, dct_method="INTEGER_ACCURATE"),
        ex["video"], fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
    return {**ex, "video": frames}
  return op


def _antialias(size: int, shape: tf.TensorShape) -> bool:
  # Antialiasing only changes a downscale, and costs about half the pipeline's time on an
  # upscale (a crop of a stored frame resized back to the stored size is always one).
  dims = [d for d in shape[-3:-1] if d is not None]
  return len(dims) < 2 or size < max(dims)


def _sample_box(shape: tf.Tensor, scale, ratio, seed) -> tuple[tf.Tensor, tf.Tensor]:
  """RandomResizedCrop's box in an image of `shape` [H, W, C]: (begin [3], size [3])."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, crop_size


def _resize(images: tf.Tensor, size: int, stored_shape: tf.TensorShape) -> tf.Tensor:
  return tf.image.resize(images, [size, size], method="bilinear",
                         antialias=_antialias(size, stored_shape))


def _random_resized_crop_op(name: str, size: int, scale, ratio, per_frame: bool, shape_of,
                            window, stored_shape) -> Op:
  """The RandomResizedCrop op over frames read through `shape_of(frame)` ([H, W, C]) and
  `window(frame, begin, crop_size, shape)` (the box's pixels); `stored_shape(frames)` decides
  antialiasing. The boxes are drawn from the seeds of 'random_resized_crop' whatever `name`."""

  @_named(name)
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = ex["video"]
    num_frames = frames.shape[0]
    shapes = [shape_of(frames[t]) for t in range(num_frames if per_frame else 1)]
    boxes = [_sample_box(shape, scale, ratio,
                         _op_seed(seed, "random_resized_crop", t) if per_frame
                         else _op_seed(seed, "random_resized_crop"))
             for t, shape in enumerate(shapes)]
    crops = [window(frames[t], *boxes[t if per_frame else 0], shapes[t if per_frame else 0])
             for t in range(num_frames)]
    if per_frame:   # boxes of different sizes: one resize each
      video = tf.stack([_resize(crop, size, stored_shape(frames)) for crop in crops])
    else:
      video = _resize(tf.stack(crops), size, stored_shape(frames))
    return {**ex, "video": tf.ensure_shape(video, [num_frames, size, size, 3])}
  return op


def random_resized_crop(size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3), per_frame: bool = True) -> Op:
  """torchvision's RandomResizedCrop: a random box of `scale` of the area and `ratio` aspect
  (width / height), resized to size x size (bilinear; antialiased when the frames are larger than
  size): uint8 [T, H, W, 3] -> float32 [T, size, size, 3] in [0, 255].

  per_frame=True draws a box for each frame independently, as the reference loaders transform
  each frame separately; False uses one box for the whole clip. TensorFlow's box sampler draws
  the aspect ratio uniformly (torchvision: log-uniformly) and falls back to the whole image
  after 10 failed draws (torchvision: a centre crop).
  """
  return _random_resized_crop_op("random_resized_crop", size, scale, ratio, per_frame,
                                 shape_of=tf.shape,
                                 window=lambda frame, begin, crop_size, shape: tf.slice(
                                     frame, begin, crop_size),
                                 stored_shape=lambda frames: frames.shape[1:])


_BOX_MARGIN = 2


def _decode_window(jpeg: tf.Tensor, begin: tf.Tensor, crop_size: tf.Tensor,
                   shape: Optional[tf.Tensor] = None) -> tf.Tensor:
  """The pixels [begin : begin + crop_size] (3-vectors, as from `_sample_box`) of a JPEG, the
  same as a full decode's, decoding only that window and a margin around it. `shape`: the
  JPEG's [H, W, C] if already read from its header."""
  # libjpeg's chroma upsampling reads the neighbours of a window's edge pixels: decode a
  # margin around the box and cut it off, so that the box has the pixels of a full decode.
  if shape is None:
    shape = tf.io.extract_jpeg_shape(jpeg)
  start = tf.maximum(begin[:2] - _BOX_MARGIN, 0)
  stop = tf.minimum(begin[:2] + crop_size[:2] + _BOX_MARGIN, shape[:2])
  window = tf.concat([start, stop - start], 0)
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3, dct_method="INTEGER_ACCURATE")
  return tf.slice(image, tf.concat([begin[:2] - start, [0]], 0), crop_size)


def decode_random_resized_crop(size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3), per_frame: bool = True,
                               height: Optional[int] = None, width: Optional[int] = None) -> Op:
  """`decode_frames | random_resized_crop(size, scale, ratio, per_frame)` in one op, with the
  same boxes and the same pixels, that decodes only each box of each JPEG (plus a margin of 2
  pixels, `tf.io.decode_and_crop_jpeg`): JPEG strings [T] -> float32 [T, size, size, 3] in
  [0, 255].

  height, width: the stored frame size, which decides antialiasing as in `random_resized_crop`
  (default: unknown, so antialiased).
  """
  stored = tf.TensorShape([height, width, 3])
  return _random_resized_crop_op("decode_random_resized_crop", size, scale, ratio, per_frame,
                                 shape_of=tf.io.extract_jpeg_shape, window=_decode_window,
                                 stored_shape=lambda frames: stored)


def resize(size: int = 224) -> Op:
  """Resize((size, size)) of evaluation: bilinear (antialiased when shrinking) -> float32
  [T, size, size, 3]."""

  @_named("resize")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = ex["video"]
    if frames.shape[1] == size and frames.shape[2] == size:
      return {**ex, "video": tf.cast(frames, tf.float32)}  # already that size: exact
    return {**ex, "video": tf.image.resize(frames, [size, size], method="bilinear",
                                           antialias=_antialias(size, frames.shape))}
  return op


def flip_left_right(per_frame: bool = True) -> Op:
  """Horizontal flip with probability 1/2 (per frame, or once per clip)."""

  @_named("flip_left_right")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = ex["video"]
    n = frames.shape[0] if per_frame else 1
    flip = tf.random.stateless_uniform([n], seed=_op_seed(seed, "flip_left_right")) < 0.5
    # A branch per frame: a quarter of the time of a broadcast tf.where over every pixel.
    if per_frame:
      video = tf.stack([tf.cond(flip[t], lambda t=t: tf.reverse(frames[t], axis=[1]),
                                lambda t=t: frames[t]) for t in range(n)])
    else:
      video = tf.cond(flip[0], lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    return {**ex, "video": video}
  return op


def normalize_frames(mean: Sequence[float] = schema.IMAGENET_MEAN,
                     std: Sequence[float] = schema.IMAGENET_STD) -> Op:
  """[0, 255] -> (x / 255 - mean) / std, float32 (ImageNet statistics by default)."""

  @_named("normalize_frames")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    x = tf.cast(ex["video"], tf.float32) / 255.0
    return {**ex, "video": (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)}
  return op


def quantize_frames() -> Op:
  """float32 frames in [0, 255] -> uint8 (rounded), for normalisation on the device
  (`iib_jax.models` normalises uint8 frames with the ImageNet statistics); uint8 frames pass
  unchanged. A quarter of the bytes of float32 frames to move and to hold in the buffers."""

  @_named("quantize_frames")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    frames = ex["video"]
    if frames.dtype == tf.uint8:
      return ex
    return {**ex, "video": tf.cast(tf.clip_by_value(tf.round(frames), 0.0, 255.0), tf.uint8)}
  return op


# ---------------------------------------------------------------------------------------------
# Audio.


def crop_audio(frames: int, random: bool = False, pad: str = "zeros",
               position: str = "start") -> Op:
  """Crops or pads 'audio' [time, bins] to [frames, bins].

  Args:
    frames: the output length.
    random: crop at a uniformly random offset (training); otherwise at `position`.
    pad: 'zeros' (append zero rows) or 'tile' (repeat the clip from its start).
    position: 'start' or 'center', the window of a deterministic crop.
  """
  if pad not in ("zeros", "tile"):
    raise ValueError(f"audio pad must be 'zeros' or 'tile', got {pad!r}")
  if position not in ("start", "center"):
    raise ValueError(f"audio crop position must be 'start' or 'center', got {position!r}")

  @_named("crop_audio", SELECT)
  def op(ex: Example, seed: tf.Tensor) -> Example:
    audio = ex["audio"]
    bins = audio.shape[-1]
    time = tf.shape(audio)[0]
    if pad == "tile":
      reps = tf.maximum(1, (frames + time - 1) // tf.maximum(time, 1))
      audio = tf.tile(audio, [reps, 1])
    else:
      audio = tf.pad(audio, [[0, tf.maximum(frames - time, 0)], [0, 0]])
    excess = tf.maximum(tf.shape(audio)[0] - frames, 0)
    if random:
      offset = tf.random.stateless_uniform([], seed=_op_seed(seed, "crop_audio"),
                                           maxval=excess + 1, dtype=tf.int32)
    elif position == "center":
      offset = excess // 2
    else:
      offset = tf.constant(0, tf.int32)
    # Tiled audio has excess only from the tiling: its window starts at the clip's start.
    if pad == "tile" and not random:
      offset = tf.where(time >= frames, offset, 0)
    return {**ex, "audio": tf.ensure_shape(audio[offset:offset + frames], [frames, bins])}
  return op


def normalize_audio(mean: float = 0.0, std: float = 1.0) -> Op:
  """(audio - mean) / std. The KS Kaldi-fbank constants: mean -4.503877, std 2 * 5.141276."""

  @_named("normalize_audio")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    return {**ex, "audio": (ex["audio"] - mean) / std}
  return op


# ---------------------------------------------------------------------------------------------
# Composition.

OPS: dict[str, Callable[..., Op]] = {
    "sample_frames": sample_frames,
    "decode_frames": decode_frames,
    "random_resized_crop": random_resized_crop,
    "decode_random_resized_crop": decode_random_resized_crop,
    "resize": resize,
    "flip_left_right": flip_left_right,
    "normalize_frames": normalize_frames,
    "quantize_frames": quantize_frames,
    "crop_audio": crop_audio,
    "normalize_audio": normalize_audio,
}


def _parse_call(text: str) -> tuple[str, tuple, dict]:
  node = ast.parse(text.strip(), mode="eval").body
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"cannot parse preprocessing op {text!r}; expected name or name(args)")
  args = tuple(ast.literal_eval(a) for a in node.args)
  kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  return node.func.id, args, kwargs


def parse_ops(spec: str) -> list[Op]:
  """Ops from a string such as 'sample_frames(3)|decode_frames|resize(224)'.

  Raises:
    ValueError: naming an unknown op (and listing the known ones) or an unparsable argument.
  """
  ops = []
  for part in spec.split("|"):
    if not part.strip():
      continue
    name, args, kwargs = _parse_call(part)
    if name not in OPS:
      raise ValueError(f"unknown preprocessing op {name!r}; known ops: {sorted(OPS)}")
    ops.append(OPS[name](*args, **kwargs))
  return ops


def apply(ops: Sequence[Op], ex: Example, seed: tf.Tensor) -> Example:
  for op in ops:
    ex = op(ex, seed)
  return ex
