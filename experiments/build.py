"""What every command builds from a config: devices, the prepared data, the hooks' context, and
trained runs restored for inference.

  devices = build.Devices()
  data = build.Data(config, config.data.dir, devices)
  run = build.restore_run(workdir, devices)          # config, model, method, best state, steps

The library side of the config (spec, method, model, optimiser) is `iib_jax.build`; this module
adds what needs the data pipeline (TensorFlow) and the device mesh.
"""
from __future__ import annotations

import contextlib
import dataclasses
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iib_jax import arrays, build as lib_build, checkpoint, distributed, inference, loop
from iib_jax import methods, sharding, train
from iib_jax.models.encoders import ENCODER_INPUT
from iib_jax.state import TrainState


_LOG_FILES: list[str] = []


def log(message: str) -> None:
  """One line of progress on the console and in the run's log file (`log_to`); process 0's
  only."""
  if distributed.is_primary():
    print(message, flush=True)
    for path in _LOG_FILES[-1:]:
      with open(path, "a") as f:
        f.write(message.rstrip("\n") + "\n")


@contextlib.contextmanager
def log_to(path: str):
  """Also writes every `log` line to `path` (plain text, appended) while the block runs."""
  _LOG_FILES.append(path)
  try:
    yield
  finally:
    _LOG_FILES.pop()


def epoch_line(name: str, epoch: int, epochs: int, train_metrics: Mapping[str, Any],
               val: Mapping[str, Any], modalities, seconds: float, remaining: float) -> str:
  """The one line an epoch leaves in the log: `[name] epoch e/E−1 · train loss · validation
  Acc_m (each modality) · seconds · ETA` (epochs are 0-based everywhere)."""
  loss = train_metrics.get("loss")
  parts = [f"[{name}] epoch {epoch}/{epochs - 1}"]
  if loss is not None:
    parts.append(f"train loss {float(np.mean(loss)):.4f}")
  each = ", ".join(f"{m} {100 * val[f'acc_{m}']:.2f}" for m in modalities if f"acc_{m}" in val)
  if "acc_fused" in val:
    parts.append(f"val Acc_m {100 * val['acc_fused']:.2f} ({each})")
  else:
    parts.append(f"val {each}")
  parts.append(f"{seconds:.1f} s")
  parts.append(f"ETA {remaining / 60:.1f} min" if remaining >= 60 else f"ETA {remaining:.0f} s")
  return " · ".join(parts)


def primary() -> bool:
  """Whether this process writes the run's files: logs, records, tables, plots (process 0)."""
  return distributed.is_primary()


def stream_seed(seed: int, name: str) -> int:
  """A data-order seed of its own for a phase, so it never replays the training order."""
  return zlib.crc32(f"{name}:{seed}".encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------
# Devices and data


class Devices:
  """One mesh with a "data" axis over every visible device: state replicated, batch sharded."""

  def __init__(self):
    self.mesh = sharding.data_mesh()
    self.replicated = sharding.replicated_sharding(self.mesh)
    self.batch = sharding.batch_sharding(self.mesh)
    self.count = self.mesh.size

  def put(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, jax.Array]]:
    """Host batches → global arrays on the batch sharding, two batches ahead (clip ids and other
    non-numeric keys stay on the host)."""
    return sharding.prefetch_to_device(batches, self.batch, size=2)

  def replicate(self, tree: Any) -> Any:
    """Host-made values placed where the state lives (replicated over the mesh)."""
    return jax.device_put(tree, self.replicated)


