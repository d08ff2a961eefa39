"""Table I: Acc_m, each Acc_<modality> and Avg of every method on every dataset, over seeds.

  python -m experiments.table1 --config.datasets=synthetic --config.methods=all --config.seeds=3
  python -m experiments.table1 --config.datasets=crema_d --config.data_dirs.crema_d=/data/cd \
      --config.methods=all --config.optimizer=sgd
  python -m experiments.table1 ... --config.workers=2     # two processes side by side (2 cores)

Settings: experiments/configs/table1.py. Every run keeps its directory,
`<root>/<dataset>/seed<s>/<method>/` (with its config.json, checkpoints and results.json), and
each seed's unimodal phase is shared by the methods that need it (`<root>/<dataset>/seed<s>/iib`).
A run whose results.json exists is not run again, so an interrupted command resumes where it
stopped. With `--config.workers=N` the seeds are trained in N processes on this machine (worker k
the seeds k, k + N, ...), then the command reads every run and reports. Writes `<root>/table1.md` (best of a column in bold, second underlined), `table1.csv`,
`table1.json` and, for every dataset with a method that fuses with a budget prior (its results
carry β), Fig. 3 (`<root>/<dataset>/fig3.png`: the prior β beside the mean test fusion weights,
averaged over seeds).
"""
from __future__ import annotations

import ast
import csv
import importlib
import json
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, sweep
from iib_jax import build as lib_build, methods, stats

_HERE = os.path.dirname(os.path.abspath(__file__))


def all_methods() -> tuple[str, ...]:
  """Every method of the registry, in its order (the rows of Table I)."""
  return methods.listed()


def parse_names(value, accepted: Sequence[str], key: str, all_value: Sequence[str] | None = None):
  """A comma-separated string or a sequence of names, checked against `accepted`."""
  given = value
  if isinstance(value, str):
    if all_value is not None and value.strip() == "all":
      return tuple(all_value)
    if value.strip().startswith(("(", "[")):         # a tuple written on the command line
      value = ast.literal_eval(value)
    else:
      value = value.split(",")
  names = tuple(v.strip() for v in value if v.strip())
  bad = [n for n in names if n not in accepted]
  if not names or bad:
    raise ValueError(f"invalid config: {key}={given!r}; accepted: "
                     + ("all, or " if all_value is not None else "")
                     + "a comma-separated list of " + ", ".join(accepted))
  return names


def _parse_overrides(text: str) -> dict[str, Any]:
  out = {}
  for item in filter(None, (part.strip() for part in text.split(";"))):
    if "=" not in item:
      raise ValueError(f"invalid config: overrides item {item!r}; accepted: key=value")
    key, value = (s.strip() for s in item.split("=", 1))
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def dataset_config(settings, dataset: str):
  """The base config of one dataset: its config file with the preset, then the overrides."""
  from experiments import run as runner
  from experiments.configs import common
  config = importlib.import_module(f"experiments.configs.{dataset}").get_config(settings.preset)
  overrides = {}
  for key, field in (("optim.epochs", "epochs"), ("iib.epochs", "iib_epochs"),
                     ("optim.name", "optimizer"), ("optim.learning_rate", "learning_rate"),
                     ("optim.batch_size", "batch_size")):
    if settings[field]:
      overrides[key] = settings[field]
  overrides.update(_parse_overrides(settings.overrides))
  overrides["compare_with"] = ()
  overrides["overwrite"] = bool(settings.overwrite)
  config = common.override(config, overrides)
  data_dir = settings.data_dirs.get(dataset, "")
  if data_dir:
    config.data.dir = data_dir
  elif dataset == "synthetic":
    config = runner.synthetic_demo(config)
  else:
    raise ValueError(f"invalid config: data_dirs.{dataset}=''; accepted: the directory of the "
                     f"prepared dataset (python -m data_prep.{dataset} ... --out_dir ...)")
  return config


def _short_labels(modalities: Sequence[str]) -> list[str]:
  """Acc_a, Acc_v, ... when the initials tell the modalities apart, else the full names."""
  initials = [m[0] for m in modalities]
  if len(set(initials)) == len(initials):
    return [f"Acc_{i}" for i in initials]
  return [f"Acc_{m}" for m in modalities]


def _ranks(values: Sequence[float]) -> list[int]:
  """0 for the best (largest) value, 1 for the second best distinct value, 2 otherwise."""
  distinct = sorted({round(v, 6) for v in values}, reverse=True)
  return [min(distinct.index(round(v, 6)), 2) for v in values]


def _cell(mean: float, std: float, rank: int) -> str:
  text = f"{mean:.2f} ± {std:.2f}"
  return f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text


def _keys(modalities):
  return ["acc_fused"] + [f"acc_{m}" for m in modalities] + ["acc_avg"]


