"""The base config, presets and `validate(config)`.

Every dataset config starts from `base_config()`; every method's options live in
`config.methods.<name>`, so `--config.method=joint --config.methods.iibalance.gamma=0.3` work with a
locked config. `validate` runs before any computation and names the key and the accepted values.
"""
from __future__ import annotations

import ml_collections

from iib_jax import schema
from iib_jax.methods import (METHODS, MethodSpec, agm, bmlmi, gblending, ggdm, greedy, mmpareto,
                             mslr, ogm_ge, pmr, udi)
from iib_jax.methods.iibalance import DEFAULTS as IIB_DEFAULTS
from iib_jax.models.encoders import ENCODERS
from iib_jax.models import DTYPES

DATASETS = ("kinetics_sounds", "crema_d", "ave", "synthetic")
# Each baseline's options, as `config.methods.<name>` (the method module's DEFAULTS).
BASELINE_DEFAULTS = {"mslr": mslr.DEFAULTS, "gblending": gblending.DEFAULTS,
                     "ogm_ge": ogm_ge.DEFAULTS, "greedy": greedy.DEFAULTS, "pmr": pmr.DEFAULTS,
                     "agm": agm.DEFAULTS, "mmpareto": mmpareto.DEFAULTS, "ggdm": ggdm.DEFAULTS,
                     "udi": udi.DEFAULTS, "bmlmi": bmlmi.DEFAULTS}


def base_config() -> ml_collections.ConfigDict:
  """IIBalance at the paper's settings (§V-C); dataset configs fill in data and encoders."""
  config = ml_collections.ConfigDict()
  config.method = "iibalance"
  # Methods run beside `method` on the same data, e.g. ("joint",); their rows join the table.
  config.compare_with = ()
  config.seed = 0
  config.workdir = ""

  config.modalities = ("audio", "video")

  config.data = ml_collections.ConfigDict()
  config.data.name = ""
  config.data.dir = ""                 # a prepared dataset (data_prep output); required
  config.data.num_frames = 3           # T frames per clip (segment sampling)
  config.data.image_size = 224
  config.data.audio_frames = 1024      # log-Mel frames after crop/pad
  config.data.audio_norm = "none"
  # "float32": frames normalised by the input pipeline; "uint8": shipped as uint8 (a quarter of
  # the bytes, less host work per clip) and normalised on the device (BENCHMARKS.md).
  config.data.frames_dtype = "float32"
  config.data.cache_dir = ""           # synthetic data cache; default ~/.cache/iib_jax

  config.model = ml_collections.ConfigDict()
  config.model.encoders = ml_collections.ConfigDict({"audio": "audio_cnn", "video": "resnet18"})
  config.model.encoder_size = "full"
  config.model.feature_dim = 512
  config.model.dtype = "float32"
  config.model.gate_hidden = 128
  config.model.gate_pool = "identity"
  config.model.detach_uncertainty = True
  config.model.detach_gate_features = False

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.9
  config.optim.batch_size = 32
  config.optim.epochs = 50

  # The unimodal phase that estimates the information budgets.
  config.iib = ml_collections.ConfigDict()
  config.iib.epochs = 50
  config.iib.patience = 5
  config.iib.budget_split = "train"
  config.iib.warm_start = False

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64

  config.log_every_steps = 50
  config.progress = True

  config.methods = ml_collections.ConfigDict()
  config.methods.iibalance = ml_collections.ConfigDict(dict(IIB_DEFAULTS))
  config.methods.joint = ml_collections.ConfigDict({"unimodal_readout": "heads",
                                                    "fusion": "concat"})
  config.methods.unimodal = ml_collections.ConfigDict()
  for name, defaults in BASELINE_DEFAULTS.items():
    config.methods[name] = ml_collections.ConfigDict(dict(defaults))
  return config


def _fail(key: str, value, accepted: str) -> None:
  raise ValueError(f"invalid config: {key}={value!r}; accepted: {accepted}")


