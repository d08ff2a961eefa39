"""The controlled-imbalance benchmark: every method against the reference, as the imbalance grows.

  python -m experiments.imbalance --seeds=10 --dials=0,0.33,0.67,1 --root=runs/imbalance
  python -m experiments.imbalance --workers=2 ...      # two processes side by side (2 cores)
  python -m experiments.imbalance --config=experiments/configs/synthetic_features.py:smoke \
      --seeds=2 --dials=0,1                                  # tiny

For each dial of the feature-level dataset (`experiments/configs/synthetic_features.py`;
0 balanced … 1 the first modality carries much more class information than the others, which
keep information it lacks), every method runs over the seeds through the runner, under one
protocol (`--config.start`, `--config.optimizer`). Each seed's unimodal phase is shared by its
methods and gives the budgets B_m and β (τ = 0.07).

With `--workers=N` the command trains in N processes on this machine, worker k the seeds k,
k + N, ... of every dial (each seed's unimodal phase and methods in one process),
then reads every run and reports; like any sweep it resumes where it stopped. Compiled programs
are cached in `<root>/jax_cache`, shared by the runs and the workers.

Writes `<root>/imbalance.md` (per dial: β of each modality, each method's Acc_m and its paired
difference to the reference with a 95% interval and the seeds won), `imbalance.json`, and two
figures: `budgets_vs_dial.png` (B_m and β_m against the dial) and `gain_vs_dial.png` (each
method's Acc_m minus the reference's, with its interval, against the dial).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT = os.path.join(_HERE, "configs", "synthetic_features.py")
config_flags.DEFINE_config_file("config", _DEFAULT, "base experiment config", lock_config=False)
flags.DEFINE_integer("seeds", 10, "number of seeds (0 .. seeds-1)")
flags.DEFINE_list("dials", ["0", "0.33", "0.67", "1"], "imbalance dials of the dataset")
flags.DEFINE_string("methods", "all", "'all' or a comma-separated list of methods")
flags.DEFINE_string("reference", "joint", "the method every other is paired with")
flags.DEFINE_string("root", "runs/imbalance", "sweep directory")
flags.DEFINE_integer("workers", 1, "processes on this machine that train the (dial, seed) runs "
                     "side by side (one command; each seed's runs stay in one process)")
flags.DEFINE_string("part", "", "internal: 'k/n', the seeds this worker process trains")
cli.define_distributed_flags()


def budgets_of(dial_root: str, seeds: Sequence[int]) -> dict[str, Any] | None:
  """The unimodal phase's budgets and β of each seed of one dial, if it ran."""
  records = []
  for seed in seeds:
    path = os.path.join(dial_root, f"seed{seed}", "iib", "budgets.json")
    if os.path.exists(path):
      with open(path) as f:
        records.append(json.load(f))
  if not records:
    return None
  return {"budgets": np.asarray([r["budgets"] for r in records]).tolist(),
          "beta": np.asarray([r["beta"] for r in records]).tolist()}


def summarise(results: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str],
              reference: str) -> dict[str, Any]:
  """Per method: mean ± std of Acc_m (%), and the paired difference to the reference."""
  from experiments import sweep
  from iib_jax import stats
  out = {}
  for name in names:
    acc = [100 * r["test_best"]["acc_fused"] for r in results[name]]
    row = {"acc_fused": stats.mean_std(acc)[:2], "seeds": len(acc)}
    if name != reference and reference in results:
      d = sweep.paired(results[name], results[reference])
      row["paired"] = {"mean": 100 * d.mean, "low": 100 * d.low, "high": 100 * d.high,
                       "wins": d.wins, "n": d.n, "verdict": stats.verdict(d),
                       "cell": stats.format_paired(d, scale=100)}
    out[name] = row
  return out


def markdown(record: Mapping[str, Any], modalities: Sequence[str], names: Sequence[str],
             reference: str) -> str:
  from iib_jax import methods
  head = ["dial"] + [f"β_{m}" for m in modalities] + [
      f"{methods.definition(n).label} Acc_m" if n == reference
      else f"{methods.definition(n).label}: Δ vs {methods.definition(reference).label}"
      for n in names]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for dial, entry in record["dials"].items():
    cells = [dial]
    if entry["budgets"]:
      beta = np.asarray(entry["budgets"]["beta"])
      spread = beta.std(0, ddof=1) if len(beta) > 1 else np.zeros(beta.shape[1])
      cells += [f"{beta[:, i].mean():.2f} ± {spread[i]:.2f}" for i in range(len(modalities))]
    else:
      cells += ["–"] * len(modalities)
    for n in names:
      row = entry["methods"][n]
      if n == reference:
        mean, std = row["acc_fused"]
        cells.append(f"{mean:.2f} ± {std:.2f}")
      else:
        cells.append(row["paired"]["cell"] if "paired" in row else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def figures(record: Mapping[str, Any], modalities: Sequence[str], names: Sequence[str],
            reference: str, root: str) -> dict[str, str]:
  from experiments import plots
  from iib_jax import methods
  plt = plots.pyplot()
  dials = [float(d) for d in record["dials"]]
  entries = list(record["dials"].values())
  paths = {}
  if all(e["budgets"] for e in entries):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, label in (("budgets", axes[0], "budget B_m"),
                           ("beta", axes[1], "β_m (τ = 0.07)")):
      for i, m in enumerate(modalities):
        values = [np.asarray(e["budgets"][key])[:, i] for e in entries]
        mean = np.array([v.mean() for v in values])
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
        ax.plot(dials, mean, "-o", ms=3, label=m)
        ax.fill_between(dials, mean - std, mean + std, alpha=0.2)
      ax.set_xlabel("imbalance dial")
      ax.set_ylabel(label)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1)
    fig.suptitle("Budgets of the unimodal phase against the dial (mean ± std over seeds)")
    fig.tight_layout()
    paths["budgets"] = os.path.join(root, "budgets_vs_dial.png")
    fig.savefig(paths["budgets"], dpi=120)
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  others = [n for n in names if n != reference]
  width = 0.6 * (min(np.diff(dials)) if len(dials) > 1 else 1.0) / max(len(others), 1)
  for j, n in enumerate(others):
    rows = [e["methods"][n].get("paired") for e in entries]
    if None in rows:
      continue
    x = np.asarray(dials) + (j - (len(others) - 1) / 2) * width
    mean = np.array([r["mean"] for r in rows])
    err = np.array([[r["mean"] - r["low"], r["high"] - r["mean"]] for r in rows]).T
    # Eleven methods: colours of a 20-colour map and markers of their own, so no two share both.
    ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="-" + "osD^v<>ph*X"[j % 11], ms=3.5,
                capsize=2, color=plt.get_cmap("tab20")(j % 20),
                label=methods.definition(n).label)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xlabel("imbalance dial")
  ax.set_ylabel(f"Acc_m − {methods.definition(reference).label} Acc_m (points)")
  ax.set_title("Paired difference to the reference per seed, 95% interval")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  paths["gain"] = os.path.join(root, "gain_vs_dial.png")
  fig.savefig(paths["gain"], dpi=120)
  plt.close(fig)
  return paths