def _mean(values) -> float | None:
  values = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.mean(values)) if values else None


def perspectives(runs: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> dict[str, Any]:
  """The other two perspectives of the field's benchmark, means over seeds: each modality's
  share of the fused prediction and the imbalance degree (`experiments.evaluate.contribution`),
  and the cost (train seconds per epoch, peak memory where measured)."""
  contrib = [r.get("contribution") or {} for r in runs]
  cost = [r.get("cost") or {} for r in runs]
  return {"share": {m: _mean(c.get("share", {}).get(m) for c in contrib) for m in modalities},
          "imbalance": _mean(c.get("imbalance") for c in contrib),
          "epoch_seconds": _mean(c.get("epoch_seconds") for c in cost),
          "device_peak_mb": _mean((c.get("device_peak_bytes") or np.nan) / 2 ** 20 for c in cost)}


def _perspective_cells(p: Mapping[str, Any] | None, modalities: Sequence[str]) -> list[str]:
  if p is None:
    return ["–", "–", "–"]
  shares = [p["share"].get(m) for m in modalities]
  share = ("–" if None in shares else " / ".join(f"{100 * v:.0f}" for v in shares))
  imbalance = "–" if p["imbalance"] is None else f"{p['imbalance']:.2f}"
  seconds = "–" if p["epoch_seconds"] is None else f"{p['epoch_seconds']:.2f}"
  if p.get("device_peak_mb") is not None:
    seconds += f" ({p['device_peak_mb']:.0f} MB)"
  return [share, imbalance, seconds]


def dataset_table(dataset: str, aggregates: Mapping[str, Mapping[str, tuple[float, float]]],
                  modalities: Sequence[str], seeds: Mapping[str, int],
                  readouts: Mapping[str, str], alone: Sequence[tuple[float, float]] | None, *,
                  paired: Mapping[str, str] | None = None,
                  views: Mapping[str, Mapping[str, Any]] | None = None,
                  labels: Mapping[str, str] | None = None, title: str | None = None,
                  reference: str = "") -> str:
  """One block of Table I in markdown.

  Args:
    dataset, aggregates, modalities, seeds, readouts: the rows' (mean, std) cells, seed counts
      and unimodal conventions, by row name.
    alone: (mean, std) of each modality trained alone, or None.
    paired: row -> its paired difference to the reference in Acc_m (`stats.format_paired`).
    views: row -> `perspectives` (shares, imbalance degree, cost).
    labels: row -> its label (default: the method's).
    title: the block's heading (default: the dataset).
    reference: the reference's label, for the paired column's heading.
  """
  keys = _keys(modalities)
  head = ["Method", "Acc_m"] + _short_labels(modalities) + ["Avg"]
  if paired is not None:
    head.append(f"Δ Acc_m vs {reference} [95% CI] (wins)")
  if views is not None:
    head += ["share " + " / ".join(m[0] if len({x[0] for x in modalities}) == len(modalities)
                                   else m for m in modalities) + " (%)", "imbalance",
             "s / epoch"]
  head += ["seeds", "Acc_<m> from"]
  lines = [f"### {title or dataset}", "", "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  names = list(aggregates)
  ranks = {k: _ranks([aggregates[n][k][0] for n in names]) for k in keys}
  for i, name in enumerate(names):
    cells = [(labels or {}).get(name) or methods.definition(name).label]
    cells += [_cell(*aggregates[name][k], ranks[k][i]) for k in keys]
    if paired is not None:
      cells.append(paired.get(name, "–"))
    if views is not None:
      cells += _perspective_cells(views.get(name), modalities)
    cells += [str(seeds[name]), readouts[name]]
    lines.append("| " + " | ".join(cells) + " |")
  if alone is not None:
    blanks = (1 if paired is not None else 0) + (3 if views is not None else 0)
    lines.append("| each modality alone (unimodal phase) | – | "
                 + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in alone) + " | – |"
                 + " |" * blanks + " | heads |")
  return "\n".join(lines) + "\n"


def _unimodal_alone(dataset_root: str, seeds: Sequence[int], modalities: Sequence[str]):
  """Test accuracy (%) of each modality trained alone, mean and std over seeds, if recorded."""
  values = []
  for seed in seeds:
    path = os.path.join(dataset_root, f"seed{seed}", "iib", "budgets.json")
    if os.path.exists(path):
      with open(path) as f:
        unimodal = json.load(f)["unimodal"]
      if all("test_acc" in unimodal[m] for m in modalities):
        values.append([100 * unimodal[m]["test_acc"] for m in modalities])
  if not values:
    return None
  values = np.asarray(values)
  std = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(modalities))
  return list(zip(values.mean(0).tolist(), std.tolist()))


