"""The feature-level controlled-imbalance benchmark: a vector per modality, small MLP encoders.

  python -m experiments.synthetic_features                    # one dial, the configured method
  python -m experiments.imbalance --seeds=10 --dials=0,0.33,0.67,1   # every method × dial × seed

The data (`data_prep/synthetic_features.py`, docs/DATA.md) is generated into the cache for the
dial of `data.features.dial`: 0 balanced, 1 the dominant (first) modality carries much more class
information; the others always carry information it lacks. 10,000 / 2,000 / 4,000 train /
validation / test examples, so one test example is 0.025 points.
"""
import ml_collections

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.name = "synthetic_features"
  config.compare_with = ("joint",)
  config.modalities = ("audio", "video")
  config.model.encoders = {"audio": "mlp", "video": "mlp"}
  config.model.encoder_size = "full"
  config.model.feature_dim = 64
  config.model.gate_hidden = 32
  config.optim.learning_rate = 2e-3
  config.optim.batch_size = 128
  config.optim.epochs = 12
  config.paper_optim.learning_rate = 0.05
  config.iib.epochs = 12
  config.iib.patience = 4
  config.eval.batch_size = 1000
  config.log_every_steps = 40
  config.progress = False
  config.data.features = ml_collections.ConfigDict()
  config.data.features.dial = 1.0
  config.data.features.num_classes = 10
  config.data.features.dim = 32
  config.data.features.num_train = 10000
  config.data.features.num_validation = 2000
  config.data.features.num_test = 4000
  config.data.features.seed = 0          # the data's seed: every method and run seed sees it
  config = common.apply_preset(config, arg)
  if arg == "smoke":                     # a small dataset, so that an epoch is a few steps
    config.data.features.num_train = 256
    config.data.features.num_validation = 64
    config.data.features.num_test = 128
    config.optim.batch_size = 32
    config.eval.batch_size = 64
  return config
