"""The shared driver: estimate budgets → train → select on validation → test → run directory.

`python -m experiments.<dataset>` parses flags and calls `main(config)`. A run directory holds
`config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/{latest,best}`, `iib/budgets.json`,
`results.json`, `results.md` and the plots. Starting again with the same workdir resumes: the unimodal
phase is reused once finished, and training continues from the latest checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from experiments import phases, plots
from experiments.configs import common
from iib_jax import checkpoint, estimate, loop, methods, state as state_lib, train, writers
from iib_jax.models import build_model

MODEL_FIELDS = ("gate_hidden", "gate_pool", "detach_uncertainty", "detach_gate_features")


def log(message: str) -> None:
  print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# Data and devices


class Data:
  """The prepared dataset as the runner needs it: batches per split, sharded onto the mesh."""

  def __init__(self, config: ml_collections.ConfigDict, data_dir: str, mesh_info: "Devices"):
    from iib_jax import data as data_lib          # TensorFlow is imported here, not earlier
    self._lib = data_lib
    self.dir = data_dir
    self.config = config
    self.devices = mesh_info
    self.info = data_lib.load_info(data_dir)
    self.num_classes = int(self.info["num_classes"])

  def _options(self) -> dict[str, Any]:
    c = self.config.data
    return dict(modalities={m: m for m in self.config.modalities}, num_frames=c.num_frames,
                image_size=c.image_size, audio_frames=c.audio_frames, audio_norm=c.audio_norm,
                frames_dtype=c.get("frames_dtype", "float32"))

  def num_examples(self, split: str) -> int:
    return int(self.info["splits"][split])

  def steps_per_epoch(self) -> int:
    return self.num_examples("train") // self.config.optim.batch_size

  def train(self, epoch: int, seed: int):
    ds = self._lib.make_dataset(self.dir, "train", batch_size=self.config.optim.batch_size,
                                train=True, seed=seed, epoch=epoch, **self._options())
    return self.devices.put(ds)

  def eval(self, split: str):
    # Evaluation pads its last batch anyway, so round the batch up to fill every device.
    size = -(-self.config.eval.batch_size // self.devices.count) * self.devices.count
    ds = self._lib.make_dataset(self.dir, split, batch_size=size, train=False, **self._options())
    return self.devices.put(ds)

  def example(self) -> dict[str, np.ndarray]:
    ds = self._lib.make_dataset(self.dir, "validation", batch_size=2, train=False,
                                **self._options())
    return next(iter(ds))


class Devices:
  """One mesh with a "data" axis over every visible device: state replicated, batch sharded."""

  def __init__(self):
    from iib_jax import sharding
    self._sharding = sharding
    self.mesh = sharding.data_mesh()
    self.replicated = sharding.replicated_sharding(self.mesh)
    self.batch = sharding.batch_sharding(self.mesh)
    self.count = self.mesh.size

  def put(self, batches):
    """Host batches → global arrays on the batch sharding, two batches ahead (clip ids and other
    non-numeric keys stay on the host)."""
    return self._sharding.prefetch_to_device(batches, self.batch, size=2)


# ----------------------------------------------------------------------------------------------
# One training phase


def _model(config, modalities, num_classes, method: methods.Method):
  fields = {k: config.model[k] for k in MODEL_FIELDS}
  fields.update(method.model)
  return build_model(modalities, dict(config.model.encoders), num_classes,
                     feature_dim=config.model.feature_dim, encoder_size=config.model.encoder_size,
                     dtype=config.model.dtype, **fields)


def _tx(config):
  o = config.optim
  return train.make_optimizer(o.name, o.learning_rate, o.weight_decay, o.momentum)


def _param_report(params) -> str:
  counts = state_lib.count_params(params)
  return ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items())


def iib_phase(config, data: Data, workdir: str, writer: writers.MetricWriter) -> dict[str, Any]:
  """The unimodal phase: trains every modality alone, then B_m, β, anchor, λ (reused if done)."""
  iib_dir = os.path.join(workdir, "iib")
  path = os.path.join(iib_dir, "budgets.json")
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    log(f"IIB phase: reusing {path} (β = {np.round(record['beta'], 4).tolist()})")
    return record
  os.makedirs(iib_dir, exist_ok=True)
  modalities = tuple(config.modalities)
  spec = methods.MethodSpec(modalities, data.num_classes, config.model.feature_dim,
                            data.steps_per_epoch(), config.iib.epochs)
  method = methods.get_method("unimodal", {}, spec)
  model = _model(config, modalities, data.num_classes, method)
  tx = _tx(config)
  dev = data.devices
  state = state_lib.create_train_state(model, tx, method, jax.random.key(config.seed + 1),
                                       data.example(), sharding=dev.replicated)
  log(f"IIB phase: training {', '.join(modalities)} alone for up to {config.iib.epochs} epochs "
      f"(early stopping, patience {config.iib.patience}); parameters: {_param_report(state.params)}")
  train_step = train.make_train_step(model, tx, method, state_sharding=dev.replicated,
                                     batch_sharding=dev.batch)
  eval_step = train.make_eval_step(model, method, state_sharding=dev.replicated,
                                   batch_sharding=dev.batch)

  def on_epoch_end(epoch, state, train_metrics, val):
    step = (epoch + 1) * spec.steps_per_epoch
    writer.write(phase="unimodal", split="train", epoch=epoch, step=step, metrics=train_metrics)
    writer.write(phase="unimodal", split="val", epoch=epoch, step=step, metrics=val)

  state, summary, _ = estimate.train_unimodal(
      train_step, eval_step, state, train_batches=lambda e: data.train(e, config.seed + 1),
      val_batches=lambda: data.eval("validation"), modalities=modalities,
      epochs=config.iib.epochs, patience=config.iib.patience, log_every=config.log_every_steps,
      steps_per_epoch=spec.steps_per_epoch, on_epoch_end=on_epoch_end,
      show_progress=config.progress)
  split = "train" if config.iib.budget_split == "train" else "validation"
  # Each modality alone on test: the reference for how much a multimodal model uses it.
  test = loop.evaluate(eval_step, state, data.eval("test"), modalities)
  for m in modalities:
    summary[m]["test_acc"] = test[f"acc_{m}"]
  record = estimate.estimate_budgets(eval_step, state, data.eval(split), modalities,
                                     tau=config.methods.iibalance.tau, split=split,
                                     unimodal=summary)
  ckpt = checkpoint.Checkpointer(iib_dir)
  ckpt.save("best", 0, {"params": state.params, "batch_stats": state.batch_stats}, record)
  ckpt.close()
  estimate.write_json(path, record)
  log("IIB phase: " + ", ".join(f"{m}: val acc {summary[m]['val_acc']:.3f}, B = {b:.4f}"
                                 for m, b in zip(modalities, record["budgets"]))
      + f" → β = {np.round(record['beta'], 4).tolist()}, anchor {record['anchor']}")
  return record


def warm_start(config, name: str) -> bool:
  """Whether method `name` starts its encoders from the unimodal phase: `iib.warm_start` for
  every method, or the method's own `warm_start` option (IIBalance's default, docs/FIDELITY.md)."""
  return bool(config.iib.warm_start or config.methods.get(name, {}).get("warm_start", False))


def _warm_start(state, iib_dir, modalities):
  """Copies each modality's branch from the unimodal phase into a fresh multimodal state."""
  ckpt = checkpoint.Checkpointer(iib_dir)
  abstract = {"params": {m: state.params[m] for m in modalities},
              "batch_stats": {m: state.batch_stats[m] for m in modalities
                              if m in state.batch_stats}}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          abstract)
  ckpt_state = ckpt._managers["best"].restore(0, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore(abstract)))["state"]
  ckpt.close()
  return state.replace(params={**state.params, **ckpt_state["params"]},
                       batch_stats={**state.batch_stats, **ckpt_state["batch_stats"]})


