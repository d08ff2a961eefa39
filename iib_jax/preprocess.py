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

Train-time damage ops (`drop_modalities`, `noise`, `occlude`) act on the batch keys after all
the others and come from their own string, `parse_damage("drop_modalities(audio=0.3)|...")`;
`apply_damage` runs them and marks the removed modalities in 'present' (see that section).
"""
from __future__ import annotations

import ast
import zlib
from typing import Callable, Mapping, Optional, Sequence, Union


from iib_jax import quiet, schema

tf = quiet.import_tensorflow()

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
# Train-time modality damage.
#
# These ops act on the batch keys (after `make_dataset` maps stored modalities to batch keys, and
# after every other op, so on each modality's final layout and dtype: the model input). Between
# damage ops an example carries 'present', a dict {batch key: float32 scalar} (1 = kept);
# `apply_damage` adds it and turns it into float32 [M] in the pipeline's modality order.
#
# "Zero" is the zero of the model input, the input `experiments/evaluate.py::corrupt` gives a
# removed modality: exact 0.0 for float32 inputs (ImageNet-normalised frames, audio features).
# uint8 frames are normalised on the device, where 0.0 is the grey 255 · ImageNet mean, which
# uint8 cannot hold: they get the nearest grey (124, 116, 104), within 0.0082 of 0.0 once
# normalised (less than the uint8 pipeline's half grey level, 0.0088); the model multiplies its
# normalised input by 'present' (`iib_jax.models.multimodal.Branch`), so a dropped modality is
# exactly 0.0 on the device (occluded uint8 pixels stay the nearest grey).

DROP = "drop"   # stage of drop_modalities: `apply_damage` runs it after every other damage op

_UINT8_ZERO = tuple(int(round(255 * m)) for m in schema.IMAGENET_MEAN)


def _check_rgb(x: tf.Tensor) -> None:
  if x.shape[-1] != 3:   # the device normalises any uint8 input as ImageNet RGB frames
    raise ValueError(f"uint8 inputs are taken for RGB frames [..., 3]; got shape {x.shape}")


def _zero_of(x: tf.Tensor) -> tf.Tensor:
  """The model input's zero in x's dtype: 0.0, or for uint8 frames the grey nearest the mean."""
  if x.dtype != tf.uint8:
    return tf.zeros_like(x)
  _check_rgb(x)
  return tf.broadcast_to(tf.constant(_UINT8_ZERO, tf.uint8), tf.shape(x))


def _check_probability(name: str, value) -> float:
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
  return value


def _check_range(op: str, low, high, upper: Optional[float] = None) -> tuple[float, float]:
  low, high = float(low), float(high)
  if not 0.0 <= low <= high or (upper is not None and high > upper):
    bound = f" <= {upper}" if upper is not None else ""
    raise ValueError(f"{op}: need 0 <= min <= max{bound}, got min={low}, max={high}")
  return low, high


def _uniform(seed: tf.Tensor, name: str, index: int) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=_op_seed(seed, name, index))


def _present(ex: Example, op: str) -> dict:
  if not isinstance(ex.get("present"), dict):
    raise ValueError(f"{op} needs the example's 'present' dict {{batch key: 1.0}}: run the "
                     f"damage ops through `apply_damage` (as `make_dataset` does)")
  return ex["present"]


def _check_key(ex: Example, key: str, op: str) -> None:
  modalities = sorted(_present(ex, op))
  if key not in modalities:
    raise ValueError(f"{op}: unknown modality {key!r}; the pipeline's modalities: {modalities}")


def drop_modalities(probs=None, keep_one: bool = True, **by_key: float) -> Op:
  """Removes modalities at random: each batch key `m` independently with probability p_m, its
  input set to the model input's zero (see above) and marked 0 in 'present'.

  Draws are keyed by the modality's name, so a modality's draws do not depend on M or on the
  other probabilities. `apply_damage` runs this op last, so a dropped input is exactly its zero
  whatever other damage the spec lists.

  Args:
    probs: one probability for every modality, or a dict {batch key: p}.
    keep_one: never remove every modality of an example: when all M are drawn, one of them,
      uniformly at random, is kept. This lowers the drop rate of modality m from p_m to
      p_m − Π_k p_k / M (only when every modality has p > 0). False draws each independently.
    **by_key: batch key = p, e.g. `drop_modalities(audio=0.3, video=0.3)`; overrides `probs`.
  """
  if probs is not None and not isinstance(probs, (int, float, dict)):
    raise ValueError(f"drop_modalities: probs must be a number or a dict, got {probs!r}")
  given = dict(probs) if isinstance(probs, dict) else {}
  given.update(by_key)
  given = {k: _check_probability(f"drop_modalities: p of {k!r}", v) for k, v in given.items()}
  default = _check_probability("drop_modalities: probs", probs) if isinstance(
      probs, (int, float)) else 0.0

  @_named("drop_modalities", DROP)
  def op(ex: Example, seed: tf.Tensor) -> Example:
    present = _present(ex, "drop_modalities")
    for key in given:
      _check_key(ex, key, "drop_modalities")
    keys = sorted(present)   # the spared modality is drawn over names, not the pipeline order
    p = {k: given.get(k, default) for k in keys}
    dropped = {k: (_uniform(seed, f"drop_modalities/{k}", 0) < p[k]) if p[k] > 0
               else tf.constant(False) for k in keys}
    if keep_one and all(p[k] > 0 for k in keys):
      every = tf.reduce_all(tf.stack([dropped[k] for k in keys]))
      spared = tf.minimum(tf.cast(tf.floor(_uniform(seed, "drop_modalities/keep_one", 0)
                                           * len(keys)), tf.int32), len(keys) - 1)
      dropped = {k: dropped[k] & ~(every & tf.equal(spared, i)) for i, k in enumerate(keys)}
    out, marks = dict(ex), dict(present)
    for k in keys:
      if p[k] > 0:
        out[k] = tf.cond(dropped[k], lambda x=ex[k]: _zero_of(x), lambda x=ex[k]: x)
        marks[k] = present[k] * (1.0 - tf.cast(dropped[k], tf.float32))
    out["present"] = marks
    return out

  op.keys = tuple(given)
  return op


def noise(key: str, max: float = 1.0, p: float = 1.0, min: float = 0.0,
          scale: float = 1.0) -> Op:
  """Gaussian noise on one modality with probability p, of a random strength per example:
  x + s · scale · N(0, 1) elementwise, s uniform in [min, max].

  The std `s · scale` is in units of the model input, as `experiments/evaluate.py::corrupt`'s
  noise level is in units of its `scale`: normalised frames and audio normalised with 'dataset'
  statistics have a std near 1, so scale=1 makes max the noise-to-signal ratio; for other
  audio normalisations pass the input's std as `scale`. uint8 frames get the noise the device
  would see after its normalisation (per channel, 255 · ImageNet std grey levels per unit),
  rounded and clipped to [0, 255] (saturating near black and white).

  Args:
    key: the batch key.
    max, min: the range of the strength s.
    p: probability that an example is noised.
    scale: the unit of s.
  """
  low, high = _check_range("noise", min, max)
  p = _check_probability("noise: p", p)
  scale = float(scale)
  name = f"noise/{key}"

  @_named("noise")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    _check_key(ex, key, "noise")
    x = ex[key]
    applied = _uniform(seed, name, 0) < p
    std = (low + (high - low) * _uniform(seed, name, 1)) * scale

    def noisy():
      z = tf.random.stateless_normal(tf.shape(x), seed=_op_seed(seed, name, 2))
      if x.dtype == tf.uint8:
        _check_rgb(x)
        grey = z * std * 255.0 * tf.constant(schema.IMAGENET_STD, tf.float32)
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float32) + grey), 0.0, 255.0),
                       tf.uint8)
      return x + tf.cast(std * z, x.dtype)

    return {**ex, key: tf.cond(applied, noisy, lambda: x)}

  op.keys = (key,)
  return op


def occlude(key: str = "video", max: float = 0.5, p: float = 1.0, min: float = 0.0) -> Op:
  """With probability p, one square of a clip's frames [T, H, W, 3] set to the model input's
  zero (see above), the same square on every frame, as `experiments/evaluate.py::corrupt`: side
  round(f · min(H, W)) with f uniform in [min, max], top-left corner uniform over the places it
  fits.

  Args:
    key: the batch key of frames.
    max, min: the range of the side, as a fraction of the frame's shorter side.
    p: probability that an example is occluded.
  """
  low, high = _check_range("occlude", min, max, upper=1.0)
  p = _check_probability("occlude: p", p)
  name = f"occlude/{key}"

  @_named("occlude")
  def op(ex: Example, seed: tf.Tensor) -> Example:
    _check_key(ex, key, "occlude")
    x = ex[key]
    if x.shape.rank != 4:
      raise ValueError(f"occlude: {key!r} must be frames [T, H, W, C], got shape {x.shape}")
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    applied = _uniform(seed, name, 0) < p
    side = tf.round((low + (high - low) * _uniform(seed, name, 1)) * tf.minimum(h, w))
    top = tf.floor(_uniform(seed, name, 2) * (h - side + 1.0))
    left = tf.floor(_uniform(seed, name, 3) * (w - side + 1.0))
    rows = tf.range(h)
    cols = tf.range(w)
    square = (((rows >= top) & (rows < top + side))[:, None]
              & ((cols >= left) & (cols < left + side))[None, :])                   # [H, W]
    occluded = lambda: tf.where(square[None, :, :, None], _zero_of(x), x)
    return {**ex, key: tf.cond(applied, occluded, lambda: x)}

  op.keys = (key,)
  return op


def apply_damage(ops: Sequence[Op], ex: Example, seed: tf.Tensor,
                 modalities: Sequence[str]) -> Example:
  """Runs damage ops on an example keyed by batch keys: the drop op last, the others in order.

  Args:
    ops: from `parse_damage`.
    ex: {batch key: model input, ...}.
    seed: the example's int [2] stateless seed.
    modalities: the batch keys, in the pipeline's (the model's M axis) order.

  Returns:
    The damaged example; with a drop op, 'present' float32 [M] in `modalities` order (1 = kept,
    0 = removed). Without one, no 'present' key (every modality is present).
  """
  ops = sorted(ops, key=lambda op: op.stage == DROP)   # stable: the rest keep their order
  ex = {**ex, "present": {k: tf.constant(1.0, tf.float32) for k in modalities}}
  for op in ops:
    ex = op(ex, seed)
  ex = dict(ex)
  present = ex.pop("present")
  if any(op.stage == DROP for op in ops):
    ex["present"] = tf.stack([present[k] for k in modalities])
  return ex


DAMAGE_OPS: dict[str, Callable[..., Op]] = {
    "drop_modalities": drop_modalities,
    "noise": noise,
    "occlude": occlude,
}


def parse_damage(spec: Union[str, Sequence[Op]],
                 modalities: Optional[Sequence[str]] = None) -> list[Op]:
  """Damage ops from a string such as
  "drop_modalities(audio=0.3, video=0.3)|noise(audio, max=1.0, p=0.5)|occlude(video, max=0.5)".

  Grammar: ops separated by '|'; each `name` or `name(args)` with Python literal arguments, where
  a bare name stands for its string (`noise(audio)` = `noise('audio')`); "" is no damage.
  Ops: drop_modalities(probs=None, keep_one=True, **{key: p}), noise(key, max=1.0, p=1.0,
  min=0.0, scale=1.0), occlude(key='video', max=0.5, p=1.0, min=0.0).

  Args:
    spec: the string, or a list of damage ops (checked).
    modalities: the pipeline's batch keys, to check the keys the ops name.

  Raises:
    ValueError: an unknown op or modality, a bad argument, more than one drop_modalities, or
      the same op twice on one modality (it would repeat the same draws).
  """
  if isinstance(spec, str):
    ops = []
    for part in spec.split("|"):
      if not part.strip():
        continue
      name, args, kwargs = _parse_call(part, DAMAGE_OPS, "damage op", bare_names=True)
      try:
        ops.append(DAMAGE_OPS[name](*args, **kwargs))
      except TypeError as e:
        raise ValueError(f"damage op {part.strip()!r}: {e}") from None
  else:
    ops = list(spec)
  seen = set()
  for op in ops:
    if op.op_name not in DAMAGE_OPS:
      raise ValueError(f"{op.op_name!r} is not a damage op; damage ops: {sorted(DAMAGE_OPS)}")
    for key in getattr(op, "keys", ()):
      if modalities is not None and key not in modalities:
        raise ValueError(f"damage op {op.op_name}: unknown modality {key!r}; the pipeline's "
                         f"modalities: {list(modalities)}")
    uses = [op.op_name] if op.stage == DROP else [(op.op_name, k) for k in op.keys]
    for use in uses:
      if use in seen:
        raise ValueError(f"damage op {use if isinstance(use, str) else use[0]} is given twice"
                         + ("" if isinstance(use, str) else f" for modality {use[1]!r}"))
      seen.add(use)
  return ops


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


def _parse_call(text: str, known: Mapping[str, Callable], kind: str,
                hints: Optional[Mapping[str, str]] = None,
                bare_names: bool = False) -> tuple[str, tuple, dict]:
  """'name(args)' -> (name, args, kwargs), the name one of `known` (else an error, with
  `hints[name]` if any); with bare_names, a bare name argument stands for its string."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    raise ValueError(f"cannot parse {kind} {text.strip()!r}; expected name or name(args)"
                     ) from None
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
  elif isinstance(node, ast.Name):
    name = node.id
  else:
    raise ValueError(f"cannot parse {kind} {text!r}; expected name or name(args)")
  if name not in known:
    hint = f" ({hints[name]})" if hints and name in hints else ""
    raise ValueError(f"unknown {kind} {name!r}{hint}; known: {sorted(known)}")
  if isinstance(node, ast.Name):
    return name, (), {}

  def value(a):
    if bare_names and isinstance(a, ast.Name):
      return a.id
    try:
      return ast.literal_eval(a)
    except ValueError:
      raise ValueError(f"{kind} {text.strip()!r}: argument {ast.unparse(a)!r} is not a literal"
                       ) from None

  return name, tuple(value(a) for a in node.args), {k.arg: value(k.value) for k in node.keywords}


def parse_ops(spec: str) -> list[Op]:
  """Ops from a string such as 'sample_frames(3)|decode_frames|resize(224)'.

  Raises:
    ValueError: naming an unknown op (and listing the known ones) or an unparsable argument.
  """
  ops = []
  for part in spec.split("|"):
    if not part.strip():
      continue
    name, args, kwargs = _parse_call(part, OPS, "preprocessing op", hints={
        name: "a damage op: pass it in `damage`" for name in DAMAGE_OPS})
    ops.append(OPS[name](*args, **kwargs))
  return ops


def apply(ops: Sequence[Op], ex: Example, seed: tf.Tensor) -> Example:
  for op in ops:
    ex = op(ex, seed)
  return ex
