"""Fig. 4: accuracy against the budget temperature τ and the auxiliary weight γ.

  python -m experiments.sensitivity --seeds=2 --root=runs/sensitivity

Each value is a separate run of the method of `experiments/configs/sweeps.py` (one budget
estimation per seed is shared: τ changes β, not the budgets). Writes `<root>/sensitivity.md`, `<root>/sensitivity.json` and
`<root>/sensitivity.png`.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "synthetic.py"),
                                "base experiment config", lock_config=False)
flags.DEFINE_integer("seeds", 2, "number of seeds (0 .. seeds-1)")
flags.DEFINE_string("root", "runs/sensitivity", "sweep directory")
cli.define_distributed_flags()
flags.DEFINE_list("taus", ["0.03", "0.07", "0.2", "0.5", "1.0"], "values of τ")
flags.DEFINE_list("gammas", ["0.0", "0.1", "0.3", "0.5", "1.0"], "values of γ")


def plot(curves: dict, modalities, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8))
  for ax, (param, points) in zip(axes, curves.items()):
    xs = [p["value"] for p in points]
    for key, style, label in [("acc_fused", "k-o", "Acc_m")] + [
        (f"acc_{m}", "-o", f"Acc_{m}") for m in modalities]:
      mean = [p["agg"][key][0] for p in points]
      std = [p["agg"][key][1] for p in points]
      ax.errorbar(xs, mean, yerr=std, fmt=style, ms=3, capsize=3, label=label)
    ax.set_xscale("log" if param == "tau" else "linear")
    ax.set_xlabel({"tau": "budget temperature τ", "gamma": "auxiliary weight γ"}[param])
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  from experiments import report, sweep
  from experiments.configs import sweeps
  grid = {"tau": [float(v) for v in flags.FLAGS.taus],
          "gamma": [float(v) for v in flags.FLAGS.gammas]}
  plan = sweeps.sensitivity(grid)
  config = flags.FLAGS.config
  config.method = plan.method
  config.compare_with = ()
  t0 = time.time()
  with cli.stops_on_bad_input():
    results = sweep.run_variants(config, plan.variants, range(flags.FLAGS.seeds),
                                 flags.FLAGS.root)
  curves = {p: [{"value": v, "agg": sweep.aggregate(results[f"{p}={v:g}"], config.modalities)}
                for v in vs] for p, vs in grid.items()}
  os.makedirs(flags.FLAGS.root, exist_ok=True)
  png = plot(curves, config.modalities, os.path.join(flags.FLAGS.root, "sensitivity.png"))
  with open(os.path.join(flags.FLAGS.root, "sensitivity.json"), "w") as f:
    json.dump(curves, f, indent=2)
  text = (f"## Sensitivity ({config.data.name}): test accuracy (%), mean ± std over seeds\n\n"
          + sweep.markdown_table(results, config.modalities, label="Setting") + "\n"
          + f"Figure: `{png}`.\n\n"
          + report.footer("python -m experiments.sensitivity", time.time() - t0))
  with open(os.path.join(flags.FLAGS.root, "sensitivity.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "synthetic.py"))
  app.run(main)
