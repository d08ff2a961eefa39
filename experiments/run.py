"""The shared driver: estimate budgets → train → select on validation → test → run directory.

`python -m experiments.<dataset>` parses flags and calls `main(config)`. A run directory holds
`config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/{latest,best}`, `iib/budgets.json`,
`results.json`, `results.md` and the plots. Starting again with the same workdir resumes: the unimodal
phase is reused once finished, and training continues from the latest checkpoint.

The driver knows no method by name: it trains whatever `config.method` names through the method's
own record (`iib_jax.methods`): its compiled-step functions, its hooks between epochs, and, for a
method trained in stages, its `train` entry, which calls back `Stages.train_stage` per stage.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from experiments import build, plots, workdir as workdir_lib
from experiments.evaluate import contribution
from experiments.configs import common
from iib_jax import build as lib_build
from iib_jax import budget, checkpoint, distributed, estimate, loop, methods, state as state_lib
from iib_jax import train, writers

log = build.log


def _param_report(params) -> str:
  counts = state_lib.count_params(params)
  return ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items())


# ----------------------------------------------------------------------------------------------
# The unimodal phase


def unimodal_phase(config, data: build.Data, workdir: str,
                   writer: writers.MetricWriter) -> dict[str, Any]:
  """Trains every modality alone, then B_m, β, anchor and λ (reused when done).

  The record's β, anchor and λ are at the paper's τ = 0.07, for reading; a method that uses the
  budgets computes its own β from B_m with its own temperature.
  """
  iib_dir = os.path.join(workdir, "iib")
  path = os.path.join(iib_dir, "budgets.json")
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    log(f"IIB phase: reusing {path} (β = {np.round(record['beta'], 4).tolist()})")
    return record
  os.makedirs(iib_dir, exist_ok=True)
  # The phase has no checkpoints of its own: a killed phase starts again, so its records do.
  writer.truncate_after("unimodal", -1)
  modalities = tuple(config.modalities)
  spec = lib_build.method_spec(config, data.num_classes, data.steps_per_epoch(),
                               config.iib.epochs)
  method = methods.get_method("unimodal", None, spec)
  model = lib_build.model(config, data.num_classes, method)
  tx = lib_build.optimizer(config, unimodal=True)
  dev = data.devices
  state = state_lib.create_train_state(model, tx, method, jax.random.key(config.seed + 1),
                                       data.example(), sharding=dev.replicated)
  log(f"IIB phase: training {', '.join(modalities)} alone for up to {config.iib.epochs} epochs "
      f"(early stopping, patience {config.iib.patience}); parameters: {_param_report(state.params)}")
  train_step = train.make_train_step(model, tx, method, state_sharding=dev.replicated,
                                     batch_sharding=dev.batch)
  eval_step = train.make_eval_step(model, method, state_sharding=dev.replicated,
                                   batch_sharding=dev.batch)

  clock = [time.perf_counter()]
  epoch_seconds = []

  def on_epoch_end(epoch, state, train_metrics, val):
    now = time.perf_counter()
    epoch_seconds.append(now - clock[0])
    clock[0] = now
    step = (epoch + 1) * spec.steps_per_epoch
    writer.write(phase="unimodal", split="train", epoch=epoch, step=step, metrics=train_metrics)
    writer.write(phase="unimodal", split="val", epoch=epoch, step=step, metrics=val)
    log(build.epoch_line("unimodal", epoch, config.iib.epochs, train_metrics, val, modalities,
                         epoch_seconds[-1],
                         float(np.mean(epoch_seconds)) * (config.iib.epochs - epoch - 1)))

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
                                     tau=budget.PAPER_TAU, split=split, unimodal=summary)
  ckpt = checkpoint.Checkpointer(iib_dir)
  ckpt.save("best", 0, {"params": state.params, "batch_stats": state.batch_stats}, record)
  ckpt.close()
  if build.primary():
    estimate.write_json(path, record)
  log("IIB phase: " + ", ".join(f"{m}: val acc {summary[m]['val_acc']:.3f}, B = {b:.4f}"
                                 for m, b in zip(modalities, record["budgets"]))
      + f" → β = {np.round(record['beta'], 4).tolist()}, anchor {record['anchor']}")
  return record


def warm_start(config) -> bool:
  """Whether the run's methods start their encoders from the unimodal phase (`config.start`)."""
  return config.get("start", "fresh") == "warm"