def subset_batches(batches: Iterable[Mapping[str, np.ndarray]], keep: Callable[[bytes], bool],
                   batch_size: int, pad: bool) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of exactly `batch_size` examples whose clip id passes `keep`, in order.

  Training batches (pad=False) drop the incomplete last batch; evaluation batches (pad=True) pad
  it and mark the padding with mask 0, so every kept clip counts once.
  """
  buffer: dict[str, list[np.ndarray]] = {}
  count = 0

  def take(n):
    nonlocal count
    out = {}
    for key, parts in buffer.items():
      joined = np.concatenate(parts)
      out[key], buffer[key] = joined[:n], [joined[n:]]
    count -= n
    return out

  for batch in batches:
    selected = np.array([keep(bytes(i)) for i in batch["clip_id"]], bool)
    if "mask" in batch:
      selected &= np.asarray(batch["mask"]) > 0
    for key, value in batch.items():
      buffer.setdefault(key, []).append(np.asarray(value)[selected])
    count += int(selected.sum())
    while count >= batch_size:
      yield take(batch_size)
  if pad and count > 0:
    real = count
    out = {}
    for key, value in take(real).items():
      padding = np.zeros((batch_size - real,) + value.shape[1:], value.dtype)
      out[key] = np.concatenate([value, padding])
    out["mask"] = np.concatenate([np.ones(real, np.float32),
                                  np.zeros(batch_size - real, np.float32)])
    yield out


def clip_labels(data_dir: str, split: str) -> list[tuple[bytes, int]]:
  """(clip id, label) of every example of a prepared split, in record order (no decoding)."""
  if arrays.is_array_dataset(data_dir):
    stored = arrays.load_split(data_dir, split)
    return [(bytes(c), int(y)) for c, y in zip(stored["clip_id"], stored["label"])]
  from iib_jax import preprocess, quiet, schema
  tf = quiet.import_tensorflow()
  files = schema.load_info(data_dir)["files"][split]
  records = tf.data.TFRecordDataset(files).map(lambda s: preprocess.parse(s, ()))
  return [(bytes(ex["clip_id"]), int(ex["label"])) for ex in records.as_numpy_iterator()]


def verify_dataset(data_dir: str) -> None:
  """Checks a prepared dataset's files against its metadata before anything is trained:
  every TFRecord shard's size and SHA-256 (`iib_jax.data.verify_dataset`), or an array
  dataset's splits (`iib_jax.arrays.verify`). Raises `iib_jax.schema.DatasetError`."""
  if arrays.is_array_dataset(data_dir):
    arrays.verify(data_dir)
  else:
    from iib_jax import data as data_lib          # TensorFlow, for TFRecord datasets only
    data_lib.verify_dataset(data_dir)


