"""Measures the readings of the paper that docs/FIDELITY.md sets by measurement, and selects
among them on validation only (test accuracy is reported, never read for the choice).

  python -m experiments.fidelity --seeds=3 --root=runs/fidelity

On the synthetic dataset (or --config.data.dir=...): PRA with cosine vs dot similarity (Eq. 4),
the auxiliary term of Eq. 11 with and without a gradient into the fusion weights, and the
multimodal encoders started fresh or from the unimodal (IIB) phase; each variant
over several seeds, sharing each seed's budget estimation. Writes `<root>/fidelity.md`.
"""
from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "synthetic.py"),
                                "base experiment config", lock_config=False)
flags.DEFINE_integer("seeds", 3, "number of seeds (0 .. seeds-1)")
flags.DEFINE_string("root", "runs/fidelity", "sweep directory")
cli.define_distributed_flags()


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  from experiments import report, sweep
  from experiments.configs import sweeps
  plan = sweeps.fidelity()
  config = flags.FLAGS.config
  config.method = plan.method
  config.compare_with = ()
  t0 = time.time()
  with cli.stops_on_bad_input():
    results = sweep.run_variants(config, plan.variants, range(flags.FLAGS.seeds),
                                 flags.FLAGS.root)
  default = next(iter(plan.variants))
  table = sweep.markdown_table(results, config.modalities, label="Reading", reference=default)
  chosen = sweep.select(results)
  text = (f"## Readings of the paper ({config.data.name}), {flags.FLAGS.seeds} seeds\n\n"
          "Test accuracy (%) of the epoch chosen on validation, mean ± std; the choice of a "
          "default reads the validation column only.\n\n"
          f"{table}\nSelected on validation: **{chosen}**.\n\n"
          + report.footer("python -m experiments.fidelity", time.time() - t0))
  os.makedirs(flags.FLAGS.root, exist_ok=True)
  with open(os.path.join(flags.FLAGS.root, "fidelity.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "synthetic.py"))
  app.run(main)
