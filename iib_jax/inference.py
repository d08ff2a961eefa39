"""Trained runs for inference: load a run directory (or an export), preprocess, predict.

  from iib_jax import inference
  trained = inference.load("runs/synthetic_iibalance_seed0")   # its best checkpoint
  batch = trained.batch([example, ...])      # stored-form examples -> model inputs (eval ops)
  out = trained.predict(batch)               # probs [N, C], unimodal_probs [N, M, C], weights ...
  trained.export("exported/synthetic")       # params, statistics, config, classes, preprocessing

`load` reads what the run recorded: its `config.json` (a compare run `<run>/compare/<method>`
uses its parent's), the method from `results.json` (else `config.method`), the budgets from the
nearest `iib/budgets.json`, the dataset's `metadata.json` (classes, the recorded audio and video
parameters, the training split's audio statistics) and the arrays of the best (or latest)
checkpoint, restored into a template made with `jax.eval_shape` from the recorded input shapes.
It needs no TensorFlow and no access to the TFRecords; an export needs the dataset not at all.

A stored-form example is what preparation stores for a clip, decoded: 'video' uint8
[N, H, W, 3] (every frame, at the recorded fps and size), 'audio' float32 [time, bins] (the
recorded features, unnormalised); `data_prep.examples.clip_example` makes one from a media file.
`Preprocessing` applies the input pipeline's evaluation ops to it in numpy (centre frame of each
segment, resize, ImageNet normalisation or uint8 frames, audio crop / pad, audio normalisation),
equal to `iib_jax.data`'s (tests/test_predict.py: audio and frames at the stored size exactly;
resized float32 frames within 1e-5, resized uint8 frames within one grey level where float
rounding lands on the other side of a half).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from iib_jax import build as lib_build, checkpoint, methods, schema, sharding, train
from iib_jax import state as state_lib
from iib_jax.models.encoders import ENCODER_INPUT
from iib_jax.state import TrainState

# Files of an export (`Trained.export`); its checkpoint is `checkpoints/best` as in a run.
EXPORT_FILE = "export.json"
DATASET_FILE = "dataset.json"
BUDGETS_FILE = "budgets.json"
# What prediction needs of a dataset's metadata.json (no shard list, no paths to the records).
DATASET_KEYS = ("name", "format", "num_classes", "class_names", "splits", "audio", "video",
                "dims", "source")
EXPORT_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# What a run directory records


def run_config(workdir: str):
  """The config a run directory was trained with (an `ml_collections.ConfigDict`): its
  config.json, or its parent's (a compare run `<workdir>/compare/<method>` uses its parent's)."""
  import ml_collections
  directory = os.path.abspath(workdir)
  for _ in range(3):
    path = os.path.join(directory, "config.json")
    if os.path.exists(path):
      with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
    directory = os.path.dirname(directory)
  raise FileNotFoundError(f"no config.json in {workdir} or its parents: is it a run directory?")


def find_unimodal_dir(workdir: str) -> str:
  """The directory whose `iib/` holds the unimodal phase a run used.

  The phase lives in the run's workdir (`python -m experiments.<dataset>`), its parent (a sweep's
  `<root>/seed<s>/<variant>`), grandparent (`<workdir>/compare/<method>`) or, for an earlier stage
  of a multi-stage run (`<run>/stages/<stage>`), two levels above that run.
  """
  directory = os.path.abspath(workdir)
  for _ in range(5):
    if os.path.exists(os.path.join(directory, "iib", "budgets.json")):
      return directory
    directory = os.path.dirname(directory)
  raise FileNotFoundError(f"no unimodal phase (iib/budgets.json) in {workdir} or its parents")


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _maybe_json(path: str) -> Any:
  return _read_json(path) if os.path.exists(path) else None


def is_export(directory: str) -> bool:
  """Whether `directory` is an export (`Trained.export`) rather than a run directory."""
  return os.path.exists(os.path.join(directory, EXPORT_FILE))


def dataset_info(info: Mapping[str, Any]) -> dict[str, Any]:
  """The part of a dataset's metadata that prediction reads (`DATASET_KEYS`)."""
  return {k: info[k] for k in DATASET_KEYS if k in info}