def needs_unimodal_phase(config, name: str) -> bool:
  """Whether training method `name` needs the unimodal phase first (its budgets, its models, or
  the warm start)."""
  return methods.definition(name).needs_budgets or warm_start(config)


def protocol(config) -> dict[str, Any]:
  """The run-wide choices every method of a comparison shares, as results and tables state them."""
  o = lib_build.optimizer_settings(config)
  return {"start": config.get("start", "fresh"), "optimizer": config.get("optimizer", "shared"),
          "optim": {"name": o.name, "learning_rate": float(o.learning_rate),
                    "weight_decay": float(o.weight_decay), "momentum": float(o.momentum),
                    "batch_size": int(config.optim.batch_size),
                    "epochs": int(config.optim.epochs)}}


def describe_protocol(p: Mapping[str, Any]) -> str:
  """One line: the start and the optimiser of a run."""
  o = p["optim"]
  extra = f", momentum {o['momentum']:g}" if o["name"] == "sgd" else ""
  decay = f", weight decay {o['weight_decay']:g}" if o["weight_decay"] else ""
  start = ("encoders from the unimodal phase (warm)" if p["start"] == "warm"
           else "encoders from a random initialisation (fresh)")
  return (f"every method: {start}; {o['name']} lr {o['learning_rate']:g}{extra}{decay} "
          f"({p['optimizer']} optimiser), batch {o['batch_size']}, {o['epochs']} epochs")


