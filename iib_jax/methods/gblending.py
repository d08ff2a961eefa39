"""G-Blending: gradient blending (Wang, Tran, Feiszli, CVPR 2020).

METHODS.md §7. The main step minimises L = Σ_k w_k CE(ℓ_k, y) over the branches
k ∈ {unimodal branch 1..M, fused}, with the weights w ∈ R^{M+1} (fused last) in the state. The
weights come from short probe trainings of each branch (host level):
  O = L^V − L^T (overfitting),  ΔO = O_{N+n} − O_N,  ΔG = L^V_N − L^V_{N+n} (generalisation)
  w_k ∝ ΔG_k / ΔO_k²,  normalised to Σ_k w_k = 1                          (`blend_weights`)
A probe of branch k is this same step with one-hot weights e_k (`probe_weights`): the loss then
depends only on that branch's parameters (a unimodal probe trains encoder m and its head alone, the
fused probe is joint training), so the probes reuse the compiled main step. Losses on T′ and V′
(per-sample means, inference mode) come from `make_branch_loss_step` / `branch_losses`.

The method's hooks hold out V′ (`holdout_ids`: a stratified share of the training split), train
on T′ = the rest, and re-estimate the weights before training and every `super_epoch` epochs
("online") or once ("offline").
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from iib_jax import losses
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  unimodal: str = "heads"          # branch logits: "heads" (paper) or "split" fusion layer (BalanceMM)
  fusion: str = "concat"
  gain: str = "clip"               # ΔG < 0 counts as 0 ("clip") or |ΔG| ("abs", BalanceMM's |g/o²|)
  mode: str = "online"             # "online": re-estimate every super_epoch epochs; "offline": once
  super_epoch: int = 10            # online period and probe length in epochs (BalanceMM)
  probe_epochs: int = 10           # n of the offline estimate (not published; guess)
  holdout_fraction: float = 0.1    # |V′| / |train| (not published; guess)

  def validate(self, modalities):
    base.one_of("unimodal", self.unimodal, ("heads", "split"))
    base.one_of("fusion", self.fusion, ("concat", "sum"))
    base.one_of("gain", self.gain, ("clip", "abs"))
    base.one_of("mode", self.mode, ("online", "offline"))
    for key in ("super_epoch", "probe_epochs"):
      base.require(getattr(self, key) >= 1, key, getattr(self, key), "an integer ≥ 1")
    base.require(0 < self.holdout_fraction < 1, "holdout_fraction", self.holdout_fraction,
                 "a fraction in (0, 1)")


class GBlendState(struct.PyTreeNode):
  """G-Blending's state.

  Attributes:
    weights: [M + 1] blending weights, the unimodal branches in modality order, then the fused
      branch. Set by the runner between phases (`with_weights`).
  """
  weights: jax.Array


def with_weights(state: GBlendState, weights) -> GBlendState:
  """The method state with new blending weights (float32 [M + 1])."""
  return state.replace(weights=jnp.asarray(weights, jnp.float32).reshape(state.weights.shape))


def probe_weights(branch: int, num_modalities: int) -> np.ndarray:
  """One-hot weights e_k that turn the main step into branch k's probe (k = M: fused)."""
  return np.eye(num_modalities + 1, dtype=np.float32)[branch]


def blend_weights(train_start, val_start, train_end, val_end, gain: str = "clip",
                  eps: float = 1e-12) -> np.ndarray:
  """w_k ∝ ΔG_k / ΔO_k² from the losses before and after each branch's probe, Σ w = 1.

  Args:
    train_start, val_start: [K] losses L^T_N, L^V_N of each branch at the probe's start.
    train_end, val_end: [K] losses L^T_{N+n}, L^V_{N+n} at its end.
    gain: "clip" (a branch whose validation loss rose gets weight 0) or "abs" (|ΔG|).
    eps: floor of ΔO².

  Returns:
    [K] float32 weights summing to 1; uniform if no branch generalised.
  """
  t0, v0, t1, v1 = (np.asarray(x, np.float64) for x in (train_start, val_start, train_end,
                                                        val_end))
  delta_g = v0 - v1
  delta_o = (v1 - t1) - (v0 - t0)
  delta_g = np.abs(delta_g) if gain == "abs" else np.maximum(delta_g, 0.0)
  raw = delta_g / np.maximum(delta_o ** 2, eps)
  if not np.isfinite(raw).all() or raw.sum() <= 0:
    return np.full(raw.shape, 1.0 / raw.shape[0], np.float32)
  return (raw / raw.sum()).astype(np.float32)


