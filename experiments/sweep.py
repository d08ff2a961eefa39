"""Several variants × seeds on one dataset, sharing each seed's unimodal (IIB) phase.

Layout: `<root>/seed<s>/iib/` (budgets, shared by every variant of that seed) and
`<root>/seed<s>/<dir_name(variant)>/` (one run directory each, with its config.json). A variant
whose `results.json` exists is not run again, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from experiments import build, run as runner, workdir
from experiments.configs import common
from iib_jax import build as lib_build, methods, stats, writers

override = common.override


def dir_name(variant: str) -> str:
  """The directory of a variant: its name with every run of characters other than letters,
  digits and `=.+-` replaced by '_' ('w/o IIB prior' -> 'w_o_IIB_prior')."""
  return re.sub(r"[^A-Za-z0-9=.+-]+", "_", variant).strip("_") or "_"


def run_variants(config: ml_collections.ConfigDict, variants: Mapping[str, Mapping[str, Any]],
                 seeds: Sequence[int], root: str) -> dict[str, list[dict[str, Any]]]:
  """Runs every variant (a dict of config overrides) for every seed.

  Each run lives in `<root>/seed<s>/<dir_name(variant)>/` with its config.json; a run whose
  results.json exists is read, not run again, once its fingerprint says it was made from the
  same configuration, data and code (`experiments.workdir`; otherwise the sweep stops before
  writing anything, unless `config.overwrite`); a variant whose configuration equals an earlier
  one's gets that run's results (marked "same_run_as"); the seed's unimodal phase
  (`<root>/seed<s>/iib/`) is shared by its variants.

  Returns:
    {variant: [results.json of each seed]}; each also carries "wall_s" and "seed".
  """
  if not config.data.dir:
    config = runner.synthetic_demo(config)
  results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
  for name, o in variants.items():
    data_keys = sorted(k for k in o if k.startswith("data."))
    if data_keys:
      # A seed's data pipeline and unimodal phase are shared by its variants.
      raise ValueError(f"invalid config: variant {name!r} overrides {', '.join(data_keys)}; "
                       "accepted: variants of one data configuration (run another sweep, with "
                       "its own root, for other data)")
  variant_configs = {name: override(config, o) for name, o in variants.items()}
  for c in variant_configs.values():
    common.validate(c)
  dirs = {name: dir_name(name) for name in variants}
  if len(set(dirs.values())) < len(dirs):
    raise ValueError(f"variant names {sorted(variants)} share directories {dirs}")
  devices = build.Devices()
  info = lib_build.dataset_info(config.data.dir)
  planned = {}
  for seed in seeds:
    seed_dir = os.path.join(root, f"seed{seed}")
    if any(runner.needs_unimodal_phase(c, c.method) for c in variant_configs.values()):
      planned[os.path.join(seed_dir, "iib")] = workdir.fingerprint(
          override(config, {"seed": seed}), info, workdir.UNIMODAL)
    for name, variant in variant_configs.items():
      planned[os.path.join(seed_dir, dirs[name])] = workdir.fingerprint(
          override(variant, {"seed": seed}), info, variant.method)
  runner.prepare_directories(config, planned)
  for seed in seeds:
    seed_dir = os.path.join(root, f"seed{seed}")
    # What finished before this invocation (read once, the same on every process).
    done = {}
    for name in variant_configs:
      path = os.path.join(seed_dir, dirs[name], "results.json")
      if os.path.exists(path):
        with open(path) as f:
          done[name] = json.load(f)
    pending = {n: c for n, c in variant_configs.items() if n not in done}
    budgets = None
    data = None
    if pending:
      base = override(config, {"seed": seed})
      data = build.Data(base, base.data.dir, devices)
      if any(runner.needs_unimodal_phase(c, c.method) for c in pending.values()):
        writer = writers.MetricWriter(seed_dir, base.modalities)
        budgets = runner.unimodal_phase(base, data, seed_dir, writer)
        writer.close()
    trained: dict[str, str] = {}    # a variant's configuration -> the first variant run with it
    outputs: dict[str, dict[str, Any]] = {}
    for name, variant in variant_configs.items():
      run_dir = os.path.join(seed_dir, dirs[name])
      same = override(variant, {"seed": seed}).to_json_best_effort(sort_keys=True)
      first = trained.setdefault(same, name)
      if name in done:
        out = done[name]
      elif first != name:
        # The same configuration as an earlier variant (e.g. the default point of two sweeps):
        # its results, not a second identical training.
        out = {**outputs[first], "same_run_as": first}
        _write_results(run_dir, out)
      else:
        cfg = override(variant, {"seed": seed, "workdir": run_dir})
        if build.primary():
          os.makedirs(run_dir, exist_ok=True)
          with open(os.path.join(run_dir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
        t0 = time.time()
        runner.log(f"== {name}, seed {seed}")
        needs = methods.definition(cfg.method).needs_budgets
        out = runner.train_method(cfg, cfg.method, data, run_dir, budgets if needs else None,
                                  unimodal_dir=os.path.join(seed_dir, "iib"))
        out = {**out, "wall_s": time.time() - t0}
        _write_results(run_dir, out)
      outputs[name] = out
      results[name].append({**out, "seed": seed})
  return results


def _write_results(run_dir: str, out: Mapping[str, Any]) -> None:
  if build.primary():
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
      json.dump(out, f, indent=2)


def aggregate(runs: Sequence[Mapping[str, Any]], modalities: Sequence[str],
              which: str = "test_best") -> dict[str, tuple[float, float]]:
  """{metric: (mean, std)} in percent over seeds, for Acc_m, each Acc_<m> and Avg, of the
  `which` summary ("test_best": reporting; "val_best": selection)."""
  keys = ["acc_fused"] + [f"acc_{m}" for m in modalities] + ["acc_avg"]
  out = {}
  for key in keys:
    values = np.array([100 * r[which][key] for r in runs])
    out[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
  return out


def by_seed(runs: Sequence[Mapping[str, Any]], key: str = "acc_fused",
            which: str = "test_best") -> dict[int, float]:
  """{seed: value} of one metric, for pairing by seed."""
  return {int(r["seed"]): float(r[which][key]) for r in runs}


def paired(runs: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
           key: str = "acc_fused", which: str = "test_best") -> stats.PairedDifference:
  """The per-seed difference of `runs` to `reference` (paired by seed; `iib_jax.stats`)."""
  mine, theirs = by_seed(runs, key, which), by_seed(reference, key, which)
  common = sorted(set(mine) & set(theirs))
  return stats.paired_difference({s: mine[s] for s in common}, {s: theirs[s] for s in common})


def select(results: Mapping[str, Sequence[Mapping[str, Any]]], key: str = "acc_fused") -> str:
  """The variant with the best mean *validation* score at its selected epoch: the only score a
  default or a sweep's winner is chosen on (test is read for the report only)."""
  means = {name: float(np.mean([r["val_best"][key] for r in runs]))
           for name, runs in results.items() if runs}
  return max(means, key=means.get)


def markdown_table(results: Mapping[str, Sequence[Mapping[str, Any]]],
                   modalities: Sequence[str], label: str = "Variant",
                   reference: str | None = None) -> str:
  """Mean ± std over seeds per variant (test accuracy of the epoch chosen on validation, in the
  layout of the paper's Table I), the validation Acc_m the choice of a default reads, and, with
  `reference`, each variant's paired difference in Acc_m to it: mean [95% interval] (seeds won
  / seeds)."""
  head = [label, "Acc_m"] + [f"Acc_{m}" for m in modalities] + ["Avg", "val Acc_m"]
  if reference is not None:
    head.append(f"Δ Acc_m vs {reference}")
  head.append("seeds")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, runs in results.items():
    agg = aggregate(runs, modalities)
    cells = [name] + [f"{m:.2f} ± {s:.2f}" for m, s in agg.values()]
    if all("val_best" in r for r in runs):
      val = aggregate(runs, modalities, "val_best")["acc_fused"]
      cells.append(f"{val[0]:.2f} ± {val[1]:.2f}")
    else:
      cells.append("–")
    if reference is not None:
      cells.append("–" if name == reference
                   else stats.format_paired(paired(runs, results[reference]), scale=100))
    cells.append(str(len(runs)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