def _paired_json(results, variant: str, variants: Mapping[str, Mapping[str, Any]],
                reference: str) -> dict[str, Any] | None:
  """The paired difference (percent) of a row's Acc_m to the reference under the same
  optimiser, as JSON; None for the reference itself or when it did not run."""
  ref = f"{reference}@paper" if "@" in variant else reference
  if variant == ref or ref not in results:
    return None
  d = sweep.paired(results[variant], results[ref])
  return {"reference": ref, "mean": 100 * d.mean, "low": 100 * d.low, "high": 100 * d.high,
          "n": d.n, "wins": d.wins, "ties": d.ties, "losses": d.losses,
          "verdict": stats.verdict(d)}


def figure3(runs: Sequence[Mapping[str, Any]], modalities: Sequence[str], path: str,
            dataset: str) -> str | None:
  """Fig. 3 from the runs of a method with a budget prior: β and the mean test fusion weights,
  averaged over seeds."""
  from experiments import plots
  runs = [r for r in runs if r.get("beta")]
  if not runs:
    return None
  beta = np.mean([r["beta"] for r in runs], axis=0)
  weights = np.mean([[r["test_best"][f"weight_{m}"] for m in modalities] for r in runs], axis=0)
  return plots.prior_vs_weights(modalities, beta.tolist(), weights.tolist(), path,
                                title=f"{dataset}: IIB prior and fusion weights "
                                      f"({len(runs)} seed{'s' * (len(runs) > 1)})")