# ----------------------------------------------------------------------------------------------
# One training phase


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a method trained in stages.

  Attributes:
    frozen: top-level parameter groups (modality names, "fusion") the optimiser keeps fixed.
    hooks: Context -> Hooks of this stage (instead of the method's own).
  """
  frozen: tuple[str, ...] = ()
  hooks: Callable[[Any], methods.Hooks] | None = None


def train_method(config, name: str, data: build.Data, workdir: str,
                 budgets: Mapping[str, Any] | None, unimodal_dir: str | None = None,
                 stage: Stage | None = None) -> dict[str, Any]:
  """Trains one method, selects its best epoch on validation, evaluates best and last on test.

  `unimodal_dir` is the unimodal phase's directory (its `budgets.json` and `checkpoints/best`,
  for warm starts and staged methods); default `<workdir>/iib`. A method trained in stages runs
  its own `train`, which calls back here once per stage.
  """
  definition = methods.definition(name)
  unimodal_dir = unimodal_dir or os.path.join(workdir, "iib")
  options = lib_build.method_options(config, name)
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):
    # A finished run (its fingerprint was checked by the caller): nothing is trained or written.
    with open(done) as f:
      results = json.load(f)
    log(f"[{name}] finished earlier in {workdir}: reusing its results")
    return results
  if stage is None and definition.train is not None:
    return definition.train(Stages(config, name, data, workdir, budgets, unimodal_dir), options)
  os.makedirs(workdir, exist_ok=True)
  modalities = tuple(config.modalities)
  epochs = config.optim.epochs
  spec = lib_build.method_spec(config, data.num_classes, data.steps_per_epoch(), epochs,
                               budgets)
  method = definition.build(options, spec)
  model = lib_build.model(config, data.num_classes, method)
  tx = lib_build.optimizer(config, stage.frozen if stage is not None else ())
  dev = data.devices
  writer = writers.MetricWriter(workdir, modalities)
  ckpt = checkpoint.Checkpointer(workdir)
  init = state_lib.make_state_init(model, tx, method, dev.replicated)
  example = data.example()
  rng = jax.random.key(config.seed)
  start_epoch, best = 0, {"epoch": -1, "acc_fused": -1.0}
  if ckpt.epoch("latest") is not None:
    template = checkpoint.abstract(jax.eval_shape(lambda: init(rng, example)), dev.replicated)
    state, record = ckpt.restore("latest", template)
    start_epoch = record["epoch"] + 1
    best = record["best"]
    writer.truncate_after("multimodal", record["epoch"])
    log(f"[{name}] resuming from the checkpoint of epoch {start_epoch} in {workdir}")
  else:
    state = init(rng, example)
    if warm_start(config) and stage is None:   # a stage loads its own branches
      state = checkpoint.restore_branches(state, unimodal_dir, modalities)
  log(f"[{name}] parameters: {_param_report(state.params)}")
  train_step = train.make_train_step(model, tx, method, state_sharding=dev.replicated,
                                     batch_sharding=dev.batch)
  eval_step = train.make_eval_step(model, method, state_sharding=dev.replicated,
                                   batch_sharding=dev.batch)
  context = build.Context(config=config, options=options, data=data, workdir=workdir,
                          model=model, method=method, spec=spec, train_step=train_step,
                          eval_step=eval_step, seed=int(config.seed))
  make_hooks = stage.hooks if stage is not None and stage.hooks is not None else method.hooks
  hooks = make_hooks(context) if make_hooks is not None else methods.Hooks()
  train_batches = hooks.train_batches or (lambda e: data.train(e, config.seed))
  if start_epoch == 0:
    state = hooks.before_training(state)

  def on_log(step, metrics):
    # `step` counts the steps done: the window's last step is step − 1, in epoch (step − 1) // n.
    writer.write(phase="multimodal", split="train_steps",
                 epoch=(step - 1) // spec.steps_per_epoch, step=step, metrics=metrics)

  clock = [time.perf_counter()]
  epoch_seconds = []

  def on_epoch_end(epoch, state, train_metrics, val):
    now = time.perf_counter()
    epoch_seconds.append(now - clock[0])
    clock[0] = now
    log(build.epoch_line(name, epoch, epochs, train_metrics, val, modalities, epoch_seconds[-1],
                         float(np.mean(epoch_seconds)) * (epochs - epoch - 1)))
    step = (epoch + 1) * spec.steps_per_epoch
    # The epoch's records first, then its checkpoints (writers.MetricWriter.truncate_after).
    writer.write(phase="multimodal", split="train", epoch=epoch, step=step, metrics=train_metrics)
    writer.write(phase="multimodal", split="val", epoch=epoch, step=step, metrics=val)
    if val["acc_fused"] > best["acc_fused"]:     # selection on validation only
      best.update(epoch=epoch, acc_fused=val["acc_fused"])
      ckpt.save("best", epoch, state, {"epoch": epoch, "val": val})
    ckpt.save("latest", epoch, state, {"epoch": epoch, "best": dict(best)})
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
  best_state, best_record = ckpt.restore("best", checkpoint.abstract(state))
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
      "protocol": protocol(config),
      # The field's three perspectives beside accuracy: each modality's share of the fused
      # prediction (imbalance degree) and the cost of an epoch (complexity).
      "contribution": contribution.contribution(eval_step, best_state, lambda: data.eval("test"),
                                                modalities, build.modality_kinds(config)),
      "cost": cost_of(epoch_seconds),
  }
  writer.write(phase="multimodal", split="test", epoch=best_record["epoch"],
               step=int(best_state.step), metrics=results["test_best"])
  writer.close()
  ckpt.close()
  if build.primary():
    if "weights" in test_best:
      np.save(os.path.join(workdir, "test_weights.npy"), test_best["weights"])
    plots.save_all(workdir, modalities, results)
    estimate.write_json(done, results)        # last: its presence marks the run finished
  return results


def cost_of(epoch_seconds: Sequence[float]) -> dict[str, Any]:
  """Train time per epoch (the median of the epochs this process ran, the first, which
  compiles, left out when there are others) and the peak memory where it is measurable: the
  accelerator's peak bytes in use, and this process's peak resident memory (every phase so far)."""
  timed = list(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds)
  stats_ = jax.local_devices()[0].memory_stats() or {}
  return {"epoch_seconds": float(np.median(timed)) if timed else None,
          "epochs_timed": len(timed),
          "device_peak_bytes": stats_.get("peak_bytes_in_use"),
          "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class Stages:
  """`iib_jax.methods.base.Stages`: what a method trained in stages uses. Earlier stages run in
  `<workdir>/stages/<stage>`; the last one in the workdir, so the run directory looks like any
  other (checkpoints/best, results.json)."""

  def __init__(self, config, name: str, data: build.Data, workdir: str,
               budgets: Mapping[str, Any] | None, unimodal_dir: str):
    self.config, self.name, self.data, self.workdir = config, name, data, workdir
    self.budgets = budgets
    self.modalities = tuple(config.modalities)
    self.unimodal_dir = unimodal_dir
    if budgets is None or not os.path.exists(os.path.join(self.unimodal_dir, "budgets.json")):
      raise ValueError(f"{name} needs the unimodal phase in {self.unimodal_dir}: train it "
                       "through experiments.run or experiments.sweep, which run it first")
    self._unimodal: build.UnimodalModels | None = None

  def train_stage(self, overrides, workdir, *, frozen=(), hooks=None):
    config = common.override(self.config, overrides)
    path = os.path.join(workdir, "results.json")
    if workdir != self.workdir and os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    if workdir != self.workdir and build.primary():
      # The stage's own config, so `experiments.evaluate` can rebuild its model.
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    return train_method(config, self.name, self.data, workdir, self.budgets, self.unimodal_dir,
                        Stage(tuple(frozen), hooks))

  def _models(self) -> build.UnimodalModels:
    if self._unimodal is None:
      self._unimodal = build.UnimodalModels(self.config, self.data, self.unimodal_dir)
    return self._unimodal

  def unimodal_outputs(self, split):
    return self._models().outputs(split)

  def unimodal_features(self, split):
    return self._models().features(split)

  def load_branches(self, state, source, groups, which="best"):
    return checkpoint.restore_branches(state, source, groups, which)

  def put(self, tree):
    return self.data.devices.replicate(tree)

  def log(self, message):
    log(message)

  def record(self, name, compute):
    path = os.path.join(self.workdir, "stages", f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    record = compute()                  # every process computes it, the same
    if build.primary():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      estimate.write_json(path, record)
    return record

  def finish(self, results, stages):
    results = {**results, "stages": dict(stages)}
    if build.primary():
      estimate.write_json(os.path.join(self.workdir, "results.json"), results)
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
                     dataset: str, budgets: Mapping[str, Any] | None,
                     run_protocol: Mapping[str, Any] | None = None) -> str:
  """A Table I row per method (test accuracy of the epoch chosen on validation), β and weights,
  under the protocol every row shares."""
  head = ["Method", "Acc_m"] + [f"Acc_{m}" for m in modalities] + ["Avg"]
  lines = [f"## {dataset}: test accuracy (%) of the epoch chosen on validation", ""]
  if run_protocol:
    lines += [f"Protocol: {describe_protocol(run_protocol)}.", ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
  keeping the run-level choices of the command line (seed, workdir, method, compare_with, the
  start and the optimiser).
  """
  if config.data.name in ("synthetic", "synthetic_features"):
    return config
  from experiments.configs import synthetic
  demo = synthetic.get_config()
  for key in ("seed", "workdir", "method", "progress", "start", "optimizer", "overwrite"):
    demo[key] = config[key]
  if config.compare_with:
    demo.compare_with = config.compare_with
  return demo


