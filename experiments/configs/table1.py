"""Table I: every method on every dataset, mean ± std over seeds.

  python -m experiments.table1 --config.datasets=synthetic --config.methods=all --config.seeds=3
  python -m experiments.table1 --config.datasets=kinetics_sounds,crema_d,ave \
      --config.data_dirs.kinetics_sounds=/data/ks/kinetics_sounds \
      --config.data_dirs.crema_d=/data/crema_d/crema_d --config.data_dirs.ave=/data/ave/ave
  python -m experiments.table1 --config=experiments/configs/table1.py:smoke   # tiny everything

Each dataset runs with its own config (experiments/configs/<dataset>.py, with `preset`), then the
overrides below. A dataset other than synthetic needs its prepared directory in `data_dirs`.
"""
import ml_collections

from experiments.configs import common


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.datasets = "synthetic"          # a comma-separated list or a tuple of dataset names
  config.methods = "all"                 # "all", a comma-separated list or a tuple of methods
  config.seeds = 3                       # seeds 0 .. seeds − 1
  config.root = "runs/table1"            # <root>/<dataset>/seed<s>/<method>/ per run
  # dataset -> prepared directory (data_prep output); synthetic is generated when left empty.
  config.data_dirs = ml_collections.ConfigDict({name: "" for name in common.DATASETS})
  config.preset = arg or ""              # "" (each dataset config's settings) or "smoke"
  # Overrides of every dataset config; 0 / "" keep the dataset config's value.
  config.epochs = 0                      # optim.epochs of every method
  config.iib_epochs = 0                  # iib.epochs (the unimodal phase)
  config.optimizer = ""                  # optim.name: adam, adamw or sgd
  config.learning_rate = 0.0             # optim.learning_rate
  config.batch_size = 0                  # optim.batch_size
  # Any other key: "key=value;key=value", e.g. "methods.ogm_ge.alpha=0.8;optim.weight_decay=1e-4".
  config.overrides = ""
  # XLA's persistent compilation cache, so seeds after the first reuse every compiled step:
  # "" puts it in <root>/jax_cache, "off" disables it, anything else is its directory.
  config.compilation_cache = ""
  # Processes on this machine that train side by side, worker k the seeds k, k + workers, ...
  # (each seed's unimodal phase and methods in one process); the command then reads every run and
  # writes the table. `part` is internal: 'k/n', the seeds one worker trains.
  config.workers = 1
  config.part = ""
  config.overwrite = False               # start over in run directories made from something else
  # Every row's paired difference in Acc_m is to this method (per seed, same optimiser).
  config.reference = "joint"
  # The gradient-multiplier methods (and the reference) also run with the paper optimiser
  # (config.paper_optim of each dataset config), in a block of their own.
  config.paper_optimizers = True
  return config
