"""Per-method work outside the compiled step, and the methods trained in several stages.

Two registries:
  HOOKS[name](context) -> Hooks    what a method needs before training and between epochs (MSLR's
                                   factors from validation, PMR's prototype pass, G-Blending's
                                   weight estimates on its holdout, AGM's Shapley evaluation).
  RUNNERS[name](run) -> results    methods whose training is a sequence of stages (UDI, BML-MI).
                                   Each stage is an ordinary `train_method` call with its own
                                   options, frozen parameter groups and hooks; the last stage runs
                                   in the method's workdir, so its run directory looks like any
                                   other (checkpoints/best, results.json), earlier stages run in
                                   `<workdir>/stages/<stage>`.
Every value a phase sets goes into the method state (`state.replace(method=...)`): it is
checkpointed with the run and never triggers a recompile. A method never edits the training loop.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iib_jax import checkpoint, estimate, loop, methods, train
from iib_jax.methods import agm, base, bmlmi, gblending, mslr, ogm_ge, pmr, udi
from iib_jax.state import TrainState


@dataclasses.dataclass
class Context:
  """What a method's phases may use: the run's config, data, compiled steps and paths."""
  config: Any
  data: Any
  workdir: str
  model: Any
  method: Any
  tx: Any
  train_step: Callable
  eval_step: Callable
  spec: Any
  budgets: Mapping[str, Any] | None = None


@dataclasses.dataclass
class Hooks:
  """What the runner calls around `loop.fit`.

  Attributes:
    before_training: state -> state, once before epoch 0 (not on resume: its result is in the
      checkpoint).
    between_epochs: (epoch, state, validation summary) -> state, after each epoch's evaluation
      and before its checkpoint.
    train_batches: epoch -> training batches, replacing the training split (G-Blending trains on
      the training split minus its holdout).
    eval_step: replaces the compiled eval step for validation and test (AGM's Shapley outputs).
  """
  before_training: Callable[[Any], Any] = lambda state: state
  between_epochs: Callable[[int, Any, dict], Any] = lambda epoch, state, val: state
  train_batches: Callable[[int], Iterable] | None = None
  eval_step: Callable | None = None


@dataclasses.dataclass
class Stage:
  """One stage of a multi-stage method, as `train_method(..., stage=...)` runs it.

  Attributes:
    frozen: top-level parameter groups (modality names, "fusion") the optimiser keeps fixed.
    hooks: Context -> Hooks of this stage (instead of the method's registered hooks).
  """
  frozen: tuple[str, ...] = ()
  hooks: Callable[[Context], Hooks] | None = None


@dataclasses.dataclass
class Run:
  """A multi-stage method's run: the runner's `train_method` and the arguments it was given.

  Attributes:
    iib_dir: the unimodal phase's directory (its `budgets.json` and `checkpoints/best`).
  """
  train: Callable[..., dict[str, Any]]
  config: Any
  name: str
  data: Any
  workdir: str
  budgets: Mapping[str, Any] | None
  iib_dir: str


def hooks(name: str, context: Context) -> Hooks:
  """The hooks of method `name` (no-ops when it has none)."""
  factory = HOOKS.get(name)
  return Hooks() if factory is None else factory(context)


def method_options(config, name: str) -> dict[str, Any]:
  """The options `train_method` builds method `name` with: `config.methods.<name>`, plus what
  the run decides (OGM-GE's noise stream follows the run's seed; `noise_seed` is an offset)."""
  options = config.methods.get(name)
  options = {} if options is None else (options.to_dict() if hasattr(options, "to_dict")
                                        else dict(options))
  if name == "ogm_ge":
    options["noise_seed"] = int(config.seed) + int(options.get("noise_seed",
                                                               ogm_ge.DEFAULTS["noise_seed"]))
  return options


def _log(message: str) -> None:
  print(message, flush=True)


def _options(config, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
  return {**defaults, **method_options(config, name)}


def _put(data, tree):
  """Places host-made values where the state lives (replicated over the mesh)."""
  return jax.device_put(tree, data.devices.replicated)


def _stream_seed(seed: int, name: str) -> int:
  """A data-order seed of its own for a phase, so it never replays the training order."""
  return zlib.crc32(f"{name}:{seed}".encode()) & 0x7FFFFFFF


def _override(config, overrides: Mapping[str, Any]):
  """A copy of `config` with dotted keys replaced."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config


# ----------------------------------------------------------------------------------------------
# Checkpoints read by the phases and by experiments.evaluate


def restore_arrays(workdir: str, which: str = "best", sharding=None) -> dict[str, Any]:
  """The arrays of `workdir/checkpoints/<which>` as nested dicts, whatever the structure of the
  optimiser state they were saved with (a staged run freezes parameter groups, which changes it).

  Args:
    workdir: a run directory, or a unimodal-phase directory (`<run>/iib`).
    which: "best" or "latest".
    sharding: where to place every array (default: the first device).

  Returns:
    {"params", "batch_stats", ...} as saved (a train state has "step", "method", "rng" and
    "opt_state" too).
  """
  import orbax.checkpoint as ocp
  step = None
  if os.path.isdir(os.path.join(workdir, "checkpoints", which)):   # never create it here
    ckpt = checkpoint.Checkpointer(workdir)
    step = ckpt.epoch(which)
    ckpt.close()
  if step is None:
    raise FileNotFoundError(f"no '{which}' checkpoint in {os.path.join(workdir, 'checkpoints')}")
  path = os.path.abspath(os.path.join(workdir, "checkpoints", which, str(step), "state"))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)       # orbax warns that a sub-item has no metadata file
  try:
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            tree)
    return checkpointer.restore(path, abstract)
  finally:
    absl_logger.setLevel(level)