def plan(config, names: Sequence[str], workdir: str) -> dict[str, dict[str, Any]]:
  """{directory: fingerprint} of every directory a run of `names` in `workdir` trains in."""
  info = lib_build.dataset_info(config.data.dir)
  dirs = {}
  if any(needs_unimodal_phase(config, n) for n in names):
    dirs[os.path.join(workdir, "iib")] = workdir_lib.fingerprint(config, info,
                                                                  workdir_lib.UNIMODAL)
  for name in names:
    sub = workdir if name == config.method else os.path.join(workdir, "compare", name)
    dirs[sub] = workdir_lib.fingerprint(config, info, name)
  return dirs


def prepare_directories(config, dirs: Mapping[str, Mapping[str, Any]]) -> None:
  """Checks every directory of a run before anything is written (a mismatch raises
  `workdir.WorkdirMismatch`; `config.overwrite` clears them instead), then verifies the dataset's
  shards (`iib_jax.data.DatasetError`), then records the fingerprints."""
  for directory, fp in dirs.items():
    if not config.overwrite:
      workdir_lib.check(directory, fp)
  build.verify_dataset(config.data.dir)
  # Every process has looked at the directories before the first one changes them.
  distributed.barrier("directories checked")
  if build.primary():
    for directory, fp in dirs.items():
      if config.overwrite:
        workdir_lib.clear(directory)
      workdir_lib.record(directory, fp)
  distributed.barrier("directories ready")