def train_method(config, name: str, data: Data, workdir: str,
                 budgets: Mapping[str, Any] | None, iib_dir: str | None = None,
                 stage: phases.Stage | None = None) -> dict[str, Any]:
  """Trains one method, selects its best epoch on validation, evaluates best and last on test.

  `iib_dir` holds the unimodal phase (for `iib.warm_start`); default `<workdir>/iib`. A method
  trained in stages (`phases.RUNNERS`) calls back here once per `stage`.
  """
  if stage is None and name in phases.RUNNERS:
    return phases.RUNNERS[name](phases.Run(train_method, config, name, data, workdir, budgets,
                                           iib_dir or os.path.join(workdir, "iib")))
  os.makedirs(workdir, exist_ok=True)
  modalities = tuple(config.modalities)
  epochs = config.optim.epochs
  spec = methods.MethodSpec(modalities, data.num_classes, config.model.feature_dim,
                            data.steps_per_epoch(), epochs,
                            tuple(budgets["budgets"]) if budgets else None)
  method = methods.get_method(name, phases.method_options(config, name), spec)
  model = _model(config, modalities, data.num_classes, method)
  tx = _tx(config)
  if stage is not None and stage.frozen:
    tx = methods.base.freeze_branches(tx, stage.frozen)
  dev = data.devices
  writer = writers.MetricWriter(workdir, modalities)
  ckpt = checkpoint.Checkpointer(workdir)
  init = state_lib.make_state_init(model, tx, method, dev.replicated)
  example = data.example()
  rng = jax.random.key(config.seed)
  start_epoch, best = 0, {"epoch": -1, "acc_fused": -1.0}
  if ckpt.epoch("latest") is not None:
    abstract = jax.eval_shape(lambda: init(rng, example))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev.replicated), abstract)
    state, record = ckpt.restore("latest", abstract)
    start_epoch = record["epoch"] + 1
    best = record["best"]
    writer.truncate_after("multimodal", record["epoch"])
    log(f"[{name}] resuming from the checkpoint of epoch {start_epoch} in {workdir}")
  else:
    state = init(rng, example)
    if warm_start(config, name) and stage is None:   # a stage loads its own branches
      state = _warm_start(state, iib_dir or os.path.join(workdir, "iib"), modalities)
  log(f"[{name}] parameters: {_param_report(state.params)}")
  train_step = train.make_train_step(model, tx, method, state_sharding=dev.replicated,
                                     batch_sharding=dev.batch)
  eval_step = train.make_eval_step(model, method, state_sharding=dev.replicated,
                                   batch_sharding=dev.batch)
  context = phases.Context(config=config, data=data, workdir=workdir, model=model, method=method,
                           tx=tx, train_step=train_step, eval_step=eval_step, spec=spec,
                           budgets=budgets)
  hooks = (stage.hooks(context) if stage is not None and stage.hooks is not None
           else phases.hooks(name, context))
  eval_step = hooks.eval_step or eval_step
  train_batches = hooks.train_batches or (lambda e: data.train(e, config.seed))
  if start_epoch == 0:
    state = hooks.before_training(state)

  def on_log(step, metrics):
    writer.write(phase="multimodal", split="train_steps", epoch=step // spec.steps_per_epoch,
                 step=step, metrics=metrics)

  def on_epoch_end(epoch, state, train_metrics, val):
    step = (epoch + 1) * spec.steps_per_epoch
    if val["acc_fused"] > best["acc_fused"]:     # selection on validation only
      best.update(epoch=epoch, acc_fused=val["acc_fused"])
      ckpt.save("best", epoch, state, {"epoch": epoch, "val": val})
    ckpt.save("latest", epoch, state, {"epoch": epoch, "best": dict(best)})
    writer.write(phase="multimodal", split="train", epoch=epoch, step=step, metrics=train_metrics)
    writer.write(phase="multimodal", split="val", epoch=epoch, step=step, metrics=val)
    return False

  if start_epoch < epochs:
    state, _ = loop.fit(train_step, eval_step, state, train_batches=train_batches,
                        val_batches=lambda: data.eval("validation"), modalities=modalities,
                        epochs=epochs, start_epoch=start_epoch, log_every=config.log_every_steps,
                        on_epoch_end=on_epoch_end, on_log=on_log,
                        between_epochs=hooks.between_epochs,
                        steps_per_epoch=spec.steps_per_epoch, desc=name,
                        show_progress=config.progress)

  test_last = loop.collect(eval_step, state, data.eval("test"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  best_state, best_record = ckpt.restore("best", abstract)
  test_best = loop.collect(eval_step, best_state, data.eval("test"))
  results = {
      "method": name,
      "modalities": list(modalities),
      "best_epoch": int(best_record["epoch"]),
      "val_best": best_record["val"],
      "test_best": loop.summarize(test_best, modalities),
      "test_last": loop.summarize(test_last, modalities),
      "beta": [float(b) for b in np.asarray(best_state.method.beta)]
              if hasattr(best_state.method, "beta") else None,
  }
  writer.write(phase="multimodal", split="test", epoch=best_record["epoch"],
               step=int(best_state.step), metrics=results["test_best"])
  if "weights" in test_best:
    np.save(os.path.join(workdir, "test_weights.npy"), test_best["weights"])
  estimate.write_json(os.path.join(workdir, "results.json"), results)
  writer.close()
  ckpt.close()
  plots.save_all(workdir, modalities)
  return results


# ----------------------------------------------------------------------------------------------
# Tables


def table_row(results: Mapping[str, Any], modalities: Sequence[str]) -> list[str]:
  t = results["test_best"]
  cells = [results["method"], f"{100 * t['acc_fused']:.2f}"]
  cells += [f"{100 * t[f'acc_{m}']:.2f}" for m in modalities]
  cells.append(f"{100 * t['acc_avg']:.2f}")
  return cells


def results_markdown(rows: Sequence[Mapping[str, Any]], modalities: Sequence[str],
                     dataset: str, budgets: Mapping[str, Any] | None) -> str:
  """A Table I row per method (test accuracy of the epoch chosen on validation), β and weights."""
  head = ["Method", "Acc_m"] + [f"Acc_{m}" for m in modalities] + ["Avg"]
  lines = [f"## {dataset}: test accuracy (%) of the epoch chosen on validation", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(table_row(r, modalities)) + " |" for r in rows]
  if budgets and "test_acc" in budgets["unimodal"][modalities[0]]:
    lines.append("| each modality alone (IIB phase) | – | " + " | ".join(
        f"{100 * budgets['unimodal'][m]['test_acc']:.2f}" for m in modalities) + " | – |")
  if budgets:
    lines += ["", "IIB prior: " + ", ".join(
        f"{m}: B = {b:.4f}, β = {beta:.4f}" for m, b, beta in
        zip(modalities, budgets["budgets"], budgets["beta"])) + f"; anchor {budgets['anchor']}"]
  for r in rows:
    weights = [r["test_best"].get(f"weight_{m}") for m in modalities]
    if None not in weights:
      lines.append(f"Mean fusion weights of {r['method']} on test: " + ", ".join(
          f"{m} {w:.3f}" for m, w in zip(modalities, weights)))
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Entry


def synthetic_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU-scaled synthetic demonstration, used when a dataset command gets no data.dir.

  A synthetic config is used as it is; another dataset's config is replaced by the synthetic one,
  keeping the run-level choices of the command line (seed, workdir, method, compare_with).
  """
  if config.data.name == "synthetic":
    return config
  from experiments.configs import synthetic
  demo = synthetic.get_config()
  for key in ("seed", "workdir", "method", "progress"):
    demo[key] = config[key]
  if config.compare_with:
    demo.compare_with = config.compare_with
  return demo


def main(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the whole experiment described by `config`; returns the results per method."""
  config = ml_collections.ConfigDict(config.to_dict())        # unlocked private copy
  if not config.data.dir:
    config = _synthetic_demo(config)
  common.validate(config)
  if not config.workdir:
    config.workdir = os.path.join("runs", f"{config.data.name}_{config.method}_seed{config.seed}")
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  t0 = time.time()
  devices = Devices()
  if config.optim.batch_size % devices.count:
    raise ValueError(f"invalid config: optim.batch_size={config.optim.batch_size!r}; accepted: a "
                     f"multiple of the number of devices ({devices.count})")
  data = Data(config, config.data.dir, devices)
  log(f"data: {config.data.dir} ({data.num_classes} classes; "
      + ", ".join(f"{s} {n}" for s, n in data.info["splits"].items()) + f"); devices: "
      f"{devices.count} × {jax.devices()[0].device_kind}")
  names = [config.method] + [m for m in config.compare_with if m != config.method]
  need_budgets = any(warm_start(config, n) for n in names) or any(methods.get_method(
      n, config.methods.get(n, {}), methods.MethodSpec(
          tuple(config.modalities), 2, 1, 1, 1, (0.0,) * len(config.modalities))).needs_budgets
      for n in names)
  writer = writers.MetricWriter(workdir, config.modalities)
  budgets = iib_phase(config, data, workdir, writer) if need_budgets else None
  writer.close()
  rows = []
  for name in names:
    sub = workdir if name == config.method else os.path.join(workdir, "compare", name)
    rows.append(train_method(config, name, data, sub, budgets, os.path.join(workdir, "iib")))
  markdown = results_markdown(rows, config.modalities, config.data.name, budgets)
  markdown += f"\nWall time: {time.time() - t0:.0f} s on {devices.count} × " \
              f"{jax.devices()[0].device_kind}.\n"
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown)
  estimate.write_json(os.path.join(workdir, "results_all.json"),
                      {"budgets": budgets, "runs": rows})
  log("\n" + markdown)
  return {r["method"]: r for r in rows}


def _synthetic_demo(config):
  from data_prep import synthetic
  cache = config.data.cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "iib_jax")
  demo = synthetic_config(config)
  log(f"Synthetic data: {cache} (generated and prepared once, then reused).")
  demo.data.dir = synthetic.ensure_synthetic(cache)
  return demo
