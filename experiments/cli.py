"""Command-line entry shared by the dataset commands: `--config` (ml_collections) and `--workdir`.

  python -m experiments.kinetics_sounds --config.data.dir=/data/ks --config.seed=1
  python -m experiments.kinetics_sounds --config=experiments/configs/kinetics_sounds.py:smoke

With no `--config.data.dir` the command runs the synthetic demonstration.
"""
from __future__ import annotations

import os
import sys


def run(dataset: str) -> None:
  argv = sys.argv[1:]
  if not any(a.startswith("--config.data.dir") and a.split("=", 1)[-1] for a in argv):
    # Said before anything heavy is imported, so it is the first line a new user sees.
    print("No --config.data.dir given: running the synthetic demonstration "
          "(IIBalance vs joint training on a generated audio-visual dataset).", flush=True)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

  from absl import app, flags
  from ml_collections import config_flags

  here = os.path.dirname(os.path.abspath(__file__))
  config_flags.DEFINE_config_file("config", os.path.join(here, "configs", f"{dataset}.py"),
                                  "experiment config", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (overrides config.workdir)")

  def main(_):
    from absl import logging
    logging.set_verbosity(logging.WARNING)        # orbax logs every save at INFO
    from experiments import run as runner
    config = flags.FLAGS.config
    if flags.FLAGS.workdir:
      with config.unlocked():
        config.workdir = flags.FLAGS.workdir
    try:
      runner.main(config)
    except ValueError as e:
      if str(e).startswith("invalid config"):
        sys.exit(f"error: {e}")
      raise

  app.run(main)
