"""Linear probes and robustness of trained run directories.

  python -m experiments.evaluate --workdir runs/synthetic_iibalance_seed0
  python -m experiments.evaluate --workdir runs/table1/synthetic/seed0/iibalance \
      --workdir runs/table1/synthetic/seed0/joint --out runs/table1/synthetic/evaluation

A run directory is anything the runner trained: it has checkpoints/best and a config.json (a
compare run `<workdir>/compare/<method>` uses its parent's). The model is rebuilt from the config
and the best checkpoint (selected on validation); everything below is measured on the test split.

  (a) Linear probes: a multinomial logistic regression on each frozen encoder's features z_m
      (fitted on the training split with evaluation transforms, full batch, on device), beside the
      method's own unimodal prediction (its Table I Acc_<m>).
  (b) Robustness: test accuracy with one modality removed (its input zeroed) and under corruption
      of increasing strength — Gaussian noise on audio features and on frames (std = level × the
      modality's clean input std), occlusion of frames by a zeroed square (side = level × frame
      side, one random place per clip) — with the mean fusion weights at each level when the model
      fuses with weights.
Writes `W/evaluation.json`, `W/evaluation.md`, `W/robustness.png` and `W/probes.png`; with several
workdirs each W still gets its JSON and markdown, and the combined files (one line per run) go into
`--out`.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import app, flags


def _define_flags() -> None:
  # Defined when run as a command, not on import: the functions below are also a library.
  flags.DEFINE_multi_string("workdir", None, "a trained run directory (repeatable)")
  flags.DEFINE_string("out", None, "where the combined files of several runs go (required then)")
  flags.DEFINE_string("data_dir", None, "the prepared dataset, if not the one in config.json")
  flags.DEFINE_list("noise_levels", ["0", "0.5", "1", "2", "4"],
                    "Gaussian noise std, in units of the modality's clean input std")
  flags.DEFINE_list("occlusion_levels", ["0", "0.25", "0.5", "0.75", "1"],
                    "side of the zeroed square, as a fraction of the frame side")
  flags.DEFINE_integer("probe_steps", 500, "full-batch Adam steps of each linear probe")
  flags.DEFINE_float("probe_l2", 1e-4, "L2 penalty of the linear probes")
  flags.DEFINE_integer("seed", 0, "seed of the corruption noise and occlusion positions")


def _nearest_config(workdir: str) -> str:
  directory = os.path.abspath(workdir)
  for _ in range(3):
    path = os.path.join(directory, "config.json")
    if os.path.exists(path):
      return path
    directory = os.path.dirname(directory)
  raise FileNotFoundError(f"no config.json in {workdir} or its parents: is it a run directory?")


class Run:
  """A trained run restored for inference: config, data, model, method, state and steps."""

  def __init__(self, workdir: str, devices, data_dir: str | None = None):
    import jax
    import ml_collections
    from experiments import phases, run as runner
    from iib_jax import methods, state as state_lib, train
    from iib_jax.models.encoders import ENCODER_INPUT
    self.workdir = workdir
    with open(_nearest_config(workdir)) as f:
      config = ml_collections.ConfigDict(json.load(f))
    if data_dir:
      config.data.dir = data_dir
    results_path = os.path.join(workdir, "results.json")
    self.results = None
    if os.path.exists(results_path):
      with open(results_path) as f:
        self.results = json.load(f)
    self.name = self.results["method"] if self.results else config.method
    self.config = config
    self.modalities = tuple(config.modalities)
    self.data = runner.Data(config, config.data.dir, devices)
    budgets = None
    try:
      with open(os.path.join(phases.find_unimodal_dir(workdir), "iib", "budgets.json")) as f:
        budgets = json.load(f)
    except FileNotFoundError:
      pass
    spec = methods.MethodSpec(self.modalities, self.data.num_classes, config.model.feature_dim,
                              self.data.steps_per_epoch(), config.optim.epochs,
                              tuple(budgets["budgets"]) if budgets else None)
    options = phases.method_options(config, self.name)
    self.method = methods.get_method(self.name, options, spec)
    if self.method.needs_budgets and budgets is None and self.name not in phases.RUNNERS:
      raise FileNotFoundError(f"{self.name} needs the unimodal phase's budgets: no iib/budgets.json"
                              f" in {workdir} or its parents")
    self.model = runner._model(config, self.modalities, self.data.num_classes, self.method)
    init = state_lib.make_state_init(self.model, runner._tx(config), self.method)
    abstract = jax.eval_shape(lambda: init(jax.random.key(config.seed), self.data.example()))
    # The parameters, statistics and method state of the best checkpoint, whatever optimiser
    # state it was saved with (a staged run freezes parameter groups).
    saved = phases.restore_arrays(workdir, "best", devices.replicated)
    self.state = abstract.replace(
        step=saved["step"], params=phases.fill_like(abstract.params, saved["params"]),
        batch_stats=phases.fill_like(abstract.batch_stats, saved.get("batch_stats") or {}),
        method=phases.fill_like(abstract.method, saved.get("method") or {}), rng=saved["rng"],
        opt_state=None)
    make_eval = phases.EVAL_STEPS.get(self.name)
    self.eval_step = (make_eval(self.model, self.method) if make_eval else train.make_eval_step(
        self.model, self.method, state_sharding=devices.replicated, batch_sharding=devices.batch))
    self.outputs_step = methods.base.make_outputs_step(self.model, self.method)
    self.kinds = {m: ENCODER_INPUT[config.model.encoders[m]] for m in self.modalities}


# ----------------------------------------------------------------------------------------------
# (a) Linear probes


@functools.lru_cache(maxsize=None)
def _probe_fit(num_classes: int, steps: int, l2: float, learning_rate: float = 1e-2):
  """A jitted full-batch fit (one compile per setting and feature shape, shared by the runs)."""
  import jax
  import jax.numpy as jnp
  import optax
  from iib_jax import losses

  @jax.jit
  def fit(z, labels):
    tx = optax.adam(learning_rate)
    params = (jnp.zeros((z.shape[1], num_classes), jnp.float32),
              jnp.zeros((num_classes,), jnp.float32))

    def objective(p):
      w, b = p
      return losses.cross_entropy(z @ w + b, labels).mean() + l2 * jnp.sum(w * w)

    def body(_, carry):
      p, opt_state = carry
      grads = jax.grad(objective)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return params

  return fit


def linear_probe(z_train, y_train, z_test, y_test, num_classes: int, steps: int = 500,
                 l2: float = 1e-4) -> dict[str, float]:
  """Train and test accuracy of a softmax regression on standardised features.

  Args:
    z_train, z_test: [N, d] features.
    y_train, y_test: [N] labels.
    num_classes: C.
    steps: full-batch Adam steps.
    l2: penalty on the weights.
  """
  import jax.numpy as jnp
  mean, std = z_train.mean(0), z_train.std(0) + 1e-6
  fit = _probe_fit(num_classes, steps, l2)
  w, b = fit(jnp.asarray((z_train - mean) / std), jnp.asarray(y_train))
  w, b = np.asarray(w), np.asarray(b)

  def accuracy(z, y):
    return float(np.mean(np.argmax(((z - mean) / std) @ w + b, -1) == y))

  return {"train_acc": accuracy(z_train, y_train), "test_acc": accuracy(z_test, y_test)}


# ----------------------------------------------------------------------------------------------
# (b) Robustness


def corrupt(batch, modalities: Sequence[str], kinds: Mapping[str, str], keep, noise, occlusion,
            scale, key):
  """The batch with each modality removed, noised and (frames) occluded.

  Args:
    batch: device batch.
    modalities: names in M-axis order.
    kinds: modality -> "audio" or "video" (its encoder's input layout).
    keep: [M] 1 to keep a modality, 0 to zero its input.
    noise: [M] Gaussian noise std in units of `scale`.
    occlusion: [M] side of the zeroed square as a fraction of the frame side (frames only).
    scale: [M] the clean input std of each modality.
    key: PRNG key of this batch.
  """
  import jax
  import jax.numpy as jnp
  from iib_jax.models.multimodal import normalize_frames
  out = dict(batch)
  for i, m in enumerate(modalities):
    x = batch[m]
    if x.dtype == jnp.uint8:   # frames normalised on the device: corrupt the normalised frames
      x = normalize_frames(x)
    k_noise, k_y, k_x = jax.random.split(jax.random.fold_in(key, i), 3)
    x = x + (noise[i] * scale[i] * jax.random.normal(k_noise, x.shape)).astype(x.dtype)
    if kinds[m] == "video":                             # [B, T, H, W, 3]
      height, width = x.shape[2], x.shape[3]
      side = jnp.round(occlusion[i] * min(height, width))
      top = jnp.floor(jax.random.uniform(k_y, x.shape[:1]) * (height - side + 1))
      left = jnp.floor(jax.random.uniform(k_x, x.shape[:1]) * (width - side + 1))
      rows, cols = jnp.arange(height), jnp.arange(width)
      in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)            # [B, H]
      in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)          # [B, W]
      square = in_rows[:, :, None] & in_cols[:, None, :]                          # [B, H, W]
      x = jnp.where(square[:, None, :, :, None], jnp.zeros_like(x), x)
    out[m] = x * keep[i].astype(x.dtype)
  return out


def _corrupted_eval(run: Run):
  import jax

  @jax.jit
  def step(state, batch, keep, noise, occlusion, scale, key):
    return run.eval_step(state, corrupt(batch, run.modalities, run.kinds, keep, noise, occlusion,
                                        scale, key))

  return step


def _input_scale(run: Run) -> np.ndarray:
  """[M] std of each modality's clean test inputs (first batch, real examples only)."""
  import jax
  batch = jax.device_get(next(iter(run.data.eval("test"))))
  real = np.asarray(batch["mask"]) > 0
  from iib_jax.models.multimodal import normalize_frames
  inputs = {m: np.asarray(normalize_frames(batch[m]) if batch[m].dtype == np.uint8 else batch[m])
            for m in run.modalities}
  return np.array([float(np.std(inputs[m][real])) for m in run.modalities], np.float32)


def _evaluate_under(run: Run, step, keep, noise, occlusion, scale, seed: int) -> dict[str, Any]:
  import jax
  from iib_jax import loop
  key = jax.random.key(seed)
  counter = iter(range(1 << 30))

  def eval_step(state, batch):
    return step(state, batch, keep, noise, occlusion, scale,
                jax.random.fold_in(key, next(counter)))

  return loop.summarize(loop.collect(eval_step, run.state, run.data.eval("test")), run.modalities)


def robustness(run: Run, noise_levels: Sequence[float], occlusion_levels: Sequence[float],
               seed: int = 0) -> dict[str, Any]:
  """Test summaries with each modality removed, and curves over corruption strength."""
  import jax.numpy as jnp
  num = len(run.modalities)
  step = _corrupted_eval(run)
  scale = _input_scale(run)
  ones, zeros = np.ones(num, np.float32), np.zeros(num, np.float32)

  def under(keep=ones, noise=zeros, occlusion=zeros):
    return _evaluate_under(run, step, jnp.asarray(keep), jnp.asarray(noise),
                           jnp.asarray(occlusion), jnp.asarray(scale), seed)

  clean = under()
  missing = {}
  for i, m in enumerate(run.modalities):
    keep = ones.copy()
    keep[i] = 0
    missing[m] = under(keep=keep)
  curves = {}
  for i, m in enumerate(run.modalities):
    kinds = [("noise", noise_levels)]
    if run.kinds[m] == "video":
      kinds.append(("occlusion", occlusion_levels))
    for kind, levels in kinds:
      points = []
      for level in levels:
        values = zeros.copy()
        values[i] = level
        points.append(clean if level == 0 else
                      under(**{"noise" if kind == "noise" else "occlusion": values}))
      curves[f"{kind}:{m}"] = {"levels": list(map(float, levels)), "summaries": points}
  return {"clean": clean, "missing": missing, "curves": curves,
          "input_scale": dict(zip(run.modalities, map(float, scale)))}


# ----------------------------------------------------------------------------------------------
# One run, reports and figures


def evaluate_run(run: Run, noise_levels, occlusion_levels, probe_steps: int = 500,
                 probe_l2: float = 1e-4, seed: int = 0) -> dict[str, Any]:
  """Linear probes and robustness of one restored run, as a JSON-ready dict."""
  from experiments import phases, table1
  t0 = time.time()
  z_train, y_train = phases.collect_features(run.outputs_step, run.state, run.data.eval("train"))
  z_test, y_test = phases.collect_features(run.outputs_step, run.state, run.data.eval("test"))
  rob = robustness(run, noise_levels, occlusion_levels, seed)
  probes = {}
  for i, m in enumerate(run.modalities):
    probe = linear_probe(z_train[:, i], y_train, z_test[:, i], y_test, run.data.num_classes,
                         probe_steps, probe_l2)
    probes[m] = {"probe_train_acc": probe["train_acc"], "probe_test_acc": probe["test_acc"],
                 "readout_test_acc": rob["clean"][f"acc_{m}"]}
  return {"workdir": os.path.abspath(run.workdir), "method": run.name,
          "dataset": run.config.data.name, "seed": int(run.config.seed),
          "modalities": list(run.modalities), "checkpoint_step": int(run.state.step),
          "readout": table1.unimodal_readout(run.config, run.name),
          "linear_probe": probes, "linear_probe_settings": {"steps": probe_steps, "l2": probe_l2,
                                                            "train_examples": int(len(y_train))},
          **rob, "wall_s": time.time() - t0}


def _pct(x, std=None) -> str:
  if x is None:
    return "–"
  return f"{100 * x:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _combine(values: Sequence[Any], fn) -> Any:
  """`fn` over the numbers at the same place of same-shaped records; other leaves: the first."""
  first = values[0]
  if isinstance(first, Mapping):
    return {k: _combine([v[k] for v in values], fn) for k in first
            if all(isinstance(v, Mapping) and k in v for v in values)}
  if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first)
                                     for v in values):
    return [_combine([v[i] for v in values], fn) for i in range(len(first))]
  if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
      isinstance(v, (int, float)) and v is not None for v in values):
    return float(fn(np.asarray(values, np.float64)))
  return first