def read_dataset_info(data_dir: str) -> dict[str, Any]:
  """`dataset_info` of a prepared dataset's metadata.json (TFRecords, or `iib_jax.arrays`)."""
  path = os.path.join(data_dir, schema.METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: the run's dataset is not at {data_dir} (pass "
                            f"the prepared dataset's directory as data_dir, or load an export)")
  return dataset_info(_read_json(path))


# ----------------------------------------------------------------------------------------------
# The evaluation preprocessing, in numpy (the ops of `iib_jax.preprocess` with train=False)


def center_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
  """int32 [T]: the centre frame of each of T equal segments of N frames (evaluation's
  `preprocess.segment_indices(train=False)`; with fewer frames than segments, frames repeat)."""
  n = int(num_available)
  i = np.arange(num_frames, dtype=np.int64)
  starts = (i * n) // num_frames
  lengths = np.maximum(((i + 1) * n) // num_frames - starts, 1)
  return np.minimum(starts + lengths // 2, n - 1).astype(np.int32)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 [T, size, size, 3] in [0, 255]: evaluation's `resize`
  (bilinear, half-pixel centres, antialiased when shrinking; a cast when already that size)."""
  frames = np.asarray(frames)
  height, width = frames.shape[1], frames.shape[2]
  if height == size and width == size:
    return frames.astype(np.float32)
  shape = (frames.shape[0], size, size, frames.shape[3])
  # TensorFlow's antialiased resize is a triangle-kernel scale_and_translate, as jax's.
  resized = jax.image.resize(frames.astype(np.float32), shape, method="linear",
                             antialias=size < max(height, width))
  return np.asarray(resized, np.float32)


def normalize_frames(frames: np.ndarray) -> np.ndarray:
  """[0, 255] -> (x / 255 - mean) / std, float32, with the ImageNet statistics."""
  x = np.asarray(frames).astype(np.float32) / np.float32(255.0)
  return ((x - np.asarray(schema.IMAGENET_MEAN, np.float32))
          / np.asarray(schema.IMAGENET_STD, np.float32))


def quantize_frames(frames: np.ndarray) -> np.ndarray:
  """float32 [0, 255] -> uint8, rounded half to even (as `tf.round`); uint8 passes."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  return np.clip(np.round(frames), 0.0, 255.0).astype(np.uint8)


def crop_audio(audio: np.ndarray, frames: int, pad: str = "zeros",
               position: str = "start") -> np.ndarray:
  """[time, bins] -> [frames, bins]: evaluation's `crop_audio` (no random crop).

  Args:
    audio: float32 [time, bins].
    frames: the output length.
    pad: 'zeros' (append zero rows) or 'tile' (repeat the clip from its start).
    position: 'start' or 'center', the window of a longer clip.
  """
  if pad not in ("zeros", "tile"):
    raise ValueError(f"audio pad must be 'zeros' or 'tile', got {pad!r}")
  if position not in ("start", "center"):
    raise ValueError(f"audio crop position must be 'start' or 'center', got {position!r}")
  audio = np.asarray(audio, np.float32)
  time = audio.shape[0]
  if pad == "tile":
    reps = max(1, -(-frames // max(time, 1)))
    padded = np.tile(audio, (reps, 1))
  else:
    padded = np.concatenate([audio, np.zeros((max(frames - time, 0), audio.shape[1]),
                                             np.float32)])
  excess = max(padded.shape[0] - frames, 0)
  offset = excess // 2 if position == "center" else 0
  if pad == "tile" and time < frames:   # tiled audio starts at the clip's start
    offset = 0
  return padded[offset:offset + frames]


audio_normalization = schema.audio_normalization


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The input pipeline's evaluation ops for one run, in numpy.

  Attributes:
    modalities: batch keys, in M-axis order.
    stored: batch key -> the stored modality it reads ('video', 'audio', or 'vector' for a
      feature vector of an `iib_jax.arrays` dataset, which passes unchanged).
    num_frames: T.
    image_size: output frame size S.
    frames_dtype: 'float32' (ImageNet-normalised) or 'uint8' (normalised on the device).
    audio_frames: audio length L.
    audio_pad, audio_position: `crop_audio`'s.
    audio_norm: (mean, std) or None.
    bins: the audio feature width.
    dims: batch key -> D of the vector modalities.
  """
  modalities: tuple[str, ...]
  stored: Mapping[str, str]
  num_frames: int
  image_size: int
  frames_dtype: str
  audio_frames: int
  audio_pad: str
  audio_position: str
  audio_norm: tuple[float, float] | None
  bins: int
  dims: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_config(cls, config, info: Mapping[str, Any]) -> "Preprocessing":
    """The evaluation ops `experiments.build.Data` gives `iib_jax.data.make_dataset`."""
    c = config.data
    modalities = tuple(config.modalities)
    stored = {}
    for m in modalities:
      kind = ENCODER_INPUT[config.model.encoders[m]]
      stored[m] = m if m in schema.MODALITY_FEATURES and kind != "vector" else kind
    video, audio = info.get("video") or {}, info.get("audio") or {}
    return cls(modalities=modalities, stored=stored, num_frames=int(c.num_frames),
               image_size=int(c.image_size or video.get("height", 0)),
               frames_dtype=str(c.get("frames_dtype", "float32")),
               audio_frames=int(c.audio_frames or audio.get("default_frames", 0)),
               audio_pad=str(c.get("audio_pad", "zeros")),
               audio_position=str(c.get("audio_position", "start")),
               audio_norm=audio_normalization(info, c.audio_norm) if audio else None,
               bins=int(audio.get("bins", 0)),
               dims={m: int(info["dims"][m]) for m in modalities if stored[m] == "vector"})

  def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """batch key -> (shape of one example, dtype) of the model inputs."""
    specs = {}
    for m in self.modalities:
      if self.stored[m] == "video":
        dtype = np.dtype(np.uint8 if self.frames_dtype == "uint8" else np.float32)
        specs[m] = ((self.num_frames, self.image_size, self.image_size, 3), dtype)
      elif self.stored[m] == "vector":
        specs[m] = ((self.dims[m],), np.dtype(np.float32))
      else:
        specs[m] = ((self.audio_frames, self.bins), np.dtype(np.float32))
    return specs

  def video(self, frames: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [T, S, S, 3] model input."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
      raise ValueError(f"video must be uint8 frames [N, H, W, 3] with N >= 1, got "
                       f"{frames.dtype} {frames.shape}")
    frames = frames[center_frame_indices(len(frames), self.num_frames)]
    same_size = frames.shape[1] == frames.shape[2] == self.image_size
    if self.frames_dtype == "uint8":
      return frames if same_size else quantize_frames(resize_frames(frames, self.image_size))
    return normalize_frames(resize_frames(frames, self.image_size))

  def audio(self, features: np.ndarray) -> np.ndarray:
    """float32 [time, bins] -> [L, bins] model input."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != self.bins or not len(features):
      raise ValueError(f"audio must be float32 features [time, {self.bins}] with time >= 1, got "
                       f"{features.shape}")
    audio = crop_audio(features, self.audio_frames, self.audio_pad, self.audio_position)
    if self.audio_norm is not None:
      mean, std = self.audio_norm
      audio = (audio - np.float32(mean)) / np.float32(std)
    return audio

  def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A stored-form example ({'video': uint8 [N, H, W, 3], 'audio': float32 [time, bins]};
    a vector modality under its own name, float32 [D]) -> {batch key: model input}."""
    out = {}
    for m in self.modalities:
      kind = self.stored[m]
      key = m if kind == "vector" else kind
      if key not in example:
        raise KeyError(f"the example has no {key!r} (modality {m!r}); it has {sorted(example)}")
      if kind == "video":
        out[m] = self.video(example[key])
      elif kind == "audio":
        out[m] = self.audio(example[key])
      else:
        out[m] = np.asarray(example[key], np.float32).reshape(self.dims[m])
    return out


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """A batch of n <= size rows padded with zero rows to `size`; 'mask' marks the real ones."""
  n = len(next(iter(batch.values())))
  if n > size:
    raise ValueError(f"a batch of {n} examples does not fit in {size}")
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items() if k != "mask"}
  mask = np.asarray(batch.get("mask", np.ones(n, np.float32)), np.float32)
  out["mask"] = np.concatenate([mask, np.zeros(size - n, np.float32)])
  return out


def softmax(logits: np.ndarray) -> np.ndarray:
  """Softmax over the last axis, float32."""
  x = np.asarray(logits, np.float32)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# A trained run


@dataclasses.dataclass
class Trained:
  """A trained run (or an export), restored for prediction.

  Attributes:
    directory: the run directory or export it was loaded from.
    name: the method.
    config: the run's config (ml_collections.ConfigDict).
    info: the dataset's metadata as prediction needs it (`DATASET_KEYS`): class names, the
      recorded `audio` and `video` parameters and the training split's audio statistics.
    class_names: [C] in label order.
    modalities: names in M-axis order.
    kinds: modality -> its encoder's input kind ('audio', 'video').
    readout: which logits the unimodal predictions read (METHODS.md §1.1), e.g. 'heads'.
    preprocessing: the evaluation ops, in numpy.
    budgets: the unimodal phase's record (`budgets.json`), or None.
    results: the run's results.json, or None.
    which: the checkpoint ('best' or 'latest').
    epoch: its epoch, or None when unknown.
    record: its JSON record (epoch, validation summary), or None.
    spec, method, model: rebuilt from the config.
    state: the checkpoint's parameters, BatchNorm statistics and method state (no optimiser
      state), replicated over `mesh`.
    mesh: the devices the eval step runs on (a 'data' mesh: batches are split over them).
    eval_step: `iib_jax.train.make_eval_step`'s jitted step with the mesh's shardings.
  """
  directory: str
  name: str
  config: Any
  info: dict
  class_names: list
  modalities: tuple[str, ...]
  kinds: dict
  readout: str
  preprocessing: Preprocessing
  budgets: dict | None
  results: dict | None
  which: str
  epoch: int | None
  record: dict | None
  spec: methods.MethodSpec
  method: methods.Method
  model: Any
  state: TrainState
  mesh: jax.sharding.Mesh
  eval_step: Any

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def batch_sharding(self) -> jax.sharding.Sharding:
    return sharding.batch_sharding(self.mesh)

  def example_batch(self, batch_size: int = 2) -> dict[str, np.ndarray]:
    """Zeros of the model inputs' shapes and dtypes, with 'label' and 'mask'."""
    return _zeros_batch(self.preprocessing, batch_size)

  def batch(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stored-form examples -> a model batch: {modality: [N, ...]}, 'label' [N] (the
    examples' 'label', else -1) and 'mask' [N] (ones)."""
    return self.collate([self.preprocessing(ex) for ex in examples],
                        [int(ex.get("label", -1)) for ex in examples])

  def collate(self, inputs: Sequence[Mapping[str, np.ndarray]],
              labels: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Preprocessed examples (`preprocessing(example)`) -> a model batch (see `batch`)."""
    if not inputs:
      raise ValueError("no example to batch")
    out = {m: np.stack([x[m] for x in inputs]) for m in self.modalities}
    out["label"] = np.asarray([-1] * len(inputs) if labels is None else labels, np.int32)
    out["mask"] = np.ones(len(inputs), np.float32)
    return out

  def predict(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Predictions on a batch of model inputs, for its real examples only.

    Args:
      batch: {modality: [N, ...] model inputs} (`batch`, or the input pipeline's batches), any
        N; optional 'mask' [N] (0 for padding rows, which are dropped from the outputs) and
        'label' [N]. N is padded to a multiple of the mesh's devices; pass batches of one size
        to compile the step once.

    Returns:
      numpy arrays over the n real examples: `probs` [n, C] (softmax of the fused logits),
      `pred` [n], `fused_logits` [n, C], `unimodal_probs` [n, M, C] and `unimodal_pred` [n, M]
      (each modality's own prediction, the method's readout), `unimodal_entropy` [n, M]
      (normalised entropy, Eq. 7), `weights` [n, M] when the method fuses with weights, and
      `label` [n] as given.
    """
    n = len(next(v for k, v in batch.items() if k in self.modalities))
    host = {m: np.asarray(batch[m]) for m in self.modalities}
    host["label"] = np.asarray(batch["label"], np.int32) if "label" in batch else np.full(
        n, -1, np.int32)
    if "mask" in batch:
      host["mask"] = np.asarray(batch["mask"], np.float32)
    devices = self.mesh.size
    host = pad_batch(host, -(-n // devices) * devices)
    out = jax.device_get(self.eval_step(self.state,
                                        sharding.host_to_device(host, self.batch_sharding)))
    keep = np.asarray(out["mask"]) > 0
    keep[n:] = False
    fused = np.asarray(out["fused_logits"], np.float32)[keep]
    unimodal = np.moveaxis(np.asarray(out["unimodal_logits"], np.float32), 0, 1)[keep]
    result = {
        "probs": softmax(fused), "pred": np.asarray(out["fused_pred"])[keep],
        "fused_logits": fused, "unimodal_probs": softmax(unimodal),
        "unimodal_pred": np.moveaxis(np.asarray(out["unimodal_pred"]), 0, 1)[keep],
        "unimodal_entropy": np.moveaxis(np.asarray(out["unimodal_entropy"]), 0, 1)[keep],
        "label": np.asarray(out["label"])[keep],
    }
    if "weights" in out:
      result["weights"] = np.asarray(out["weights"], np.float32)[keep]
    return result

  def predict_examples(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """`predict(batch(examples))`."""
    return self.predict(self.batch(examples))

  def export(self, directory: str) -> str:
    """Writes a directory to ship without the training workdir or the dataset: the restored
    parameters, BatchNorm statistics and method state (`checkpoints/best`, orbax), the config,
    the dataset's classes and recorded preprocessing (`dataset.json`), the budgets and results.
    `load(directory)` reads it back. Returns the directory."""
    if os.path.exists(directory) and os.listdir(directory):
      raise FileExistsError(f"{directory} exists and is not empty")
    os.makedirs(directory, exist_ok=True)

    def write(name, record):
      path = os.path.join(directory, name)
      with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
      os.replace(path + ".tmp", path)

    with open(os.path.join(directory, "config.json"), "w") as f:
      f.write(self.config.to_json_best_effort(indent=2))
    write(DATASET_FILE, self.info)
    if self.budgets is not None:
      write(BUDGETS_FILE, self.budgets)
    if self.results is not None:
      write("results.json", self.results)
    s = self.state
    arrays = {"step": s.step, "params": s.params, "batch_stats": s.batch_stats,
              "method": s.method, "rng": s.rng}
    ckpt = checkpoint.Checkpointer(directory)
    try:
      ckpt.save("best", int(self.epoch or 0), arrays, self.record or {"epoch": self.epoch})
    finally:
      ckpt.close()
    latest = os.path.join(directory, "checkpoints", "latest")
    if os.path.isdir(latest) and not os.listdir(latest):
      os.rmdir(latest)          # the manager's empty series: an export holds one checkpoint
    write(EXPORT_FILE, {"format": EXPORT_FORMAT, "method": self.name,
                        "source": os.path.abspath(self.directory), "which": self.which,
                        "epoch": self.epoch})
    return directory


def _zeros_batch(preprocessing: Preprocessing, batch_size: int) -> dict[str, np.ndarray]:
  batch = {m: np.zeros((batch_size,) + shape, dtype)
           for m, (shape, dtype) in preprocessing.input_specs().items()}
  batch["label"] = np.zeros(batch_size, np.int32)
  batch["mask"] = np.ones(batch_size, np.float32)
  return batch


def load(directory: str, which: str | None = None, *, data_dir: str | None = None,
         mesh: jax.sharding.Mesh | None = None) -> Trained:
  """A trained run, or an export, restored for prediction.

  Args:
    directory: a run directory (anything the runner trained: `checkpoints/`, and `config.json`
      in it or its parent) or an export (`Trained.export`).
    which: 'best' (default: the epoch chosen on validation) or 'latest'; an export holds the
      one checkpoint it was made from.
    data_dir: the prepared dataset, if not the one recorded in the config (a run moved to
      another machine); only its metadata.json is read. Not used by exports.
    mesh: the devices to predict on (default: every device, `iib_jax.sharding.data_mesh()`).

  Raises:
    FileNotFoundError: naming what is missing (config, checkpoint, dataset metadata, budgets
      of a method that needs them).
  """
  mesh = mesh if mesh is not None else sharding.data_mesh()
  replicated = sharding.replicated_sharding(mesh)
  if is_export(directory):
    exported = _read_json(os.path.join(directory, EXPORT_FILE))
    if which not in (None, exported["which"]):
      raise ValueError(f"{directory} is an export of the '{exported['which']}' checkpoint of "
                       f"{exported['source']}; it holds no '{which}' one")
    import ml_collections
    config = ml_collections.ConfigDict(_read_json(os.path.join(directory, "config.json")))
    info = _read_json(os.path.join(directory, DATASET_FILE))
    budgets = _maybe_json(os.path.join(directory, BUDGETS_FILE))
    results = _maybe_json(os.path.join(directory, "results.json"))
    name = exported["method"]
    which, stored_as = exported["which"], "best"
  else:
    which = which or "best"
    if which not in ("best", "latest"):
      raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    config = run_config(directory)
    if data_dir:
      config.data.dir = data_dir
    info = read_dataset_info(config.data.dir)
    results = _maybe_json(os.path.join(directory, "results.json"))
    name = results["method"] if results else config.method
    try:
      budgets = _read_json(os.path.join(find_unimodal_dir(directory), "iib", "budgets.json"))
    except FileNotFoundError:
      budgets = None
    stored_as = which
  definition = methods.definition(name)
  if budgets is None and definition.needs_budgets and definition.train is None:
    raise FileNotFoundError(f"{name} needs the unimodal phase's budgets: no iib/budgets.json "
                            f"in {directory} or its parents")
  num_classes = int(info["num_classes"])
  steps_per_epoch = int(info["splits"]["train"]) // int(config.optim.batch_size)
  spec = lib_build.method_spec(config, num_classes, steps_per_epoch, budgets=budgets)
  method = lib_build.method(config, name, spec)
  model = lib_build.model(config, num_classes, method)
  preprocessing = Preprocessing.from_config(config, info)
  init = state_lib.make_state_init(model, lib_build.optimizer(config), method)
  example = _zeros_batch(preprocessing, 2)
  template = jax.eval_shape(lambda: init(jax.random.key(config.seed), example))
  # The parameters, statistics and method state of the checkpoint, whatever optimiser state it
  # was saved with (a staged run freezes parameter groups).
  saved = checkpoint.read_arrays(directory, stored_as, replicated)
  state = template.replace(
      step=saved["step"], params=checkpoint.fill_like(template.params, saved["params"]),
      batch_stats=checkpoint.fill_like(template.batch_stats, saved.get("batch_stats") or {}),
      method=checkpoint.fill_like(template.method, saved.get("method") or {}), rng=saved["rng"],
      opt_state=None)
  epoch = checkpoint.saved_epoch(directory, stored_as)
  record = checkpoint.saved_record(directory, stored_as)
  eval_step = train.make_eval_step(model, method, state_sharding=replicated,
                                   batch_sharding=sharding.batch_sharding(mesh))
  return Trained(directory=directory, name=name, config=config, info=info,
                 class_names=list(info["class_names"]), modalities=tuple(config.modalities),
                 kinds={m: ENCODER_INPUT[config.model.encoders[m]] for m in config.modalities},
                 readout=lib_build.unimodal_readout(config, name), preprocessing=preprocessing,
                 budgets=budgets, results=results, which=which, epoch=epoch, record=record,
                 spec=spec, method=method, model=model, state=state, mesh=mesh,
                 eval_step=eval_step)


__all__ = ["Preprocessing", "Trained", "audio_normalization", "center_frame_indices",
           "crop_audio", "dataset_info", "find_unimodal_dir", "is_export", "load",
           "normalize_frames", "pad_batch", "quantize_frames", "resize_frames", "run_config",
           "softmax"]
