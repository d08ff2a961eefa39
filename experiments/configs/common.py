"""The base config, presets, `validate(config)` and `override(config, {...})`.

Every dataset config starts from `base_config()`; every method's options live in
`config.methods.<name>`, generated from the method's typed options (`iib_jax.methods`), so a
default lives in one place and `--config.method=joint --config.methods.iibalance.gamma=0.3` work
with a locked config. `validate` runs before any computation and names the key and the accepted
values.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

import ml_collections

from iib_jax import methods as methods_lib, schema
from iib_jax.models.encoders import ENCODERS, SIZES as ENCODER_SIZES
from iib_jax.models import DTYPES

DATASETS = ("kinetics_sounds", "crema_d", "ave", "synthetic", "synthetic_features")


def base_config() -> ml_collections.ConfigDict:
  """IIBalance at the paper's settings (§V-C); dataset configs fill in data and encoders."""
  config = ml_collections.ConfigDict()
  config.method = "iibalance"
  # Methods run beside `method` on the same data, e.g. ("joint",); their rows join the table.
  config.compare_with = ()
  config.seed = 0
  config.workdir = ""
  # Start over in a workdir that holds a run made from another configuration or dataset (its
  # checkpoints, logs and results are deleted); without it such a rerun stops, naming the keys.
  config.overwrite = False

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
  # Several processes: "global" (every host reads the split, takes its slices of the global
  # batches: N processes compute what one does) or "file" (whole shards per host).
  config.data.host_sharding = "global"

  # Train-time modality damage (docs/DATA.md): a `preprocess.parse_damage` string such as
  # "drop_modalities(audio=0.25, video=0.25)|noise(audio, max=2.0, p=0.5)", applied to the
  # training batches of every phase; evaluation is never damaged. "" = none.
  config.data.train_damage = ""

  config.model = ml_collections.ConfigDict()
  config.model.encoders = ml_collections.ConfigDict({"audio": "audio_cnn", "video": "resnet18"})
  config.model.encoder_size = "full"
  config.model.feature_dim = 512
  config.model.dtype = "float32"
  config.model.gate_hidden = 128
  config.model.gate_pool = "identity"
  config.model.detach_uncertainty = True
  config.model.detach_gate_features = False

  # The fair protocol (docs/FIDELITY.md, "One protocol for every method"): one start and one
  # optimiser for every method of a run.
  # Where every method's encoders start: "warm" (each modality's encoder, projection and head
  # from the unimodal phase) or "fresh" (random initialisation). Measured on validation
  # (docs/FIDELITY.md, the start): warm, for every method alike.
  config.start = "warm"
  # "shared": every method trains with config.optim. "paper": every method trains with
  # config.paper_optim, the optimiser of the gradient-multiplier methods' own papers (SGD with
  # momentum), under which their multipliers are not cancelled by Adam's normalisation; the
  # tables run those methods (Definition.paper_optimizer) and the reference under both.
  config.optimizer = "shared"
  config.paper_optim = ml_collections.ConfigDict()
  config.paper_optim.name = "sgd"
  config.paper_optim.learning_rate = 1e-3
  config.paper_optim.weight_decay = 1e-4
  config.paper_optim.momentum = 0.9
  # What the gate G reads: "features" (Eq. 8: φ = [u; Pool(z)]) or "uncertainty" (φ = [u] only).
  config.model.gate_input = "features"

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

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64

  config.log_every_steps = 50
  config.progress = True

  # Every registered method's options, with its defaults.
  config.methods = ml_collections.ConfigDict()
  for name, definition in methods_lib.METHODS.items():
    config.methods[name] = ml_collections.ConfigDict(definition.options().to_dict())
  return config


def _fail(key: str, value, accepted: str) -> None:
  raise ValueError(f"invalid config: {key}={value!r}; accepted: {accepted}")


