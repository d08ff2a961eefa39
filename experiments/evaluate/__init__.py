"""Linear probes and robustness of trained run directories.

  python -m experiments.evaluate --workdir runs/synthetic_iibalance_seed0
  python -m experiments.evaluate --workdir runs/table1/synthetic/seed0/<method> \
      --workdir runs/table1/synthetic/seed0/<other method> --out runs/table1/synthetic/evaluation

A run directory is anything the runner trained: it has checkpoints/best and a config.json (a
compare run `<workdir>/compare/<method>` uses its parent's). The model is rebuilt from the config
and the best checkpoint (selected on validation); everything is measured on the test split:
`probes` (linear probes on the frozen encoders), `robustness` (a modality removed, corruption
curves, the terms of log α behind the fusion weights, the area under each curve), `table` (the
robustness table over runs: mean ± std per method, paired differences by seed), `report` (tables
and figures). Writes `W/evaluation.json`, `W/evaluation.md`, `W/robustness.png`,
`W/robustness_table.png`, `W/probes.png` and, for a model that fuses with weights,
`W/decomposition.png`; with several workdirs each W still gets its JSON and markdown, and the
combined files (one line per run) go into `--out`.

`--split=validation` measures on the validation split instead (probes, removed modalities and
curves), for comparisons that select among variants; `--reference=<label>` adds each method's
paired difference to that one (`joint`, or a sweep's variant such as `default`).

Runs are grouped by their label: the run directory's name inside a sweep's `seed<s>/` (a
variant, e.g. `gate_pool=mean`), else the method; a run trained with `data.train_damage` gets
" + damage".
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

from experiments import build
from experiments.evaluate.probes import linear_probe, probe_run
from experiments.evaluate.report import markdown, over_seeds, write
from experiments.evaluate.robustness import (area_under_curve, areas, corrupt, decomposition,
                                             robustness)
from experiments.evaluate.table import group_of, robustness_table
from iib_jax import build as lib_build


def variant_of(workdir: str, method: str) -> str:
  """A run's name among its sweep's runs: its directory's name when it lies in a `seed<s>`
  directory (`experiments.sweep`, `experiments.table1`), else the method."""
  directory = os.path.abspath(workdir)
  if re.fullmatch(r"seed\d+", os.path.basename(os.path.dirname(directory))):
    return os.path.basename(directory)
  return method


def evaluate_run(run: build.TrainedRun, noise_levels, occlusion_levels, probe_steps: int = 500,
                 probe_l2: float = 1e-4, seed: int = 0, split: str = "test") -> dict[str, Any]:
  """Linear probes and robustness of one restored run on `split`, as a JSON-ready dict."""
  t0 = time.time()
  probed = probe_run(run, probe_steps, probe_l2, split)
  rob = robustness(run, noise_levels, occlusion_levels, seed, split)
  probes = {m: {"probe_train_acc": p["train_acc"], "probe_test_acc": p["test_acc"],
                "readout_test_acc": rob["clean"][f"acc_{m}"]}
            for m, p in probed["probes"].items()}
  record = {"workdir": os.path.abspath(run.workdir), "method": run.name,
            "variant": variant_of(run.workdir, run.name),
            "train_damage": str(run.config.data.get("train_damage", "") or ""),
            "dataset": run.config.data.name, "seed": int(run.config.seed), "split": split,
            "modalities": list(run.modalities), "checkpoint_step": int(run.state.step),
            "readout": lib_build.unimodal_readout(run.config, run.name),
            "linear_probe": probes,
            "linear_probe_settings": {"steps": probe_steps, "l2": probe_l2,
                                      "train_examples": probed["train_examples"]},
            **rob, "auc": areas(rob)}
  terms = decomposition(rob, run.modalities)
  if terms is not None:
    record["decomposition"] = terms
  record["wall_s"] = time.time() - t0
  return record


__all__ = ["area_under_curve", "areas", "corrupt", "decomposition", "evaluate_run", "group_of",
           "linear_probe", "markdown", "over_seeds", "probe_run", "robustness",
           "robustness_table", "variant_of", "write"]