def dial_dataset(config, cache: str, dial: float) -> str:
  """The feature dataset of `dial` (generated into `cache` once, then reused)."""
  from data_prep import synthetic_features
  features = dict(config.data.features.to_dict(), dial=float(dial))
  return synthetic_features.ensure_features(cache, modalities=tuple(config.modalities), **features)


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  from experiments import report, run as runner, sweep, table1
  from experiments.configs import common
  from iib_jax import methods
  args = flags.FLAGS
  config = args.config
  names = table1.parse_names(args.methods, table1.all_methods(), "methods",
                            all_value=table1.all_methods())
  if args.reference not in names:
    names = (args.reference,) + tuple(names)
  # Methods defined for another number of modalities are left out, and said so.
  usable = []
  for name in names:
    try:
      methods.definition(name).options_from(config.methods.get(name), tuple(config.modalities))
      usable.append(name)
    except ValueError as e:
      runner.log(f"[imbalance] {name} left out: {e}")
  names = tuple(usable)
  seeds = list(range(args.seeds))
  part = cli.parse_part(args.part) if args.part else None
  if part is not None:
    seeds = seeds[part[0]::part[1]]
  # One compilation cache for the sweep, shared by its runs and its worker processes.
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.root),
                                                              "jax_cache"))
  cache = config.data.cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "iib_jax", "features")
  t0 = time.time()
  if args.workers > 1 and part is None:
    if jax.process_count() > 1:
      raise SystemExit("error: --workers is for one process on one machine; with "
                       "jax.distributed, every process takes part in every run")
    for dial in args.dials:                  # each dataset once, before the workers read it
      dial_dataset(config, cache, dial)
    cli.run_workers("experiments.imbalance", args.workers, sys.argv[1:])
  record = {"dials": {}, "protocol": runner.protocol(config), "methods": list(names),
            "reference": args.reference, "seeds": seeds}
  for dial in args.dials:
    dial_root = os.path.join(args.root, f"dial{float(dial):g}")
    data_dir = dial_dataset(config, cache, dial)
    base = common.override(config, {"data.dir": data_dir, "data.features.dial": float(dial),
                                    "compare_with": ()})
    runner.log(f"[imbalance] dial {float(dial):g}: {data_dir}")
    with cli.stops_on_bad_input():
      results = sweep.run_variants(base, {n: {"method": n} for n in names}, seeds, dial_root)
    if part is not None:                     # the command that started the workers reports
      continue
    record["dials"][f"{float(dial):g}"] = {
        "data_dir": data_dir, "budgets": budgets_of(dial_root, seeds),
        "methods": summarise(results, names, args.reference)}
  if part is not None:
    return
  os.makedirs(args.root, exist_ok=True)
  modalities = tuple(config.modalities)
  paths = figures(record, modalities, names, args.reference, args.root)
  seconds = time.time() - t0
  record["wall_s"] = seconds
  text = ("## Controlled imbalance: the feature-level benchmark\n\n"
          f"Protocol: {runner.describe_protocol(record['protocol'])}. Test accuracy (%) of the "
          f"epoch chosen on validation over {len(seeds)} seeds; Δ: the paired difference in "
          f"Acc_m to {methods.definition(args.reference).label} per seed, mean [95% interval] "
          "(seeds won / seeds). β: the unimodal phase's relative budgets (τ = 0.07).\n\n"
          + markdown(record, modalities, names, args.reference) + "\n"
          + "".join(f"Figure: `{p}`.\n" for p in paths.values()) + "\n"
          + report.footer("python -m experiments.imbalance", seconds))
  with open(os.path.join(args.root, "imbalance.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.root, "imbalance.json"), "w") as f:
    json.dump(record, f, indent=2)
  print(text, flush=True)


if __name__ == "__main__":
  cli.check_config_flags(sys.argv[1:], _DEFAULT)
  app.run(main)