def run(settings) -> dict[str, Any]:
  """Runs (or resumes) every method × dataset × seed and writes the table and figures."""
  import jax
  from experiments import report, run as runner
  from experiments.configs import common
  t0 = time.time()
  datasets = parse_names(settings.datasets, common.DATASETS, "datasets")
  names = parse_names(settings.methods, all_methods(), "methods", all_value=all_methods())
  if settings.reference not in all_methods():
    raise ValueError(f"invalid config: reference={settings.reference!r}; accepted: "
                     + ", ".join(all_methods()))
  if not settings.seeds >= 1:
    raise ValueError(f"invalid config: seeds={settings.seeds!r}; accepted: an integer ≥ 1")
  seeds = list(range(settings.seeds))
  if not settings.workers >= 1:
    raise ValueError(f"invalid config: workers={settings.workers!r}; accepted: an integer ≥ 1")
  part = cli.parse_part(settings.part, "--config.part") if settings.part else None
  root = settings.root
  os.makedirs(root, exist_ok=True)
  if settings.compilation_cache != "off":
    cache = settings.compilation_cache or os.path.join(os.path.abspath(root), "jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
  # Every config fails early; the synthetic data is made here, before any worker reads it.
  configs = {d: dataset_config(settings, d) for d in datasets}
  for dataset, config in configs.items():
    for name in names:
      common.validate(common.override(config, {"method": name}))
  if part is not None:
    seeds = seeds[part[0]::part[1]]
  elif settings.workers > 1:
    if jax.process_count() > 1:
      raise ValueError("invalid config: workers > 1 with jax.distributed; accepted: workers=1 "
                       "(every process takes part in every run)")
    cli.run_workers("experiments.table1", settings.workers, sys.argv[1:],
                    workers_flag="--config.workers", part_flag="--config.part")

  blocks, table_json, csv_rows, figures = [], {}, [], {}
  reference = settings.reference
  for dataset, config in configs.items():
    dataset_root = os.path.join(root, dataset)
    modalities = tuple(config.modalities)
    # The shared optimiser for every method; the paper's for the gradient-multiplier methods and
    # the reference, when asked for (their rows are a block of their own).
    variants = {n: {"method": n} for n in names}
    paper = [n for n in names if methods.definition(n).paper_optimizer]
    if settings.paper_optimizers and paper:
      for n in dict.fromkeys([reference] + paper):
        variants[f"{n}@paper"] = {"method": n, "optimizer": "paper"}
    results = sweep.run_variants(config, variants, seeds, dataset_root)
    if part is not None:                   # the command that started the workers reports
      continue
    readouts = {v: lib_build.unimodal_readout(config, o["method"]) for v, o in variants.items()}
    alone = _unimodal_alone(dataset_root, seeds, modalities)
    blocks.append(f"### {dataset}\n\nProtocol: "
                  + runner.describe_protocol(runner.protocol(config)) + ".\n")
    for block, rows, ref in (("shared optimiser", list(names), reference),
                             ("the paper's optimiser", [v for v in variants if "@" in v],
                              f"{reference}@paper")):
      if not rows:
        continue
      aggregates = {v: sweep.aggregate(results[v], modalities) for v in rows}
      paired = ({v: "–" if v == ref else stats.format_paired(
          sweep.paired(results[v], results[ref]), scale=100) for v in rows}
          if ref in results else None)
      views = {v: perspectives(results[v], modalities) for v in rows}
      labels = {v: methods.definition(variants[v]["method"]).label
                + (" (paper optimiser)" if "@" in v else "") for v in rows}
      optim = lib_build.optimizer_settings(common.override(
          config, {"optimizer": "paper" if "@" in rows[0] else "shared"}))
      title = (f"{dataset}, {block}: {optim.name} lr {optim.learning_rate:g}"
               + (f", momentum {optim.momentum:g}" if optim.name == "sgd" else "")
               + (f", weight decay {optim.weight_decay:g}" if optim.weight_decay else ""))
      blocks.append(dataset_table(dataset, aggregates, modalities,
                                  {v: len(results[v]) for v in rows}, readouts,
                                  alone if block == "shared optimiser" else None,
                                  paired=paired, views=views, labels=labels, title=title,
                                  reference=methods.definition(reference).label
                                  if reference in methods.METHODS else reference))
    with_prior = [n for n in names if any(r.get("beta") for r in results[n])]
    if with_prior:
      png = figure3(results[with_prior[0]], modalities, os.path.join(dataset_root, "fig3.png"),
                    dataset)
      if png:
        figures[dataset] = png
    table_json[dataset] = {
        "modalities": list(modalities),
        "protocol": runner.protocol(config),
        "unimodal_alone": alone,
        "reference": reference,
        "methods": {v: {"method": o["method"], "optimizer": o.get("optimizer", "shared"),
                        "aggregate": sweep.aggregate(results[v], modalities),
                        "validation": sweep.aggregate(results[v], modalities, "val_best"),
                        "paired_to_reference": _paired_json(results, v, variants, reference),
                        "perspectives": perspectives(results[v], modalities),
                        "acc_unimodal_from": readouts[v],
                        "runs": [{"seed": r["seed"],
                                  "dir": os.path.join(dataset_root, f"seed{r['seed']}",
                                                      sweep.dir_name(v)),
                                  "best_epoch": r["best_epoch"], "val_best": r["val_best"],
                                  "test_best": r["test_best"],
                                  "contribution": r.get("contribution"), "cost": r.get("cost"),
                                  "wall_s": r.get("wall_s")} for r in results[v]]}
                    for v, o in variants.items()},
    }
    for v, o in variants.items():
      agg = sweep.aggregate(results[v], modalities)
      row = {"dataset": dataset, "method": o["method"],
             "optimizer": o.get("optimizer", "shared"), "seeds": len(results[v])}
      for key in _keys(modalities):
        row[f"{key}_mean"], row[f"{key}_std"] = agg[key]
      d = _paired_json(results, v, variants, reference)
      if d is not None:
        row.update(delta_acc_fused=d["mean"], delta_low=d["low"], delta_high=d["high"],
                   delta_wins=d["wins"], verdict=d["verdict"])
      csv_rows.append(row)

  if part is not None:
    return table_json
  seconds = time.time() - t0
  text = ("## Table I: test accuracy (%) of the epoch chosen on validation, mean ± std over seeds"
          "\n\nAcc_m: fused prediction; Acc_<m>: each modality's own prediction (the convention of "
          "the last column); Avg: mean of the three. Best of a column in **bold**, second "
          "<u>underlined</u>. Δ: the paired difference in Acc_m to the reference under the same "
          "optimiser, per seed: mean, 95% t-interval and the seeds on which the row won; a row is "
          "better or worse only where the interval excludes 0. Share: each modality's Shapley "
          "share of the fused test accuracy over modality coalitions, and the imbalance degree "
          "max − min share (experiments/evaluate/contribution.py). s / epoch: median train time "
          "per epoch.\n\n" + "\n".join(blocks) + "\n"
          + "".join(f"{note}\n" for note in dict.fromkeys(
              methods.definition(n).note for n in names if methods.definition(n).note))
          + "\n"
          + "".join(f"Fig. 3 ({d}): `{p}`.\n" for d, p in figures.items())
          + ("\n" if figures else "") + report.footer("python -m experiments.table1", seconds))
  with open(os.path.join(root, "table1.md"), "w") as f:
    f.write(text)
  with open(os.path.join(root, "table1.json"), "w") as f:
    json.dump({"datasets": table_json, "seeds": seeds, "figures": figures,
               "wall_s": seconds}, f, indent=2)
  with open(os.path.join(root, "table1.csv"), "w", newline="") as f:
    fields = list(dict.fromkeys(k for row in csv_rows for k in row))
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(csv_rows)
  print(text, flush=True)
  return table_json


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)        # orbax logs every save at INFO
  from experiments import cli
  cli.initialize_distributed()
  with cli.stops_on_bad_input():
    run(flags.FLAGS.config)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "table1.py"))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # Defined here, not on import: the functions above are also used as a library.
  config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "table1.py"),
                                  "Table I settings", lock_config=True)
  cli.define_distributed_flags()
  app.run(main)