def main(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the whole experiment described by `config`; returns the results per method.

  Nothing is written before the config is valid, every directory of the run is either new or was
  made from the same configuration, data and code (`experiments.workdir`), and every shard of the
  dataset is as its preparation recorded it.
  """
  config = ml_collections.ConfigDict(config.to_dict())        # unlocked private copy
  if not config.data.dir:
    config = synthetic_demo(config)
  common.validate(config)
  if not config.workdir:
    config.workdir = os.path.join("runs", f"{config.data.name}_{config.method}_seed{config.seed}")
  workdir = config.workdir
  t0 = time.time()
  devices = build.Devices()
  if config.optim.batch_size % devices.count:
    raise ValueError(f"invalid config: optim.batch_size={config.optim.batch_size!r}; accepted: a "
                     f"multiple of the number of devices ({devices.count})")
  names = [config.method] + [m for m in config.compare_with if m != config.method]
  dirs = plan(config, names, workdir)
  prepare_directories(config, dirs)
  if build.primary():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  with build.log_to(os.path.join(workdir, "run.log")):
    return _run(config, names, devices, t0)


def _run(config, names: Sequence[str], devices: build.Devices, t0: float) -> dict[str, Any]:
  workdir = config.workdir
  data = build.Data(config, config.data.dir, devices)
  log(f"data: {config.data.dir} ({data.num_classes} classes; "
      + ", ".join(f"{s} {n}" for s, n in data.info["splits"].items()) + f"); devices: "
      f"{devices.count} × {jax.devices()[0].device_kind}")
  writer = writers.MetricWriter(workdir, config.modalities)
  budgets = (unimodal_phase(config, data, workdir, writer)
             if any(needs_unimodal_phase(config, n) for n in names) else None)
  writer.close()
  rows = []
  for name in names:
    sub = workdir if name == config.method else os.path.join(workdir, "compare", name)
    rows.append(train_method(config, name, data, sub, budgets, os.path.join(workdir, "iib")))
  markdown = results_markdown(rows, config.modalities, config.data.name, budgets,
                              protocol(config))
  markdown += f"\nWall time: {time.time() - t0:.0f} s on {devices.count} × " \
              f"{jax.devices()[0].device_kind}.\n"
  if build.primary():
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(markdown)
    estimate.write_json(os.path.join(workdir, "results_all.json"),
                        {"budgets": budgets, "runs": rows})
  log("\n" + markdown)
  return {r["method"]: r for r in rows}


def synthetic_demo(config):
  """`config` on the synthetic dataset, generated and prepared once into the cache."""
  from data_prep import synthetic
  cache = config.data.cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "iib_jax")
  demo = synthetic_config(config)
  log(f"Synthetic data: {cache} (generated and prepared once, then reused).")
  if demo.data.name == "synthetic_features":
    from data_prep import synthetic_features
    f = demo.data.features
    demo.data.dir = synthetic_features.ensure_features(
        os.path.join(cache, "features"), modalities=tuple(demo.modalities), **f.to_dict())
    return demo
  s = demo.data.get("synthetic")
  if s is None or s.legacy:
    demo.data.dir = synthetic.ensure_synthetic(cache, dial=None)
  else:
    demo.data.dir = synthetic.ensure_synthetic(cache, dial=s.dial,
                                               clips_per_class=s.clips_per_class,
                                               test_fraction=s.test_fraction)
  return demo