def validate(config: ml_collections.ConfigDict, *, check_data: bool = True) -> None:
  """Raises ValueError naming the key, the value and the accepted values."""
  names = [config.method] + list(config.compare_with)
  for name in names:
    if name not in methods_lib.listed():
      _fail("method" if name == config.method else "compare_with", name,
            ", ".join(methods_lib.listed()))
  if config.data.name not in DATASETS:
    _fail("data.name", config.data.name, ", ".join(DATASETS))
  modalities = tuple(config.modalities)
  if not modalities or len(set(modalities)) != len(modalities):
    _fail("modalities", modalities, "one or more distinct names")
  for modality in modalities:
    if modality not in config.model.encoders:
      _fail("model.encoders", dict(config.model.encoders), f"an encoder for every modality "
            f"of {modalities}")
    encoder = config.model.encoders[modality]
    if encoder not in ENCODERS:
      _fail(f"model.encoders.{modality}", encoder, ", ".join(sorted(ENCODERS)))
  if config.data.get("host_sharding", "global") not in ("global", "file"):
    _fail("data.host_sharding", config.data.host_sharding, "global, file")
  if config.data.frames_dtype not in schema.FRAMES_DTYPES:
    _fail("data.frames_dtype", config.data.frames_dtype, ", ".join(schema.FRAMES_DTYPES))
  if config.model.dtype not in DTYPES:
    _fail("model.dtype", config.model.dtype, ", ".join(DTYPES))
  if config.model.encoder_size not in ENCODER_SIZES:
    _fail("model.encoder_size", config.model.encoder_size, ", ".join(ENCODER_SIZES))
  if config.model.gate_pool not in ("identity", "mean"):
    _fail("model.gate_pool", config.model.gate_pool, "identity, mean")
  for section in ("optim", "paper_optim"):
    if config[section].name not in ("adam", "adamw", "sgd"):
      _fail(f"{section}.name", config[section].name, "adam, adamw, sgd")
    if not config[section].learning_rate > 0:
      _fail(f"{section}.learning_rate", config[section].learning_rate, "a positive number")
  if config.start not in ("fresh", "warm"):
    _fail("start", config.start, "fresh, warm")
  if config.optimizer not in ("shared", "paper"):
    _fail("optimizer", config.optimizer, "shared, paper")
  if config.model.gate_input not in ("features", "uncertainty"):
    _fail("model.gate_input", config.model.gate_input, "features, uncertainty")
  if config.data.train_damage:
    _check_damage(config.data.train_damage, modalities)
  for key in ("optim.learning_rate", "optim.batch_size", "optim.epochs", "iib.epochs",
              "eval.batch_size", "data.num_frames", "data.image_size", "data.audio_frames"):
    section, name = key.split(".")
    if not config[section][name] > 0:
      _fail(key, config[section][name], "a positive number")
  if config.iib.budget_split not in ("train", "val"):
    _fail("iib.budget_split", config.iib.budget_split, "train, val")
  # Every section's options, typed: an unknown key or a value the method rejects fails here,
  # before the unimodal phase (the methods of the run are also checked against its modalities).
  for name, definition in methods_lib.METHODS.items():
    definition.options_from(config.methods.get(name), modalities if name in names else ())
  if check_data and config.data.dir and not _is_prepared(config.data.dir):
    _fail("data.dir", config.data.dir, "a directory holding a prepared dataset "
          "(made by python -m data_prep.<dataset> --out_dir ...), or empty for the synthetic demo")


def _check_damage(spec, modalities) -> None:
  """data.train_damage parses and names only the run's modalities (TensorFlow is imported only
  for a non-empty spec)."""
  if not isinstance(spec, str):
    _fail("data.train_damage", spec, "a damage string (docs/DATA.md), or '' for none")
  from iib_jax import preprocess
  try:
    preprocess.parse_damage(spec, list(modalities))
  except ValueError as e:
    _fail("data.train_damage", spec, f"a damage string of the run's modalities ({e})")


def missing_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  """None if the dotted `key` exists in `config`; else one line naming the first missing part,
  the closest valid key and the valid keys at that level."""
  node, path = config, []
  for part in key.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or part not in node:
      level = ".".join(path) or "the top level"
      valid = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, Mapping)) else []
      close = difflib.get_close_matches(part, valid, n=1)
      where = ".".join(path + [part])
      hint = f" (did you mean {'.'.join(path + [close[0]])}?)" if close else ""
      return (f"unknown config key {where}{hint}; valid keys of {level}: "
              + (", ".join(valid) or "none (it is a value, not a section)"))
    node = node[part]
    path.append(part)
  return None


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
  """A copy of `config` with dotted keys replaced ({"methods.iibalance.gamma": 0.3}); an unknown
  key is an error naming it."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    problem = missing_key(config, key)
    if problem:
      raise ValueError(f"invalid config: {problem}")
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config


def _is_prepared(data_dir: str) -> bool:
  from iib_jax import build
  try:
    build.dataset_info(data_dir)
  except (FileNotFoundError, ValueError, KeyError):
    return False
  return True


def apply_preset(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """'' (the paper's settings) or 'smoke' (tiny everything, for tests: micro encoders, tiny
  inputs, two epochs)."""
  if not arg:
    return config
  if arg == "smoke":
    config.model.encoder_size = "micro"
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
