"""Table II: the studied method against its ablations, on one dataset, over seeds.

  python -m experiments.ablation --seeds=3 --root=runs/ablation          # synthetic data
  python -m experiments.ablation --config=experiments/configs/kinetics_sounds.py \
      --config.data.dir=/data/prepared/kinetics_sounds --root=runs/ks_ablation

Variants: `experiments/configs/sweeps.py` (`ablation`; `--fixed_rule` picks the fixed fusion rule
of "w/o Stage II": the mean of the features, or the prior β).
Writes `<root>/table2.md` and `<root>/table2.json`.
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
flags.DEFINE_integer("seeds", 3, "number of seeds (0 .. seeds-1)")
flags.DEFINE_string("root", "runs/ablation", "sweep directory")
cli.define_distributed_flags()
flags.DEFINE_enum("fixed_rule", "mean", ["mean", "prior"], "the fixed rule of 'w/o Stage II'")


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  from experiments import report, sweep
  from experiments.configs import sweeps
  plan = sweeps.ablation(flags.FLAGS.fixed_rule)
  config = flags.FLAGS.config
  config.method = plan.method
  config.compare_with = ()
  t0 = time.time()
  with cli.stops_on_bad_input():
    results = sweep.run_variants(config, plan.variants, range(flags.FLAGS.seeds),
                                 flags.FLAGS.root)
  table = sweep.markdown_table(results, config.modalities, label="Variant",
                               reference=next(iter(plan.variants)))
  text = (f"## Table II ({config.data.name}): test accuracy (%), mean ± std over seeds; the "
          "paired difference to the full method per seed, 95% interval and seeds won\n\n"
          f"{table}\n"
          + report.footer("python -m experiments.ablation", time.time() - t0))
  os.makedirs(flags.FLAGS.root, exist_ok=True)
  with open(os.path.join(flags.FLAGS.root, "table2.md"), "w") as f:
    f.write(text)
  with open(os.path.join(flags.FLAGS.root, "table2.json"), "w") as f:
    json.dump({k: sweep.aggregate(v, config.modalities) for k, v in results.items()}, f, indent=2)
  print(text)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "synthetic.py"))
  app.run(main)