def validate(config: ml_collections.ConfigDict, *, check_data: bool = True) -> None:
  """Raises ValueError naming the key, the value and the accepted values."""
  methods = [config.method] + list(config.compare_with)
  for name in methods:
    if name not in METHODS or name == "unimodal":
      _fail("method" if name == config.method else "compare_with", name,
            ", ".join(sorted(set(METHODS) - {"unimodal"})))
  if config.data.name not in DATASETS:
    _fail("data.name", config.data.name, ", ".join(DATASETS))
  for modality in config.modalities:
    if modality not in config.model.encoders:
      _fail("model.encoders", dict(config.model.encoders), f"an encoder for every modality "
            f"of {tuple(config.modalities)}")
    encoder = config.model.encoders[modality]
    if encoder not in ENCODERS:
      _fail(f"model.encoders.{modality}", encoder, ", ".join(sorted(ENCODERS)))
  if config.data.frames_dtype not in schema.FRAMES_DTYPES:
    _fail("data.frames_dtype", config.data.frames_dtype, ", ".join(schema.FRAMES_DTYPES))
  if config.model.dtype not in DTYPES:
    _fail("model.dtype", config.model.dtype, ", ".join(DTYPES))
  if config.model.encoder_size not in ("full", "tiny"):
    _fail("model.encoder_size", config.model.encoder_size, "full, tiny")
  if config.model.gate_pool not in ("identity", "mean"):
    _fail("model.gate_pool", config.model.gate_pool, "identity, mean")
  if config.optim.name not in ("adam", "adamw", "sgd"):
    _fail("optim.name", config.optim.name, "adam, adamw, sgd")
  for key in ("optim.learning_rate", "optim.batch_size", "optim.epochs", "iib.epochs",
              "eval.batch_size", "data.num_frames", "data.image_size", "data.audio_frames"):
    section, name = key.split(".")
    if not config[section][name] > 0:
      _fail(key, config[section][name], "a positive number")
  if config.iib.budget_split not in ("train", "val"):
    _fail("iib.budget_split", config.iib.budget_split, "train, val")

  iib = config.methods.iibalance
  if not iib.tau > 0:
    _fail("methods.iibalance.tau", iib.tau, "τ > 0")
  if not iib.tau_p > 0:
    _fail("methods.iibalance.tau_p", iib.tau_p, "τ_p > 0")
  if not 0 <= iib.rho < 1:
    _fail("methods.iibalance.rho", iib.rho, "ρ in [0, 1)")
  if not iib.gamma >= 0:
    _fail("methods.iibalance.gamma", iib.gamma, "γ ≥ 0")
  if not 0 <= iib.lambda_start <= 1:
    _fail("methods.iibalance.lambda_start", iib.lambda_start, "λ_start in [0, 1]")
  if iib.similarity not in ("dot", "cosine"):
    _fail("methods.iibalance.similarity", iib.similarity, "dot, cosine")
  if iib.lambda_schedule not in ("epoch", "step"):
    _fail("methods.iibalance.lambda_schedule", iib.lambda_schedule, "epoch, step")
  if iib.prototypes_in_loss not in ("before", "after"):
    _fail("methods.iibalance.prototypes_in_loss", iib.prototypes_in_loss, "before, after")
  if iib.prior not in ("iib", "uniform"):
    _fail("methods.iibalance.prior", iib.prior, "iib, uniform")
  if iib.fusion_rule not in ("gated", "prior", "mean"):
    _fail("methods.iibalance.fusion_rule", iib.fusion_rule, "gated, prior, mean")

  for name in methods:
    _validate_method(config, name)

  if check_data and config.data.dir and not _is_prepared(config.data.dir):
    _fail("data.dir", config.data.dir, "a directory holding a prepared dataset "
          "(made by python -m data_prep.<dataset> --out_dir ...), or empty for the synthetic demo")


def _validate_method(config: ml_collections.ConfigDict, name: str) -> None:
  """Builds method `name` from its options (no arrays are made), so an option the method rejects
  fails here, before the unimodal phase, and checks the options only the runner reads."""
  options = config.methods.get(name)
  options = {} if options is None else options.to_dict()
  spec = MethodSpec(tuple(config.modalities), 2, 1, 1, 1, (0.0,) * len(config.modalities))
  try:
    METHODS[name](options, spec)
  except ValueError as e:
    where = "" if str(e).startswith(f"methods.{name}.") else f"methods.{name}: "
    raise ValueError(f"invalid config: {where}{e}") from None
  opts = {**BASELINE_DEFAULTS.get(name, {}), **options}
  if name == "gblending":
    for key in ("super_epoch", "probe_epochs"):
      if not opts[key] >= 1:
        _fail(f"methods.gblending.{key}", opts[key], "an integer ≥ 1")
    if not 0 < opts["holdout_fraction"] < 1:
      _fail("methods.gblending.holdout_fraction", opts["holdout_fraction"], "a fraction in (0, 1)")
  if name == "pmr" and not 0 < opts["prototype_fraction"] <= 1:
    _fail("methods.pmr.prototype_fraction", opts["prototype_fraction"], "a fraction in (0, 1]")
  if name == "udi":
    if opts["fusion_epochs"] < 0:
      _fail("methods.udi.fusion_epochs", opts["fusion_epochs"], "an integer ≥ 0")
    if opts["follower_init"] not in ("unimodal", "random"):
      _fail("methods.udi.follower_init", opts["follower_init"], "unimodal, random")
  if name == "bmlmi" and opts["distill_epochs"] < 0:
    _fail("methods.bmlmi.distill_epochs", opts["distill_epochs"], "an integer ≥ 0")


def _is_prepared(data_dir: str) -> bool:
  from iib_jax import schema
  try:
    schema.load_info(data_dir)
  except (FileNotFoundError, ValueError, KeyError):
    return False
  return True


def apply_preset(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """'' (the paper's settings) or 'smoke' (tiny everything, for tests)."""
  if not arg:
    return config
  if arg == "smoke":
    config.model.encoder_size = "tiny"
    config.model.feature_dim = 16
    config.model.gate_hidden = 16
    config.data.num_frames = 2
    config.data.image_size = 32
    config.data.audio_frames = 64
    config.optim.batch_size = 4
    config.optim.epochs = 2
    config.optim.learning_rate = 1e-3
    config.iib.epochs = 2
    config.iib.patience = 2
    config.eval.batch_size = 5
    config.log_every_steps = 2
    config.progress = False
    return config
  raise ValueError(f"unknown config preset {arg!r}; accepted: '' (paper settings), 'smoke'")