def fill_like(template, tree):
  """`template`'s structure with its leaves taken from `tree` (nested dicts keyed by field names,
  as `restore_arrays` returns a saved pytree)."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in paths:
    node = tree
    for key in path:
      if isinstance(key, jax.tree_util.GetAttrKey):
        node = node[key.name]
      elif isinstance(key, jax.tree_util.DictKey):
        node = node[key.key]
      else:
        node = node[key.idx] if isinstance(node, (list, tuple)) else node[str(key.idx)]
    leaves.append(node)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def load_branches(state, data, workdir: str, groups: Sequence[str], which: str = "best"):
  """`state` with the parameters and BatchNorm statistics of `groups` (top-level keys) from the
  checkpoint of `workdir` (a run directory or `<run>/iib`)."""
  saved = restore_arrays(workdir, which, data.devices.replicated)
  params = {**state.params, **{g: saved["params"][g] for g in groups}}
  stats = dict(state.batch_stats)
  stats.update({g: saved["batch_stats"][g] for g in groups
                if g in (saved.get("batch_stats") or {})})
  return state.replace(params=params, batch_stats=stats)


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


def collect_features(outputs_step, state, batches) -> tuple[np.ndarray, np.ndarray]:
  """([N, M, d] features, [N] labels) of every real example of `batches` (padding dropped)."""
  feats, labels = [], []
  for batch in batches:
    out = jax.device_get(outputs_step(state, batch))
    keep = np.asarray(out["mask"]) > 0
    feats.append(np.moveaxis(np.asarray(out["features"]), 0, 1)[keep])
    labels.append(np.asarray(out["label"])[keep])
  return np.concatenate(feats), np.concatenate(labels)


class _UnimodalModels:
  """The unimodal phase's models (stage A of UDI, stage 0 of BML-MI), restored for inference."""

  def __init__(self, config, data, iib_dir: str):
    from experiments import run as runner        # the runner imports this module first
    modalities = tuple(config.modalities)
    spec = methods.MethodSpec(modalities, data.num_classes, config.model.feature_dim,
                              data.steps_per_epoch(), config.iib.epochs)
    self.method = methods.get_method("unimodal", {}, spec)
    self.model = runner._model(config, modalities, data.num_classes, self.method)
    saved = restore_arrays(iib_dir, "best", data.devices.replicated)
    self.state = TrainState(step=_put(data, jnp.zeros((), jnp.int32)), params=saved["params"],
                            batch_stats=saved.get("batch_stats") or {}, opt_state=None,
                            method=(), rng=_put(data, jax.random.key_data(jax.random.key(0))))
    dev = data.devices
    self.eval_step = train.make_eval_step(self.model, self.method,
                                          state_sharding=dev.replicated, batch_sharding=dev.batch)
    self.outputs_step = base.make_outputs_step(self.model, self.method)
    self.data = data

  def predictions(self, split: str) -> dict[str, np.ndarray]:
    """`loop.collect` outputs of every unimodal model on `split`."""
    return loop.collect(self.eval_step, self.state, self.data.eval(split))

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """([N, M, d] features, [N] labels) on `split` (evaluation transforms)."""
    return collect_features(self.outputs_step, self.state, self.data.eval(split))