def over_seeds(evaluations: Sequence[Mapping[str, Any]]
               ) -> tuple[list[dict], list[dict], list[str]]:
  """Per method (in order of first appearance): the mean and the sample std over its runs of
  every number of the evaluation records, and a label 'method (n runs)'."""
  groups: dict[str, list] = {}
  for e in evaluations:
    groups.setdefault(e["method"], []).append(e)
  means = [_combine(g, np.mean) for g in groups.values()]
  # The sample std (ddof = 1), as the tables of experiments.sweep and experiments.table1.
  stds = [_combine(g, lambda x: np.std(x, ddof=1) if len(x) > 1 else 0.0)
          for g in groups.values()]
  labels = [f"{m} ({len(g)} run{'s' * (len(g) > 1)})" for m, g in groups.items()]
  return means, stds, labels


def markdown(evaluations: Sequence[Mapping[str, Any]], labels: Sequence[str],
             stds: Sequence[Mapping[str, Any]] | None = None) -> str:
  """Tables of probes, missing modalities and corruption curves for one or several runs
  (with `stds`, from `over_seeds`: 'mean ± std' cells)."""
  modalities = evaluations[0]["modalities"]
  stds = stds or [None] * len(evaluations)

  def at(std, *path):
    for key in path:
      if std is None:
        return None
      std = std[key]
    return std

  lines = ["## Linear probes on frozen encoder features (test accuracy, %)", "",
           "| Run | " + " | ".join(f"probe {m} | readout {m}" for m in modalities) + " |",
           "|" + "---|" * (1 + 2 * len(modalities))]
  for e, label, sd in zip(evaluations, labels, stds):
    cells = [f"{label} ({e['readout']})"]
    for m in modalities:
      cells += [_pct(e["linear_probe"][m]["probe_test_acc"],
                     at(sd, "linear_probe", m, "probe_test_acc")),
                _pct(e["linear_probe"][m]["readout_test_acc"],
                     at(sd, "linear_probe", m, "readout_test_acc"))]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "## One modality removed (input zeroed): test accuracy of the fused prediction (%)",
            "", "| Run | all | " + " | ".join(f"without {m}" for m in modalities) + " |",
            "|" + "---|" * (2 + len(modalities))]
  for e, label, sd in zip(evaluations, labels, stds):
    lines.append(f"| {label} | {_pct(e['clean']['acc_fused'], at(sd, 'clean', 'acc_fused'))} | "
                 + " | ".join(_pct(e["missing"][m]["acc_fused"],
                                   at(sd, "missing", m, "acc_fused")) for m in modalities)
                 + " |")
  for curve in evaluations[0]["curves"]:
    levels = evaluations[0]["curves"][curve]["levels"]
    kind, modality = curve.split(":")
    what = ("Gaussian noise (std, × clean input std)" if kind == "noise"
            else "occlusion (square side, fraction of the frame)")
    lines += ["", f"## {modality}: {what} — fused test accuracy (%) [mean fusion weights]", "",
              "| Run | " + " | ".join(f"{level:g}" for level in levels) + " |",
              "|" + "---|" * (1 + len(levels))]
    for e, label, sd in zip(evaluations, labels, stds):
      cells = []
      for i, s in enumerate(e["curves"][curve]["summaries"]):
        weights = [s.get(f"weight_{m}") for m in modalities]
        extra = ("" if None in weights
                 else " [" + ", ".join(f"{w:.2f}" for w in weights) + "]")
        cells.append(_pct(s.get("acc_fused"),
                          at(sd, "curves", curve, "summaries", i, "acc_fused")) + extra)
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def robustness_figure(evaluations, labels, path: str, stds=None) -> str:
  """Accuracy (top) and mean fusion weights (bottom) against corruption strength, a line per run
  (with `stds`, from `over_seeds`: a line per method and a band of ± one std)."""
  stds = stds or [None] * len(evaluations)
  from experiments import plots
  plt = plots._pyplot()
  curves = list(evaluations[0]["curves"])
  modalities = evaluations[0]["modalities"]
  with_weights = any(f"weight_{modalities[0]}" in e["clean"] for e in evaluations)
  rows = 2 if with_weights else 1
  fig, axes = plt.subplots(rows, len(curves), figsize=(4.2 * len(curves), 3.4 * rows),
                           squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["-", "--", ":", "-."]
  for col, curve in enumerate(curves):
    kind, modality = curve.split(":")
    for r, (e, label, sd) in enumerate(zip(evaluations, labels, stds)):
      data = e["curves"][curve]
      color = colors[r % len(colors)]

      def draw(ax, key, scale, style, line_label):
        mean = np.array([scale * s[key] for s in data["summaries"]])
        ax.plot(data["levels"], mean, style, marker="o", ms=3, color=color, label=line_label)
        if sd is not None:
          spread = np.array([scale * s[key] for s in sd["curves"][curve]["summaries"]])
          ax.fill_between(data["levels"], mean - spread, mean + spread, color=color, alpha=0.15)

      draw(axes[0, col], "acc_fused", 100, "-", label)
      if with_weights and f"weight_{modalities[0]}" in e["clean"]:
        for j, m in enumerate(modalities):
          draw(axes[1, col], f"weight_{m}", 1, styles[j % len(styles)], f"{label}: w_{m}")
    xlabel = ("noise std (× clean std)" if kind == "noise" else "occluded square side")
    axes[0, col].set_title(f"{kind} on {modality}")
    axes[0, col].set_ylabel("fused test accuracy (%)")
    axes[-1, col].set_xlabel(xlabel)
    for row in range(rows):
      axes[row, col].grid(alpha=0.3)
    if with_weights:
      axes[1, col].set_ylabel("mean fusion weight")
      axes[1, col].set_ylim(0, 1)
  axes[0, 0].legend(fontsize=8)
  if with_weights:
    axes[1, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def probes_figure(evaluations, labels, path: str) -> str:
  """Linear-probe vs. the method's own unimodal accuracy, and accuracy with a modality removed."""
  from experiments import plots
  plt = plots._pyplot()
  modalities = evaluations[0]["modalities"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  n = len(evaluations)
  width = 0.8 / max(n, 1)
  x = np.arange(len(modalities))
  for r, (e, label) in enumerate(zip(evaluations, labels)):
    offset = (r - (n - 1) / 2) * width
    probe = [100 * e["linear_probe"][m]["probe_test_acc"] for m in modalities]
    readout = [100 * e["linear_probe"][m]["readout_test_acc"] for m in modalities]
    axes[0].bar(x + offset, probe, width * 0.9, label=f"{label}: linear probe")
    axes[0].scatter(x + offset, readout, marker="_", s=300, color="k", zorder=3,
                    label="the method's own prediction" if r == 0 else None)
    removed = [100 * e["clean"]["acc_fused"]] + [100 * e["missing"][m]["acc_fused"]
                                                 for m in modalities]
    axes[1].bar(np.arange(len(removed)) + offset, removed, width * 0.9, label=label)
  axes[0].set_xticks(x, modalities)
  axes[0].set_ylabel("test accuracy (%)")
  axes[0].set_title("frozen encoder features: linear probe")
  axes[1].set_xticks(np.arange(len(modalities) + 1),
                     ["all"] + [f"without {m}" for m in modalities])
  axes[1].set_ylabel("fused test accuracy (%)")
  axes[1].set_title("one modality removed")
  for ax in axes:
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _labels(evaluations) -> list[str]:
  names = [e["method"] for e in evaluations]
  if len(set(names)) == len(names):
    return names
  return [f"{e['method']} ({os.path.basename(e['workdir'].rstrip('/'))}, seed {e['seed']})"
          for e in evaluations]


def write(evaluations, out: str, command_seconds: float | None = None) -> dict[str, str]:
  """evaluation.json, evaluation.md, robustness.png and probes.png in `out`."""
  from experiments import report
  from iib_jax import estimate
  os.makedirs(out, exist_ok=True)
  labels = _labels(evaluations)
  paths = {"json": os.path.join(out, "evaluation.json"),
           "markdown": os.path.join(out, "evaluation.md"),
           "robustness": robustness_figure(evaluations, labels,
                                           os.path.join(out, "robustness.png")),
           "probes": probes_figure(evaluations, labels, os.path.join(out, "probes.png"))}
  record = evaluations[0] if len(evaluations) == 1 else {"runs": list(evaluations)}
  estimate.write_json(paths["json"], record)
  text = ("# Evaluation: " + ", ".join(labels) + "\n\n" + markdown(evaluations, labels)
          + f"\nFigures: `{paths['robustness']}`, `{paths['probes']}`.\n")
  means, stds, mean_labels = over_seeds(evaluations)
  if len(means) < len(evaluations):   # several runs of a method: their mean ± std too
    paths["robustness_mean"] = robustness_figure(means, mean_labels,
                                                 os.path.join(out, "robustness_mean.png"), stds)
    text += ("\n# Mean ± std over the runs of each method\n\n"
             + markdown(means, mean_labels, stds)
             + f"\nFigure: `{paths['robustness_mean']}` (bands: ± one std).\n")
  if command_seconds is not None:
    text += "\n" + report.footer("python -m experiments.evaluate", command_seconds)
  with open(paths["markdown"], "w") as f:
    f.write(text)
  return paths


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from experiments import run as runner
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("give at least one --workdir")
  if len(args.workdir) > 1 and not args.out:
    raise app.UsageError("several --workdir need --out for the combined files")
  t0 = time.time()
  devices = runner.Devices()
  noise = [float(v) for v in args.noise_levels]
  occlusion = [float(v) for v in args.occlusion_levels]
  evaluations = []
  for workdir in args.workdir:
    run = Run(workdir, devices, args.data_dir)
    runner.log(f"[evaluate] {run.name} in {workdir}")
    evaluation = evaluate_run(run, noise, occlusion, args.probe_steps, args.probe_l2, args.seed)
    evaluations.append(evaluation)
    if len(args.workdir) > 1:
      # Each run keeps its own record beside the combined one.
      from iib_jax import estimate
      estimate.write_json(os.path.join(workdir, "evaluation.json"), evaluation)
      with open(os.path.join(workdir, "evaluation.md"), "w") as f:
        f.write(f"# Evaluation: {run.name}\n\n" + markdown([evaluation], [run.name]))
  paths = write(evaluations, args.out or args.workdir[0], time.time() - t0)
  with open(paths["markdown"]) as f:
    print(f.read(), flush=True)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  _define_flags()
  app.run(main)
