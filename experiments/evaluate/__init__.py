"""Linear probes and robustness of trained run directories.

  python -m experiments.evaluate --workdir runs/synthetic_iibalance_seed0
  python -m experiments.evaluate --workdir runs/table1/synthetic/seed0/<method> \
      --workdir runs/table1/synthetic/seed0/<other method> --out runs/table1/synthetic/evaluation

A run directory is anything the runner trained: it has checkpoints/best and a config.json (a
compare run `<workdir>/compare/<method>` uses its parent's). The model is rebuilt from the config
and the best checkpoint (selected on validation); everything is measured on the test split:
`probes` (linear probes on the frozen encoders), `robustness` (a modality removed, corruption
curves), `report` (tables and figures). Writes `W/evaluation.json`, `W/evaluation.md`,
`W/robustness.png` and `W/probes.png`; with several workdirs each W still gets its JSON and
markdown, and the combined files (one line per run) go into `--out`.
"""
from __future__ import annotations

import os
import time
from typing import Any

from experiments import build
from experiments.evaluate.probes import linear_probe, probe_run
from experiments.evaluate.report import markdown, over_seeds, write
from experiments.evaluate.robustness import corrupt, robustness
from iib_jax import build as lib_build


def evaluate_run(run: build.TrainedRun, noise_levels, occlusion_levels, probe_steps: int = 500,
                 probe_l2: float = 1e-4, seed: int = 0) -> dict[str, Any]:
  """Linear probes and robustness of one restored run, as a JSON-ready dict."""
  t0 = time.time()
  probed = probe_run(run, probe_steps, probe_l2)
  rob = robustness(run, noise_levels, occlusion_levels, seed)
  probes = {m: {"probe_train_acc": p["train_acc"], "probe_test_acc": p["test_acc"],
                "readout_test_acc": rob["clean"][f"acc_{m}"]}
            for m, p in probed["probes"].items()}
  return {"workdir": os.path.abspath(run.workdir), "method": run.name,
          "dataset": run.config.data.name, "seed": int(run.config.seed),
          "modalities": list(run.modalities), "checkpoint_step": int(run.state.step),
          "readout": lib_build.unimodal_readout(run.config, run.name),
          "linear_probe": probes,
          "linear_probe_settings": {"steps": probe_steps, "l2": probe_l2,
                                    "train_examples": probed["train_examples"]},
          **rob, "wall_s": time.time() - t0}


__all__ = ["corrupt", "evaluate_run", "linear_probe", "markdown", "over_seeds", "probe_run",
           "robustness", "write"]