def _run_stage(run: Run, config, workdir: str, stage: Stage) -> dict[str, Any]:
  """Trains one stage in `workdir` (reused when its results exist) and returns its results."""
  path = os.path.join(workdir, "results.json")
  if workdir != run.workdir and os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  os.makedirs(workdir, exist_ok=True)
  if workdir != run.workdir:
    # The stage's own config, so `experiments.evaluate` can rebuild its model.
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return run.train(config, run.name, run.data, workdir, run.budgets, stage=stage)


def _unimodal_phase(run: Run, stage: str) -> str:
  """The unimodal phase's directory, which a multi-stage method uses as its `stage`."""
  if run.budgets is None or not os.path.exists(os.path.join(run.iib_dir, "budgets.json")):
    raise ValueError(f"{run.name} needs the unimodal phase ({stage}) in {run.iib_dir}: train it "
                     "through experiments.run or experiments.sweep, which run it first")
  return run.iib_dir


def _finish(run: Run, results: dict[str, Any], stages: Mapping[str, Any]) -> dict[str, Any]:
  results = {**results, "stages": dict(stages)}
  estimate.write_json(os.path.join(run.workdir, "results.json"), results)
  return results


def _stage_record(path: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """A stage decision computed once and kept in `path` (a resumed run makes the same one)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  estimate.write_json(path, record)
  return record


# ----------------------------------------------------------------------------------------------
# MSLR (METHODS.md §6)


def _mslr_hooks(context: Context) -> Hooks:
  opts = _options(context.config, "mslr", mslr.DEFAULTS)
  modalities = tuple(context.config.modalities)

  def between_epochs(epoch, state, val):
    # The validation accuracies of the sum-fusion summands: what the method's `predict` reports.
    accuracies = [val[f"acc_{m}"] for m in modalities]
    new = mslr.end_of_epoch(state.method, accuracies, opts["strategy"])
    return state.replace(method=_put(context.data, new))

  return Hooks(between_epochs=between_epochs)


# ----------------------------------------------------------------------------------------------
# PMR (METHODS.md §10)


def _pmr_hooks(context: Context) -> Hooks:
  config, data = context.config, context.data
  opts = _options(config, "pmr", pmr.DEFAULTS)
  step = pmr.make_prototype_step(context.model, context.method)
  seed = _stream_seed(config.seed, "pmr")

  def batches(epoch: int) -> Iterable:
    if config.data.name == "ave":        # the official AVE script uses the validation split
      return data.eval("validation")
    # ⌊N/10⌋ shuffled training batches; at least one, so a small dataset still gets prototypes.
    count = max(1, int(data.steps_per_epoch() * opts["prototype_fraction"]))
    return itertools.islice(data.train(epoch, seed), count)

  def prototypes(state, epoch):
    state = pmr.prototype_pass(step, state, batches(epoch), opts["momentum"],
                               opts["plain_passes"])
    return state.replace(method=_put(data, state.method))

  return Hooks(before_training=lambda state: prototypes(state, 0),
               between_epochs=lambda epoch, state, val: prototypes(state, epoch + 1))


# ----------------------------------------------------------------------------------------------
# G-Blending (METHODS.md §7)


def holdout_ids(data_dir: str, fraction: float, seed: int) -> frozenset:
  """Clip ids of G-Blending's holdout V′: a `fraction` of every class of the training split (at
  least one clip of a class with two or more), chosen by a hash of (seed, clip id), so the same
  clips are held out on every host and after a restart."""
  import tensorflow as tf
  from iib_jax import preprocess, schema
  files = schema.load_info(data_dir)["files"]["train"]
  records = tf.data.TFRecordDataset(files).map(lambda s: preprocess.parse(s, ()))
  by_class: dict[int, list[bytes]] = {}
  for example in records.as_numpy_iterator():
    by_class.setdefault(int(example["label"]), []).append(bytes(example["clip_id"]))
  held = []
  for ids in by_class.values():
    ids = sorted(ids, key=lambda i: zlib.crc32(i + f":{seed}".encode()))
    count = int(round(fraction * len(ids)))
    if len(ids) > 1:
      count = min(max(count, 1), len(ids) - 1)
    held += ids[:count]
  return frozenset(held)


def subset_batches(batches: Iterable[Mapping[str, np.ndarray]], keep: Callable[[bytes], bool],
                   batch_size: int, pad: bool) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of exactly `batch_size` examples whose clip id passes `keep`.

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


class Holdout:
  """The training split as G-Blending divides it: T′ for training, V′ for the estimates."""

  def __init__(self, data, fraction: float, seed: int):
    self.data = data
    self.held = holdout_ids(data.dir, fraction, seed)

  def train(self, epoch: int, seed: int):
    """T′: one epoch of training batches (the training order of `(seed, epoch)`, V′ removed)."""
    data = self.data
    batches = data._lib.make_dataset(data.dir, "train", batch_size=data.config.optim.batch_size,
                                     train=True, seed=seed, epoch=epoch, **data._options())
    return data.devices.put(subset_batches(batches, lambda i: i not in self.held,
                                           data.config.optim.batch_size, pad=False))

  def holdout(self):
    """V′ in evaluation mode, padded."""
    data = self.data
    size = -(-data.config.eval.batch_size // data.devices.count) * data.devices.count
    batches = data._lib.make_dataset(data.dir, "train", batch_size=size, train=False,
                                     **data._options())
    return data.devices.put(subset_batches(batches, lambda i: i in self.held, size, pad=True))


def _gblending_hooks(context: Context) -> Hooks:
  config, data = context.config, context.data
  opts = _options(config, "gblending", gblending.DEFAULTS)
  split = Holdout(data, opts["holdout_fraction"], config.seed)
  loss_step = gblending.make_branch_loss_step(context.model, context.method, opts["unimodal"])
  names = list(config.modalities) + ["fused"]
  _log(f"[gblending] holdout V′: {len(split.held)} training clips; T′: the rest "
       f"({opts['mode']} estimate)")

  def train_batches(epoch):
    return split.train(epoch, config.seed)

  def placed(step):
    # A probe's one-hot weights are made on the host: placing them like the rest of the state
    # keeps the compiled steps' input signature, so the probes reuse them instead of recompiling.
    return lambda state, batch: step(_put(data, state), batch)

  def reestimate(state, start_epoch: int, epochs: int):
    # The probes see the epochs the main training is about to see.
    weights = gblending.estimate(
        placed(context.train_step), placed(loss_step), state,
        train_batches=lambda e: train_batches(start_epoch + e), holdout_batches=split.holdout,
        epochs=epochs, gain=opts["gain"])
    _log(f"[gblending] weights from epoch {start_epoch} ({epochs}-epoch probes): "
         + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
    return state.replace(method=_put(data, gblending.with_weights(state.method, weights)))

  if opts["mode"] == "offline":
    return Hooks(before_training=lambda state: reestimate(state, 0, int(opts["probe_epochs"])),
                 train_batches=train_batches)
  period = int(opts["super_epoch"])

  def between_epochs(epoch, state, val):
    next_epoch = epoch + 1
    if next_epoch % period or next_epoch >= config.optim.epochs:
      return state
    return reestimate(state, next_epoch, period)

  return Hooks(before_training=lambda state: reestimate(state, 0, period),
               between_epochs=between_epochs, train_batches=train_batches)


# ----------------------------------------------------------------------------------------------
# AGM (METHODS.md §11)


def _agm_hooks(context: Context) -> Hooks:
  return Hooks(eval_step=EVAL_STEPS["agm"](context.model, context.method))


# ----------------------------------------------------------------------------------------------
# UDI (METHODS.md §3.3): A unimodal phase → B followers under the frozen anchor → C fused head


def _udi(run: Run) -> dict[str, Any]:
  config, data = run.config, run.data
  opts = _options(config, "udi", udi.DEFAULTS)
  modalities = tuple(config.modalities)
  source = _unimodal_phase(run, "stage A")

  def choose():
    outputs = _UnimodalModels(config, data, source).predictions("validation")
    accuracy = np.mean(outputs["unimodal_pred"] == outputs["label"][:, None], axis=0)
    entropy = np.mean(outputs["unimodal_entropy"], axis=0)
    anchor = udi.choose_anchor(accuracy, entropy, opts["tie_tolerance"])
    return {"anchor": modalities[anchor], "source": source,
            "val_acc": dict(zip(modalities, map(float, accuracy))),
            "val_entropy": dict(zip(modalities, map(float, entropy)))}

  record = _stage_record(os.path.join(run.workdir, "stages", "udi.json"), choose)
  anchor_name = record["anchor"]
  anchor = modalities.index(anchor_name)
  _log(f"[udi] anchor {anchor_name} (validation accuracy "
       + ", ".join(f"{m} {record['val_acc'][m]:.3f}" for m in modalities) + ")")
  with_fusion = opts["prediction"] == "head" and int(opts["fusion_epochs"]) > 0
  follower_dir = os.path.join(run.workdir, "stages", "follower") if with_fusion else run.workdir

  def follower_hooks(context):
    def before_training(state):
      groups = modalities if opts["follower_init"] == "unimodal" else (anchor_name,)
      state = load_branches(state, data, source, groups)
      return state.replace(method=_put(data, udi.with_anchor(state.method, anchor)))
    return Hooks(before_training=before_training)

  # Stage B selects on the mean of the unimodal logits: the fused head is not trained yet.
  follower = _run_stage(run, _override(config, {"methods.udi.stage": "follower",
                                                "methods.udi.prediction": "mean_logits"}),
                        follower_dir, Stage(frozen=(anchor_name, "fusion"), hooks=follower_hooks))
  stages = {"anchor": anchor_name, "anchor_choice": record,
            "follower": {"dir": follower_dir, "best_epoch": follower["best_epoch"],
                         "test_best": follower["test_best"]}}
  if not with_fusion:
    return _finish(run, follower, stages)

  def fusion_hooks(context):
    def before_training(state):
      state = load_branches(state, data, follower_dir, modalities + ("fusion",))
      return state.replace(method=_put(data, udi.with_anchor(state.method, anchor)))
    return Hooks(before_training=before_training)

  fused = _run_stage(run, _override(config, {"methods.udi.stage": "fusion",
                                             "optim.epochs": int(opts["fusion_epochs"])}),
                     run.workdir, Stage(frozen=modalities, hooks=fusion_hooks))
  return _finish(run, fused, stages)


# ----------------------------------------------------------------------------------------------
# BML-MI (METHODS.md §4.3): 0 unimodal phase → MI test → 1 distillation → 2 weighted joint training


def _bmlmi(run: Run) -> dict[str, Any]:
  config, data = run.config, run.data
  opts = _options(config, "bmlmi", bmlmi.DEFAULTS)
  modalities = tuple(config.modalities)
  classes = data.num_classes
  source = _unimodal_phase(run, "stage 0")

  def decide():
    models = _UnimodalModels(config, data, source)
    val = models.predictions("validation")
    f1 = [bmlmi.macro_f1(val["label"], val["unimodal_pred"][:, i], classes)
          for i in range(len(modalities))]
    teacher = bmlmi.choose_teacher(f1)
    z_train, y_train = models.features("train")
    z_val, y_val = models.features("validation")
    mi_teacher, mi_label, distill = [0.0] * len(modalities), [0.0] * len(modalities), []
    for s in range(len(modalities)):
      if s != teacher:
        mi_teacher[s] = bmlmi.estimate_infonce(
            z_train[:, teacher], z_train[:, s], batch_size=int(opts["critic_batch"]),
            epochs=int(opts["critic_epochs"]), seed=int(config.seed))
        mi_label[s] = bmlmi.estimate_label_mi(z_val[:, s], y_val, classes,
                                              steps=int(opts["probe_steps"]))
      distill.append(s != teacher and bmlmi.should_distill(mi_teacher[s], mi_label[s]))
    return {"teacher": modalities[teacher], "source": source,
            "val_macro_f1": dict(zip(modalities, map(float, f1))),
            "mi_with_teacher": dict(zip(modalities, map(float, mi_teacher))),
            "mi_with_label": dict(zip(modalities, map(float, mi_label))),
            "distill": dict(zip(modalities, map(bool, distill))),
            "label_entropy": bmlmi.label_entropy(y_train, classes)}

  record = _stage_record(os.path.join(run.workdir, "stages", "bmlmi.json"), decide)
  teacher_name = record["teacher"]
  teacher = modalities.index(teacher_name)
  distill = [float(record["distill"][m]) for m in modalities]
  mi_teacher = [record["mi_with_teacher"][m] for m in modalities]
  _log(f"[bmlmi] teacher {teacher_name}; distilling students: "
       + (", ".join(m for m in modalities if record["distill"][m]) or "none"))
  stages: dict[str, Any] = {"teacher": teacher_name, "decision": record}
  branches = source, "best"

  def unimodal_hooks(context):
    def before_training(state):
      state = load_branches(state, data, source, modalities)
      return state.replace(method=_put(data, bmlmi.with_teacher(state.method, teacher, distill)))
    return Hooks(before_training=before_training)

  if any(distill) and int(opts["distill_epochs"]) > 0:
    distill_dir = os.path.join(run.workdir, "stages", "distill")
    frozen = (teacher_name, "fusion") + tuple(m for m, d in zip(modalities, distill)
                                              if not d and m != teacher_name)
    result = _run_stage(run, _override(config, {"methods.bmlmi.stage": "distill",
                                                "optim.epochs": int(opts["distill_epochs"])}),
                        distill_dir, Stage(frozen=frozen, hooks=unimodal_hooks))
    # A fixed number of distillation epochs, ending with the last: the stage has no fused
    # prediction to select on (its fusion head is not trained).
    branches = distill_dir, "latest"
    stages["distill"] = {"dir": distill_dir, "test_last": result["test_last"]}

  def joint_hooks(context):
    def calibrate(state, epoch: int | None):
      outputs = loop.collect(context.eval_step, state, data.eval("validation"))
      f1 = [bmlmi.macro_f1(outputs["label"], outputs["unimodal_pred"][:, i], classes)
            for i in range(len(modalities))]
      weights = bmlmi.calibrated_weights(f1, mi_teacher, record["label_entropy"], teacher,
                                         opts["weight_temperature"])
      when = "before epoch 0" if epoch is None else f"after epoch {epoch}"
      _log(f"[bmlmi] loss weights {when}: "
           + ", ".join(f"{m} {w:.3f}" for m, w in zip(modalities, weights)))
      method = bmlmi.with_weights(bmlmi.with_teacher(state.method, teacher, distill), weights)
      return state.replace(method=_put(data, method))

    def before_training(state):
      # Encoders and heads from the previous stage; the fused head starts fresh.
      return calibrate(load_branches(state, data, branches[0], modalities, branches[1]), None)

    return Hooks(before_training=before_training,
                 between_epochs=lambda epoch, state, val: calibrate(state, epoch))

  joint = _run_stage(run, _override(config, {"methods.bmlmi.stage": "joint"}), run.workdir,
                     Stage(hooks=joint_hooks))
  return _finish(run, joint, stages)


# name -> (Context -> Hooks)
HOOKS: dict[str, Callable[[Context], Hooks]] = {
    "mslr": _mslr_hooks,
    "pmr": _pmr_hooks,
    "gblending": _gblending_hooks,
    "agm": _agm_hooks,
}

# name -> ((model, method) -> eval step): methods whose own unimodal outputs are not what the
# library's eval step reports. AGM's Acc_<m> are the official Shapley outputs m_m, not the split
# fusion layer's.
EVAL_STEPS: dict[str, Callable[[Any, Any], Callable]] = {
    "agm": agm.make_shapley_eval_step,
}

# name -> (Run -> results): methods trained in stages
RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "udi": _udi,
    "bmlmi": _bmlmi,
}
