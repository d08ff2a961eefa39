"""What a balancing method is: a handful of pure functions over the shared train state, plus,
optionally, the host-side work it needs between the compiled steps.

A method never owns a training loop. The jit-compiled step (`iib_jax.train`) calls, in order:
`forward_kwargs` (extra model inputs from the method's state), `compute_grads` (by default the
gradient of `loss`), `rewrite_grads`, the optimiser, then `update_state`. Evaluation calls
`predict` on one forward pass, or the method's own `evaluate` when it needs several.

Host-side work is part of the method too, in its own file: `Method.hooks(context) -> Hooks`
(before training, between epochs, another source of training batches) and, for a method trained in
stages, `Definition.train(stages, options) -> results`. The runner calls whatever a method offers
without knowing its name: the combinator knows nothing of what it combines, as optax's `chain`.

A method is registered as a `Definition`: its name, its typed `Options`, its builder and its
static facts (whether it needs the unimodal phase's budgets, how its table row reads). Adding a
method means one new file and one registry line (`iib_jax.methods.register`).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import optax

from iib_jax import budget, fusion, losses

PyTree = Any


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Static facts a method is built from.

  Attributes:
    modalities: modality names, in the order of the M axis.
    num_classes: C.
    feature_dim: d.
    steps_per_epoch: optimiser steps in one epoch (converts the traced step to an epoch).
    total_epochs: T.
    budgets: [M] information budgets from the IIB phase, for methods that need them.
    seed: the run's seed (a method's own random streams start from it).
  """
  modalities: tuple[str, ...]
  num_classes: int
  feature_dim: int
  steps_per_epoch: int
  total_epochs: int
  budgets: tuple[float, ...] | None = None
  seed: int = 0

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  def epoch(self, step: jax.Array) -> jax.Array:
    """The 0-based epoch of a (traced) step, as int32."""
    return (step // self.steps_per_epoch).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# Typed options


class OptionError(ValueError):
  """An option value a method cannot take: raised by `Options.validate`, reported by
  `Definition.options_from` as `invalid config: methods.<name>.<key>=<value>; accepted: ...`."""

  def __init__(self, key: str, value: Any, accepted: str):
    super().__init__(f"{key}={value!r}; accepted: {accepted}")
    self.key, self.value, self.accepted = key, value, accepted


@dataclasses.dataclass(frozen=True)
class Options:
  """The base of every method's options: a frozen dataclass with defaults.

  A method's `Options` subclass declares its fields (the defaults are the config's defaults:
  `experiments.configs.common.base_config` is generated from them) and overrides `validate`.
  """

  def validate(self, modalities: Sequence[str]) -> None:
    """Raises `OptionError` for a value the method cannot take (override; `modalities` are the
    run's, for options with one entry per modality)."""
    del modalities

  def to_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def one_of(key: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises `OptionError` unless `value` is one of `choices`."""
  if value not in choices:
    raise OptionError(key, value, ", ".join(map(str, choices)))


def require(condition: bool, key: str, value: Any, accepted: str) -> None:
  """Raises `OptionError(key, value, accepted)` unless `condition`."""
  if not condition:
    raise OptionError(key, value, accepted)


def require_modalities(method: str, modalities: Sequence[str], *, minimum: int = 2,
                       exactly: int | None = None) -> None:
  """Raises ValueError naming `config.modalities` when a method cannot take that many (an empty
  tuple, when the options are checked without a run, passes)."""
  count = len(modalities)
  if count == 0:
    return
  if exactly is not None and count != exactly:
    raise ValueError(f"invalid config: modalities={tuple(modalities)!r}; accepted: {method} is "
                     f"defined for exactly {'two' if exactly == 2 else exactly} modalities")
  if count < minimum:
    raise ValueError(f"invalid config: modalities={tuple(modalities)!r}; accepted: {method} "
                     f"needs at least {'two' if minimum == 2 else minimum} modalities")


def _coerce(key: str, value: Any, default: Any) -> Any:
  """`value` in the type of the field's default (lists from JSON or the command line become
  tuples; an integer is a valid float), or OptionError."""
  if isinstance(default, tuple):
    if isinstance(value, (list, tuple)):
      return tuple(value)
    raise OptionError(key, value, "a tuple")
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    raise OptionError(key, value, "True or False")
  if isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise OptionError(key, value, "an integer")
  if isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise OptionError(key, value, "a number")
  if isinstance(default, str):
    if isinstance(value, str):
      return value
    raise OptionError(key, value, "a string")
  return value


# ------------------------------------------------------------------------------------------------
# The method record


def no_state() -> PyTree:
  return ()


def no_kwargs(state: PyTree) -> dict[str, Any]:
  del state
  return {}


def keep_state(state: PyTree, aux: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> PyTree:
  del aux, batch
  return state


def keep_grads(grads: PyTree, aux: Mapping[str, Any], state: PyTree, step: jax.Array) -> PyTree:
  del aux, state, step
  return grads


def default_predict(outputs: Mapping[str, jax.Array], state: PyTree) -> tuple[jax.Array, jax.Array]:
  """(fused logits [B, C], unimodal logits [M, B, C]): the fused head and the unimodal heads."""
  del state
  logits = outputs["logits"]
  return outputs.get("fused_logits", logits.sum(0)), logits


def split_predict(outputs: Mapping[str, jax.Array], state: PyTree) -> tuple[jax.Array, jax.Array]:
  """The fused logits and the split fusion layer's per-modality summands (OGM-GE, PMR, ...)."""
  del state
  return outputs["fused_logits"], outputs["partial_logits"]


class Method(NamedTuple):
  """A balancing method as data.

  Attributes:
    name: registry name.
    init_state: () -> the method's own state pytree (checkpointed with the train state).
    loss: (outputs, batch, state, step) -> (scalar loss, aux); aux["metrics"] is a dict of
      device arrays that the step reports. Optional when `compute_grads` is given.
    model: overrides of `MultimodalModel` fields the method needs (e.g. fusion="gated").
    forward_kwargs: state -> extra keyword arguments of the model's forward pass.
    compute_grads: optional (forward, params, batch, state, step) -> (loss, grads, batch_stats,
      aux), for methods that need more than the gradient of one loss (several losses' gradients,
      extra forward passes). `forward(params, batch, train=True, **kwargs)` returns
      (outputs, new batch_stats).
    rewrite_grads: (grads, aux, state, step) -> grads, e.g. per-modality scaling.
    update_state: (state, aux, batch) -> new state, after the optimiser update.
    predict: (outputs, state) -> (fused logits [B, C], unimodal logits [M, B, C]) for evaluation.
    evaluate: optional (apply, batch, state) -> (fused logits, unimodal logits), replacing
      `predict` for a method whose evaluation needs several forward passes; `apply(batch)` is the
      model in inference mode.
    hooks: optional Context -> Hooks: the method's host-side work around the compiled steps.
  """
  name: str
  init_state: Callable[[], PyTree]
  loss: Callable[..., tuple[jax.Array, dict[str, Any]]] | None = None
  model: Mapping[str, Any] = {}
  forward_kwargs: Callable[[PyTree], dict[str, Any]] = no_kwargs
  compute_grads: Callable[..., Any] | None = None
  rewrite_grads: Callable[..., PyTree] = keep_grads
  update_state: Callable[..., PyTree] = keep_state
  predict: Callable[..., tuple[jax.Array, jax.Array]] = default_predict
  evaluate: Callable[..., tuple[jax.Array, jax.Array]] | None = None
  hooks: Callable[["Context"], "Hooks"] | None = None


@dataclasses.dataclass
class Hooks:
  """A method's host-side work, as the runner calls it around its epochs.

  Attributes:
    before_training: state -> state, once before epoch 0 (not on resume: its result is in the
      checkpoint).
    between_epochs: (epoch, state, validation summary) -> state, after each epoch's evaluation
      and before its checkpoint.
    train_batches: epoch -> training batches, replacing the training split (G-Blending trains on
      the training split minus its holdout).
  """
  before_training: Callable[[Any], Any] = lambda state: state
  between_epochs: Callable[[int, Any, dict], Any] = lambda epoch, state, val: state
  train_batches: Callable[[int], Iterable] | None = None


class Context(Protocol):
  """What a method's hooks may use (built by the runner, `experiments.build.Context`).

  Attributes:
    config: the run's config (ml_collections).
    options: the method's typed options.
    data: the prepared dataset: `train(epoch, seed, keep=None)`, `eval(split, keep=None)`,
      `clip_labels(split)`, `steps_per_epoch()`, `num_examples(split)`, `batch_size`.
    workdir: the run directory.
    model, method, spec: what the compiled steps were built from.
    train_step, eval_step: the compiled steps.
    seed: the run's seed.
  """
  config: Any
  options: Any
  data: Any
  workdir: str
  model: Any
  method: Method
  spec: MethodSpec
  train_step: Callable
  eval_step: Callable
  seed: int

  def put(self, tree: PyTree) -> PyTree:
    """Host-made values placed where the state lives (replicated over the mesh)."""

  def log(self, message: str) -> None:
    """One line to the console and the run's log."""

  def stream_seed(self, name: str) -> int:
    """A data-order seed of a phase's own, so it never replays the training order."""


class Stages(Protocol):
  """What a method trained in stages may use (`Definition.train`; built by the runner).

  Attributes:
    config, data, workdir: the run's.
    modalities: names in M-axis order.
    unimodal_dir: the unimodal phase's directory (`budgets.json`, `checkpoints/best`).
  """
  config: Any
  data: Any
  workdir: str
  modalities: tuple[str, ...]
  unimodal_dir: str

  def train_stage(self, overrides: Mapping[str, Any], workdir: str, *,
                  frozen: Sequence[str] = (),
                  hooks: Callable[[Context], Hooks] | None = None) -> dict[str, Any]:
    """Trains one stage (the run's config with dotted `overrides`) in `workdir`, with `frozen`
    top-level parameter groups and the stage's own hooks; returns its results. An earlier stage
    whose results exist is not trained again."""

  def unimodal_outputs(self, split: str) -> dict[str, Any]:
    """Per-example eval outputs of the unimodal phase's models on `split`."""

  def unimodal_features(self, split: str) -> tuple[Any, Any]:
    """([N, M, d] features, [N] labels) of the unimodal phase's models on `split`."""

  def load_branches(self, state: Any, source: str, groups: Sequence[str],
                    which: str = "best") -> Any:
    """`state` with the parameters and BatchNorm statistics of `groups` from `source`'s
    checkpoint."""

  def put(self, tree: PyTree) -> PyTree:
    """As `Context.put`."""

  def log(self, message: str) -> None:
    """As `Context.log`."""

  def record(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A stage decision computed once and kept in `<workdir>/stages/<name>.json`."""

  def finish(self, results: Mapping[str, Any], stages: Mapping[str, Any]) -> dict[str, Any]:
    """The final stage's results with the stage record added, written as the run's results."""


@dataclasses.dataclass(frozen=True)
class Definition:
  """A registered method: its name, options, builder and static facts.

  Attributes:
    name: registry name, the `config.method` value and the `config.methods.<name>` section.
    build: (options, spec) -> Method.
    options: the method's `Options` subclass (defaults and validation).
    needs_budgets: whether the runner must run the unimodal phase (the information budgets, or
      the unimodal models a staged method starts from) before training it.
    display: its label in tables (default: the name).
    note: a footnote for tables (e.g. that it is a reconstruction).
    readout: options -> which logits its Acc_<modality> reads (METHODS.md §1.1).
    train: optional (stages, options) -> results, for a method trained in stages; the runner
      then calls it instead of its own training.
    paper_optimizer: the method's mechanism is a per-modality gradient multiplier, which its
      own paper applies under SGD and which Adam's normalisation largely cancels: comparisons
      publish it under the shared optimiser and under its paper's (`config.optimizer`).
    listed: False for the runner's own helpers (the unimodal phase), which are not a choice of
      `config.method` and no table row.
  """
  name: str
  build: Callable[[Any, MethodSpec], Method]
  options: type = Options
  needs_budgets: bool = False
  display: str = ""
  note: str = ""
  readout: Callable[[Any], str] = lambda options: "heads"
  train: Callable[[Stages, Any], dict[str, Any]] | None = None
  paper_optimizer: bool = False
  listed: bool = True

  @property
  def label(self) -> str:
    return self.display or self.name

  def options_from(self, values: Mapping[str, Any] | None = None,
                   modalities: Sequence[str] | None = None) -> Any:
    """Typed options from a mapping (`config.methods.<name>`), validated.

    Raises:
      ValueError: `invalid config: methods.<name>.<key>...` naming an unknown key (with the
        closest valid key and every accepted one) or a value the method cannot take.
    """
    if isinstance(values, self.options):
      options = values
    else:
      values = {} if values is None else (values.to_dict() if hasattr(values, "to_dict")
                                          else dict(values))
      prefix = f"methods.{self.name}"
      accepted = self.options.field_names()
      unknown = [k for k in values if k not in accepted]
      if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
        raise ValueError(f"invalid config: {prefix}.{unknown[0]} is not an option of {self.name}"
                         f"{hint}; accepted: {', '.join(accepted) or 'none'}")
      defaults = self.options()
      try:
        options = self.options(**{k: _coerce(k, v, getattr(defaults, k))
                                  for k, v in values.items()})
      except OptionError as e:
        raise ValueError(f"invalid config: {prefix}.{e}") from None
    try:
      options.validate(tuple(modalities or ()))
    except OptionError as e:
      raise ValueError(f"invalid config: methods.{self.name}.{e}") from None
    return options

  def make(self, values: Mapping[str, Any] | None, spec: MethodSpec) -> Method:
    """The method for `spec`, from its options (a mapping or an `Options`)."""
    return self.build(self.options_from(values, spec.modalities), spec)


# ------------------------------------------------------------------------------------------------
# Shared pieces of the step


# The per-example terms of log α_m = log β_m − u_m + log σ(G_m) (Eq. 9), from the gated fusion.
LOG_ALPHA_TERMS = fusion.LOG_ALPHA_TERMS


def batch_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
  """[B] float32: the batch's mask, or ones when it has none (training batches)."""
  if "mask" in batch:
    return batch["mask"]
  return jnp.ones(batch["label"].shape, jnp.float32)


def gradients(method: Method, forward: Callable[..., Any], params: PyTree,
              batch: Mapping[str, jax.Array], state: PyTree, step: jax.Array):
  """(loss, grads, batch_stats, aux) of a method: its own rule, or the gradient of its loss."""
  if method.compute_grads is not None:
    return method.compute_grads(forward, params, batch, state, step)
  if method.loss is None:
    raise ValueError(f"method {method.name!r} gives neither a loss nor compute_grads")

  def loss_fn(p):
    outputs, batch_stats = forward(p, batch, train=True, **method.forward_kwargs(state))
    loss, aux = method.loss(outputs, batch, state, step)
    return loss, (batch_stats, aux)

  (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, batch_stats, aux


def eval_outputs(batch: Mapping[str, jax.Array], fused_logits: jax.Array,
                 unimodal_logits: jax.Array,
                 outputs: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """The per-example outputs of an eval step (`iib_jax.train.make_eval_step`).

  Args:
    batch: the batch (its labels and mask).
    fused_logits: [B, C].
    unimodal_logits: [M, B, C].
    outputs: the model's outputs, when one forward pass made them: its fusion weights are kept.

  Returns:
    `label` [B], `mask` [B], `fused_pred` [B], `fused_logits` [B, C], `unimodal_pred` [M, B],
    `unimodal_logits` [M, B, C] (the method's own unimodal readout), `unimodal_entropy` [M, B]
    (normalised entropy of each unimodal prediction: the u of Eq. 7 and the input of Eq. 1),
    and, when the model fuses with weights, `weights` [B, M] and the three terms of log α
    (Eq. 9) they are the softmax of: `log_alpha_prior` (log β), `log_alpha_uncertainty` (−u) and
    `log_alpha_gate` (log σ(G)), each [B, M].
  """
  result = {
      "label": batch["label"],
      "mask": batch_mask(batch),
      "fused_pred": jnp.argmax(fused_logits, -1),
      "fused_logits": fused_logits,
      "unimodal_pred": jnp.argmax(unimodal_logits, -1),
      "unimodal_logits": unimodal_logits,
      "unimodal_entropy": budget.normalized_entropy_from_logits(unimodal_logits),
  }
  if outputs is not None:
    for key in ("weights",) + LOG_ALPHA_TERMS:
      if key in outputs:
        result[key] = outputs[key]
  return result


def modality_mask(batch: Mapping[str, jax.Array]) -> jax.Array | None:
  """The example weights of each modality's own terms (its unimodal loss, its prototypes).

  A modality removed by train-time damage (`present` [B, M] = 0, docs/DATA.md) is a zeroed
  input: its head cannot learn the class from it and its features are no class's, so its own
  terms leave that example out, while the terms of the fused prediction keep it (learning to do
  without the modality is what the damage is for).

  Returns:
    [M, B] float32 = mask × presentᵀ when the batch has `present`; otherwise the batch's `mask`
    ([B], the same for every modality, or None for a training batch): the code path, and the
    numbers, of an undamaged batch are unchanged. `losses.masked_mean` takes either.
  """
  present = batch.get("present")
  mask = batch.get("mask")
  if present is None:
    return mask
  kept = jnp.asarray(present, jnp.float32).T                                 # [M, B]
  return kept if mask is None else kept * jnp.asarray(mask, jnp.float32)[None, :]


def modality_row(kept: jax.Array | None, index: jax.Array | int) -> jax.Array | None:
  """Modality `index`'s weights [B] from `modality_mask` (a traced index is fine)."""
  if kept is None or kept.ndim == 1:
    return kept
  return jnp.take(kept, index, axis=0)


def unimodal_ce(logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """[M] masked mean cross-entropy of each modality's logits [M, B, C] over the examples that
  count for it (`modality_mask`: real, and not removed by train-time damage)."""
  return losses.masked_mean(losses.cross_entropy(logits, batch["label"]), modality_mask(batch))


# ------------------------------------------------------------------------------------------------
# Shared pieces of the balancing baselines (METHODS.md §1.5).


def in_window(epoch: jax.Array, start: int, end: int) -> jax.Array:
  """Whether a (traced) 0-based epoch lies in [start, end], both inclusive; end < 0: no end."""
  inside = epoch >= start
  return inside if end < 0 else inside & (epoch <= end)


def scale_grad(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity in the forward pass; multiplies the gradient flowing back into `x` by `scale`.

  sg(x) + k (x − sg(x)): the value is x, the derivative k. This is the functional form of a
  backward hook on an identity module (AGM's gradient modulation).
  """
  scale = jax.lax.stop_gradient(jnp.asarray(scale, x.dtype))
  return jax.lax.stop_gradient(x) + scale * (x - jax.lax.stop_gradient(x))


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """⟨a, b⟩ over every leaf of two pytrees of one structure, in float32."""
  return sum((jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.float32(0))


def tree_sq_norm(a: PyTree) -> jax.Array:
  """‖a‖² over every leaf of a pytree, in float32."""
  return tree_vdot(a, a)


def tree_sum(a: PyTree) -> jax.Array:
  """Σ of every entry of every leaf of a pytree, in float32."""
  return sum((x.astype(jnp.float32).sum() for x in jax.tree.leaves(a)), jnp.float32(0))


def encoder_part(branch: Mapping[str, Any]) -> dict[str, Any]:
  """A branch's encoder parameters (encoder and optional projection), without the unimodal head.

  The multimodal model keys each branch as {"encoder", "proj"?, "head"}; the baselines that act
  on "encoder m" (OGM-GE, MMPareto, GGDM) act on everything but the head.
  """
  return {k: v for k, v in branch.items() if k != "head"}


def with_encoder_part(branch: Mapping[str, Any], encoder: Mapping[str, Any]) -> dict[str, Any]:
  """`branch` with its encoder part (see `encoder_part`) replaced by `encoder`."""
  return {**branch, **encoder}


def scale_modalities(grads: PyTree, modalities: tuple[str, ...], scales: jax.Array) -> PyTree:
  """Multiplies the gradient of each modality's branch (encoder, projection, head) by its scale.

  Args:
    grads: gradients keyed by modality name and "fusion".
    modalities: names in the order of the M axis.
    scales: [M] device scalars.

  Returns:
    grads with every leaf of modality m multiplied by scales[m]; "fusion" unchanged.
  """
  new = dict(grads)
  for i, m in enumerate(modalities):
    new[m] = jax.tree.map(lambda g, k=scales[i]: g * k.astype(g.dtype), grads[m])
  return new


def multi_loss_grads(loss_fn: Callable[[PyTree], tuple[jax.Array, Any]], params: PyTree):
  """The gradients of K losses w.r.t. the same parameters, from one forward pass.

  `jax.vjp` once on params ↦ [K] losses, then the pullback is vmapped over the K one-hot
  cotangents (METHODS.md §1.5): one forward, K backward passes sharing the residuals.

  Args:
    loss_fn: params -> ([K] losses, aux).
    params: the parameters.

  Returns:
    ([K] losses, grads with a leading K axis on every leaf, aux).
  """
  values, pullback, aux = jax.vjp(loss_fn, params, has_aux=True)
  (grads,) = jax.vmap(pullback)(jnp.eye(values.shape[0], dtype=values.dtype))
  return values, grads, aux


def freeze_branches(tx, frozen: tuple[str, ...]):
  """`tx` for every top-level parameter group except `frozen` ones, whose updates are zero.

  Needed by the staged methods (UDI's follower and fusion stages, BML-MI's distillation), whose
  frozen branches must not move even under weight decay; zeroing their gradients is not enough.

  Args:
    tx: the optimiser.
    frozen: top-level keys of the params (modality names, "fusion") to keep fixed.
  """
  def labels(params):
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_outputs_step(model, method: Method):
  """A jitted `(state, batch) -> outputs` in inference mode, for the phases between epochs.

  Returns every model output the host-level phases read (PMR's prototypes, UDI's anchor choice,
  BML-MI's mutual-information estimates, G-Blending's branch losses): `features` [M, B, d],
  `logits` [M, B, C], `fused_logits` [B, C] and `partial_logits` [M, B, C] when the model has
  them, plus `label` and `mask` [B].
  """

  def outputs_step(state, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = model.apply(variables, batch, train=False, **method.forward_kwargs(state.method))
    keep = ("features", "logits", "fused_logits", "partial_logits")
    result = {k: out[k] for k in keep if k in out}
    result["label"] = batch["label"]
    result["mask"] = batch_mask(batch)
    return result

  return jax.jit(outputs_step)
