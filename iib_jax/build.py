"""From a run's config (`experiments/configs`, or a run's `config.json`) to the library's objects.

  spec = build.method_spec(config, num_classes, steps_per_epoch, budgets=...)
  method = build.method(config, config.method, spec)
  model = build.model(config, num_classes, method)
  tx = build.optimizer(config)

The one place that reads the config's model and optimiser sections, so training, evaluation and
prediction rebuild exactly the same model. No TensorFlow.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import optax

from iib_jax import arrays, methods, schema, train
from iib_jax.models import MultimodalModel, build_model

def dataset_info(data_dir: str) -> dict[str, Any]:
  """The metadata of a prepared dataset of either format (TFRecords, or arrays), without
  TensorFlow."""
  if arrays.is_array_dataset(data_dir):
    return arrays.load_info(data_dir)
  return schema.load_info(data_dir)


# MultimodalModel fields set from config.model (the rest come from the method's `model`).
MODEL_FIELDS = ("gate_hidden", "gate_pool", "gate_input", "detach_uncertainty",
                "detach_gate_features")


def method_spec(config, num_classes: int, steps_per_epoch: int, epochs: int | None = None,
                budgets: Mapping[str, Any] | Sequence[float] | None = None) -> methods.MethodSpec:
  """The static facts a method is built from.

  Args:
    config: the run's config.
    num_classes: C.
    steps_per_epoch: optimiser steps per epoch.
    epochs: T (default `config.optim.epochs`).
    budgets: the unimodal phase's record (`budgets.json`) or its [M] budgets, or None.
  """
  if isinstance(budgets, Mapping):
    budgets = budgets["budgets"]
  return methods.MethodSpec(tuple(config.modalities), int(num_classes),
                            int(config.model.feature_dim), int(steps_per_epoch),
                            int(config.optim.epochs if epochs is None else epochs),
                            None if budgets is None else tuple(float(b) for b in budgets),
                            int(config.seed))


def method_options(config, name: str) -> Any:
  """The typed options of method `name` from `config.methods.<name>` (validated)."""
  return methods.definition(name).options_from(config.methods.get(name),
                                               tuple(config.modalities))


def unimodal_readout(config, name: str) -> str:
  """Which logits method `name`'s Acc_<modality> reads (METHODS.md §1.1: the conventions
  differ), with the run's options."""
  return methods.definition(name).readout(method_options(config, name))


def method(config, name: str, spec: methods.MethodSpec) -> methods.Method:
  """Method `name` with the run's options."""
  return methods.definition(name).build(method_options(config, name), spec)


def model(config, num_classes: int, method_: methods.Method) -> MultimodalModel:
  """The multimodal model of the run, with the method's own model fields."""
  # A run made before a field existed (its config.json lacks it) gets the model's default.
  fields = {k: config.model[k] for k in MODEL_FIELDS if k in config.model}
  fields.update(method_.model)
  return build_model(tuple(config.modalities), dict(config.model.encoders), num_classes,
                     feature_dim=config.model.feature_dim, encoder_size=config.model.encoder_size,
                     dtype=config.model.dtype, **fields)


def optimizer_settings(config, unimodal: bool = False):
  """The optimiser section a run trains with: `config.optim`, or `config.paper_optim` when
  `config.optimizer == "paper"` (the unimodal phase always uses the shared one)."""
  if not unimodal and config.get("optimizer", "shared") == "paper":
    return config.paper_optim
  return config.optim


def optimizer(config, frozen: Sequence[str] = (), unimodal: bool = False
              ) -> optax.GradientTransformation:
  """The run's optimiser (`optimizer_settings`); `frozen` top-level parameter groups get zero
  updates."""
  o = optimizer_settings(config, unimodal)
  tx = train.make_optimizer(o.name, o.learning_rate, o.weight_decay, o.momentum)
  return methods.base.freeze_branches(tx, tuple(frozen)) if frozen else tx