class Data:
  """A prepared dataset as the runner needs it: batches per split, sharded onto the mesh.

  Either format: TFRecords through the tf.data pipeline of `iib_jax.data` (the preprocessing of
  `config.data`), or an array dataset (`iib_jax.arrays`: vectors served from memory, no
  TensorFlow).
  """

  def __init__(self, config: ml_collections.ConfigDict, data_dir: str, devices: Devices):
    self.dir = data_dir
    self.config = config
    self.devices = devices
    self.batch_size = int(config.optim.batch_size)
    # Evaluation pads its last batch anyway, so round the batch up to fill every device.
    self.eval_batch_size = -(-int(config.eval.batch_size) // devices.count) * devices.count
    keys = {m: m for m in config.modalities}
    self._arrays = None
    self._eval_cache: dict[tuple, Any] = {}
    if arrays.is_array_dataset(data_dir):
      self._arrays = {
          train: arrays.ArrayData(data_dir, batch_size=size, eval_batch_size=size,
                                  modalities=keys)
          for train, size in ((True, self.batch_size), (False, self.eval_batch_size))}
      self.info = self._arrays[True].info
    else:
      from iib_jax import data as data_lib        # TensorFlow is imported here, not earlier
      self._make = data_lib.make_dataset
      self.info = data_lib.load_info(data_dir)
      c = config.data
      self.pipeline = dict(modalities=keys, num_frames=c.num_frames, image_size=c.image_size,
                           audio_frames=c.audio_frames, audio_norm=c.audio_norm,
                           frames_dtype=c.get("frames_dtype", "float32"),
                           host_sharding=c.get("host_sharding", "global"),
                           damage=data_lib.checked_damage(c.get("train_damage"),
                                                          config.modalities))
    self.num_classes = int(self.info["num_classes"])

  def num_examples(self, split: str) -> int:
    return int(self.info["splits"][split])

  def steps_per_epoch(self) -> int:
    return self.num_examples("train") // self.batch_size

  def host_batches(self, split: str, *, train: bool, seed: int = 0, epoch: int = 0,
                   batch_size: int | None = None):
    """Numpy batches of one epoch of `split` (`batch_size`: a small evaluation-style batch).

    An evaluation split's batches are the same every time: they are built once and iterated
    again (building a tf.data pipeline costs a fraction of a second)."""
    if not train:
      key = (split, batch_size)
      if key not in self._eval_cache:
        self._eval_cache[key] = self._host_batches(split, train=False, batch_size=batch_size)
      return self._eval_cache[key]
    return self._host_batches(split, train=True, seed=seed, epoch=epoch)

  def _host_batches(self, split: str, *, train: bool, seed: int = 0, epoch: int = 0,
                    batch_size: int | None = None):
    if self._arrays is not None:
      source = self._arrays[train]
      if batch_size is not None:
        return [source.example(batch_size)]
      return source.train(epoch, seed) if train else source.eval(split)
    size = batch_size or (self.batch_size if train else self.eval_batch_size)
    extra = dict(seed=seed, epoch=epoch) if train else {}
    if batch_size is not None:          # the same few examples on every process (shapes)
      extra.update(process_index=0, process_count=1)
    return self._make(self.dir, split, batch_size=size, train=train, **extra, **self.pipeline)

  def train(self, epoch: int, seed: int, keep: Callable[[bytes], bool] | None = None):
    """One epoch of training batches in the order of (seed, epoch), on the devices; with `keep`,
    only the clips it accepts (re-batched, the incomplete last batch dropped)."""
    batches = self.host_batches("train", train=True, seed=seed, epoch=epoch)
    if keep is not None:
      batches = subset_batches(batches, keep, self.batch_size, pad=False)
    return self.devices.put(batches)

  def eval(self, split: str, keep: Callable[[bytes], bool] | None = None):
    """Evaluation batches of `split` (padded, every clip once), on the devices."""
    batches = self.host_batches(split, train=False)
    if keep is not None:
      batches = subset_batches(batches, keep, self.eval_batch_size, pad=True)
    return self.devices.put(batches)

  def example(self) -> dict[str, np.ndarray]:
    """A small batch of real inputs, for shapes (model initialisation)."""
    return next(iter(self.host_batches("validation", train=False, batch_size=2)))

  def clip_labels(self, split: str) -> list[tuple[bytes, int]]:
    return clip_labels(self.dir, split)


# ----------------------------------------------------------------------------------------------
# What a method's hooks see


@dataclasses.dataclass
class Context:
  """`iib_jax.methods.base.Context`: what a method's hooks may use."""
  config: Any
  options: Any
  data: Data
  workdir: str
  model: Any
  method: methods.Method
  spec: methods.MethodSpec
  train_step: Callable
  eval_step: Callable
  seed: int

  def put(self, tree):
    return self.data.devices.replicate(tree)

  def log(self, message: str) -> None:
    log(message)

  def stream_seed(self, name: str) -> int:
    return stream_seed(self.seed, name)


# ----------------------------------------------------------------------------------------------
# Trained runs, restored for inference


def collect_features(outputs_step, state, batches) -> tuple[np.ndarray, np.ndarray]:
  """([N, M, d] features, [N] labels) of every real example of `batches` (padding dropped)."""
  feats, labels = [], []
  for batch in batches:
    out = jax.device_get(outputs_step(state, batch))
    keep = np.asarray(out["mask"]) > 0
    feats.append(np.moveaxis(np.asarray(out["features"]), 0, 1)[keep])
    labels.append(np.asarray(out["label"])[keep])
  return np.concatenate(feats), np.concatenate(labels)


def inference_state(params, batch_stats, method_state, devices: Devices, step=None,
                    rng=None) -> TrainState:
  """A TrainState for inference (no optimiser state)."""
  put = devices.replicate
  return TrainState(step=put(jnp.zeros((), jnp.int32)) if step is None else step,
                    params=params, batch_stats=batch_stats or {}, opt_state=None,
                    method=method_state,
                    rng=put(jax.random.key_data(jax.random.key(0))) if rng is None else rng)


class UnimodalModels:
  """The unimodal phase's models (`<run>/iib/checkpoints/best`), restored for inference."""

  def __init__(self, config, data: Data, unimodal_dir: str):
    spec = lib_build.method_spec(config, data.num_classes, data.steps_per_epoch(),
                                 config.iib.epochs)
    self.method = methods.get_method("unimodal", None, spec)
    self.model = lib_build.model(config, data.num_classes, self.method)
    saved = checkpoint.read_arrays(unimodal_dir, "best", data.devices.replicated)
    self.state = inference_state(saved["params"], saved.get("batch_stats"), (), data.devices)
    dev = data.devices
    self.eval_step = train.make_eval_step(self.model, self.method,
                                          state_sharding=dev.replicated, batch_sharding=dev.batch)
    self.outputs_step = methods.base.make_outputs_step(self.model, self.method)
    self.data = data

  def outputs(self, split: str) -> dict[str, np.ndarray]:
    """`loop.collect` outputs of every unimodal model on `split`."""
    return loop.collect(self.eval_step, self.state, self.data.eval(split))

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """([N, M, d] features, [N] labels) on `split` (evaluation transforms)."""
    return collect_features(self.outputs_step, self.state, self.data.eval(split))


# Where a run records its config and its unimodal phase: the library's readers
# (`iib_jax.inference`), which prediction shares.
find_unimodal_dir = inference.find_unimodal_dir
run_config = inference.run_config


@dataclasses.dataclass
class TrainedRun:
  """A trained run restored for inference: what it was trained with and its best state.

  Attributes:
    workdir: the run directory.
    name: the method.
    config: its config.
    results: its results.json (None for an unfinished run).
    data: the prepared dataset.
    modalities: names in M-axis order.
    kinds: modality -> its encoder's input kind ("audio", "video", ...).
    method, model: rebuilt from the config.
    state: the best checkpoint's parameters, statistics and method state (no optimiser state).
    eval_step, outputs_step: compiled inference steps.
  """
  workdir: str
  name: str
  config: Any
  results: dict | None
  data: Data
  modalities: tuple[str, ...]
  kinds: dict[str, str]
  method: methods.Method
  model: Any
  state: TrainState
  eval_step: Callable
  outputs_step: Callable


def restore_run(workdir: str, devices: Devices, data_dir: str | None = None,
                which: str = "best") -> TrainedRun:
  """The run in `workdir`, rebuilt from its config and restored from its `which` checkpoint
  (best: the epoch chosen on validation) by the library's loader (`iib_jax.inference.load`),
  with its prepared dataset for the evaluation batches."""
  trained = inference.load(workdir, which, data_dir=data_dir, mesh=devices.mesh)
  data = Data(trained.config, trained.config.data.dir, devices)
  return TrainedRun(workdir=workdir, name=trained.name, config=trained.config,
                    results=trained.results, data=data, modalities=trained.modalities,
                    kinds=dict(trained.kinds), method=trained.method, model=trained.model,
                    state=trained.state, eval_step=trained.eval_step,
                    outputs_step=methods.base.make_outputs_step(trained.model, trained.method))


def modality_kinds(config) -> dict[str, str]:
  """modality -> the input kind of its encoder ("audio", "video", ...)."""
  return {m: ENCODER_INPUT[config.model.encoders[m]] for m in config.modalities}


__all__ = ["Context", "Data", "Devices", "TrainedRun", "UnimodalModels", "clip_labels",
           "collect_features", "find_unimodal_dir", "inference_state", "log", "modality_kinds",
           "restore_run", "run_config", "stream_seed", "subset_batches"]