def branch_logits(outputs: Mapping[str, jax.Array], unimodal: str) -> jax.Array:
  """[M + 1, B, C]: each branch's logits, the fused one last."""
  uni = outputs["partial_logits"] if unimodal == "split" else outputs["logits"]
  return jnp.concatenate([uni, outputs["fused_logits"][None]], axis=0)


def holdout_ids(clips: Iterable[tuple[bytes, int]], fraction: float, seed: int) -> frozenset:
  """Clip ids of the holdout V′: a `fraction` of every class of the training split (at least one
  clip of a class with two or more), chosen by a hash of (seed, clip id), so the same clips are
  held out on every host and after a restart.

  Args:
    clips: (clip id, label) of every training clip.
    fraction: |V′| / |train| per class.
    seed: the run's seed.
  """
  by_class: dict[int, list[bytes]] = {}
  for clip_id, label in clips:
    by_class.setdefault(int(label), []).append(bytes(clip_id))
  held = []
  for ids in by_class.values():
    ids = sorted(ids, key=lambda i: zlib.crc32(i + f":{seed}".encode()))
    count = int(round(fraction * len(ids)))
    if len(ids) > 1:
      count = min(max(count, 1), len(ids) - 1)
    held += ids[:count]
  return frozenset(held)


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  num = spec.num_modalities

  def loss(outputs, batch, state: GBlendState, step):
    del step
    logits = branch_logits(outputs, opts.unimodal)                               # [M + 1, B, C]
    fused = losses.masked_mean(losses.cross_entropy(logits[num], batch["label"]),
                               batch.get("mask"))
    ce = jnp.concatenate([base.unimodal_ce(logits[:num], batch), fused[None]])   # [M + 1]
    total = (state.weights * ce).sum()
    return total, {"metrics": {"ce_branch": ce, "blend_weights": state.weights}}

  def predict(outputs, state):
    del state
    uni = outputs["partial_logits"] if opts.unimodal == "split" else outputs["logits"]
    return outputs["fused_logits"], uni

  def hooks(context: base.Context) -> base.Hooks:
    data, seed = context.data, context.seed
    held = holdout_ids(data.clip_labels("train"), opts.holdout_fraction, seed)
    loss_step = make_branch_loss_step(context.model, context.method, opts.unimodal)
    names = list(spec.modalities) + ["fused"]
    context.log(f"[gblending] holdout V′: {len(held)} training clips; T′: the rest "
                f"({opts.mode} estimate)")

    def train_batches(epoch):
      return data.train(epoch, seed, keep=lambda clip: clip not in held)

    def holdout_batches():
      return data.eval("train", keep=lambda clip: clip in held)

    def placed(step):
      # A probe's one-hot weights are made on the host: placing them like the rest of the state
      # keeps the compiled steps' input signature, so the probes reuse them, not recompile.
      return lambda state, batch: step(context.put(state), batch)

    def reestimate(state, start_epoch: int, epochs: int):
      # The probes see the epochs the main training is about to see.
      weights = estimate(placed(context.train_step), placed(loss_step), state,
                         train_batches=lambda e: train_batches(start_epoch + e),
                         holdout_batches=holdout_batches, epochs=epochs, gain=opts.gain)
      context.log(f"[gblending] weights from epoch {start_epoch} ({epochs}-epoch probes): "
                  + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
      return state.replace(method=context.put(with_weights(state.method, weights)))

    if opts.mode == "offline":
      return base.Hooks(before_training=lambda state: reestimate(state, 0, opts.probe_epochs),
                        train_batches=train_batches)
    period = opts.super_epoch

    def between_epochs(epoch, state, val):
      next_epoch = epoch + 1
      if next_epoch % period or next_epoch >= spec.total_epochs:
        return state
      return reestimate(state, next_epoch, period)

    return base.Hooks(before_training=lambda state: reestimate(state, 0, period),
                      between_epochs=between_epochs, train_batches=train_batches)

  # Until the first estimate, every branch counts equally (placeholder).
  return base.Method(
      name="gblending",
      init_state=lambda: GBlendState(jnp.full((num + 1,), 1.0 / (num + 1), jnp.float32)),
      loss=loss, predict=predict, hooks=hooks,
      model={"fusion": opts.fusion, "detach_heads": opts.unimodal == "split"})


def make_branch_loss_step(model, method: base.Method, unimodal: str = "heads"):
  """A jitted `(state, batch) -> ([M + 1] summed CE per branch, number of real examples)`, in
  inference mode, for the probes' L^T and L^V."""
  outputs_step = base.make_outputs_step(model, method)

  @jax.jit
  def branch_loss_step(state, batch):
    out = outputs_step(state, batch)
    ce = losses.cross_entropy(branch_logits(out, unimodal), out["label"])        # [K, B]
    return (ce * out["mask"]).sum(-1), out["mask"].sum()

  return branch_loss_step


def branch_losses(branch_loss_step, state, batches: Iterable[Mapping[str, Any]]) -> np.ndarray:
  """[M + 1] per-sample mean CE of every branch over `batches` (host numpy)."""
  total, count = None, 0.0
  for batch in batches:
    s, n = jax.device_get(branch_loss_step(state, batch))
    total = s if total is None else total + s
    count += float(n)
  return np.asarray(total, np.float64) / max(count, 1.0)


def estimate(train_step, branch_loss_step, state, *,
             train_batches: Callable[[int], Iterable[Mapping[str, Any]]],
             holdout_batches: Callable[[], Iterable[Mapping[str, Any]]], epochs: int,
             gain: str = "clip") -> np.ndarray:
  """One weight estimate: a probe of every branch from a copy of `state`, then `blend_weights`.

  Each probe k starts from a copy of `state` (the train step donates its input, so `state`
  itself is never passed to it) with weights e_k, measures its branch's loss on T′ and V′, trains
  `epochs` epochs on T′ and measures again.

  Args:
    train_step: the compiled G-Blending step (the probes reuse it).
    branch_loss_step: from `make_branch_loss_step`.
    state: the TrainState to probe from; left untouched.
    train_batches: epoch -> batches of T′ (the training split minus V′).
    holdout_batches: () -> batches of V′.
    epochs: n, the probe length.
    gain: see `blend_weights`.

  Returns:
    [M + 1] weights for `with_weights`.
  """
  num_branches = state.method.weights.shape[0]
  start_t, start_v, end_t, end_v = (np.zeros(num_branches) for _ in range(4))
  for k in range(num_branches):
    probe = jax.tree.map(jnp.copy, state)
    probe = probe.replace(method=with_weights(probe.method, probe_weights(k, num_branches - 1)))
    start_t[k] = branch_losses(branch_loss_step, probe, train_batches(0))[k]
    start_v[k] = branch_losses(branch_loss_step, probe, holdout_batches())[k]
    for epoch in range(epochs):
      for batch in train_batches(epoch):
        probe, _ = train_step(probe, batch)
    end_t[k] = branch_losses(branch_loss_step, probe, train_batches(0))[k]
    end_v[k] = branch_losses(branch_loss_step, probe, holdout_batches())[k]
  return blend_weights(start_t, start_v, end_t, end_v, gain)


DEFINITION = base.Definition(
    name="gblending", build=build, options=Options, display="G-Blending",
    readout=lambda o: "split fusion layer" if o.unimodal == "split" else "heads")
