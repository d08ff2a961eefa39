"""IIBalance: intrinsic information budgets, prototype-guided relative alignment, gated fusion.

Per step (one forward pass):
  Stage I   L_I  = mean_i Σ_m CE(f_m(z_m), y) + Σ_{m≠m*} λ_m L_PRA^m            (Eqs. 4–6)
  Stage II  L_II = mean_i CE(f_fuse(Z), y) + γ mean_i Σ_m w_m CE(f_m(z_m), y)     (Eqs. 7–11)
  total     L    = λ(t) L_I + (1 − λ(t)) L_II,  λ(t) = λ_start (1 − t/T)          (Eqs. 12–13)
then the anchor prototypes take an EMA step towards this batch's class means (Eq. 3).
β, λ_m and the anchor are arrays in the method state: checkpointed, and a new β never recompiles.
With train-time damage (the batch's `present`, docs/DATA.md) each modality's own terms (its CE,
its PRA, the anchor's prototypes, its share of the γ sum) leave out the examples where it was
removed; the fused CE keeps them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from iib_jax import budget, losses, prototypes
from iib_jax.methods import base

@dataclasses.dataclass(frozen=True)
class Options(base.Options):
  tau: float = budget.PAPER_TAU        # budget temperature (paper)
  tau_p: float = 0.5                   # prototype temperature (paper)
  rho: float = 0.9                     # prototype EMA momentum (not given)
  gamma: float = 0.5                   # weight of the unimodal auxiliary term (not given)
  lambda_start: float = 1.0            # initial weight of Stage I (not given)
  similarity: str = "cosine"           # PRA similarity: "dot" (literal) or "cosine"
  lambda_schedule: str = "epoch"       # λ(t) constant within an epoch, or "step" (fractional t)
  prototypes_in_loss: str = "before"   # PRA sees the bank "before" or "after" this batch's update
  mask_unseen_prototypes: bool = True  # leave never-seen classes out of the PRA softmax
  detach_weights_in_aux: bool = False  # True: no gradient into w through the γ term
  prior: str = "iib"                   # "iib" or "uniform" (Table II: w/o IIB prior)
  stage_one: bool = True               # False: Table II w/o Stage I (no PRA, λ_m = 0)
  fusion_rule: str = "gated"           # "prior" / "mean": Table II w/o Stage II (fixed weights)

  def validate(self, modalities):
    base.require(self.tau > 0, "tau", self.tau, "τ > 0")
    base.require(self.tau_p > 0, "tau_p", self.tau_p, "τ_p > 0")
    base.require(0 <= self.rho < 1, "rho", self.rho, "ρ in [0, 1)")
    base.require(self.gamma >= 0, "gamma", self.gamma, "γ ≥ 0")
    base.require(0 <= self.lambda_start <= 1, "lambda_start", self.lambda_start,
                 "λ_start in [0, 1]")
    base.one_of("similarity", self.similarity, ("dot", "cosine"))
    base.one_of("lambda_schedule", self.lambda_schedule, ("epoch", "step"))
    base.one_of("prototypes_in_loss", self.prototypes_in_loss, ("before", "after"))
    base.one_of("prior", self.prior, ("iib", "uniform"))
    base.one_of("fusion_rule", self.fusion_rule, ("gated", "prior", "mean"))


class IIBState(struct.PyTreeNode):
  """IIBalance's own state.

  Attributes:
    bank: anchor prototypes.
    beta: [M] relative budgets used as the fusion prior (Eq. 9).
    strength: [M] alignment strengths λ_m (Eq. 5).
    anchor: int32 scalar, the anchor modality m*.
  """
  bank: prototypes.PrototypeBank
  beta: jax.Array
  strength: jax.Array
  anchor: jax.Array


def initial_state(budgets, num_classes: int, feature_dim: int, tau: float, prior: str = "iib",
                  stage_one: bool = True) -> IIBState:
  """β, λ and m* from the budgets, and an empty prototype bank.

  With prior="uniform" (the Table II ablation) the fusion prior is uniform while the anchor and the
  alignment strengths still come from the real budgets: a uniform β alone would make every λ_m
  zero and leave no anchor (FIDELITY: w/o IIB prior).
  """
  beta = budget.relative_budget(jnp.asarray(budgets, jnp.float32), tau)
  strength = budget.alignment_strength(beta)
  if not stage_one:
    strength = jnp.zeros_like(strength)
  if prior == "uniform":
    fusion_prior = jnp.full_like(beta, 1.0 / beta.shape[0])
  elif prior == "iib":
    fusion_prior = beta
  else:
    raise ValueError(f"methods.iibalance.prior must be 'iib' or 'uniform', got {prior!r}")
  return IIBState(bank=prototypes.init_bank(num_classes, feature_dim), beta=fusion_prior,
                  strength=strength, anchor=budget.anchor_index(beta).astype(jnp.int32))


def build(opts: Options, spec: base.MethodSpec) -> base.Method:
  def init_state() -> IIBState:
    if spec.budgets is None:
      raise ValueError("iibalance needs information budgets: run the IIB estimation phase first")
    return initial_state(spec.budgets, spec.num_classes, spec.feature_dim, opts.tau,
                         opts.prior, opts.stage_one)

  def stage_time(step):
    if opts.lambda_schedule == "step":
      return step.astype(jnp.float32) / spec.steps_per_epoch
    return spec.epoch(step)

  def loss(outputs, batch, state: IIBState, step):
    labels, mask = batch["label"], batch.get("mask")
    # Each modality's own terms (its CE, its PRA, the anchor's prototypes, its share of Eq. 11's
    # auxiliary sum) leave out the examples where train-time damage removed it; the fused term
    # keeps them (`base.modality_mask`). Without damage `kept` is `mask`.
    kept = base.modality_mask(batch)                                          # [M, B], [B], None
    feats = outputs["features"].astype(jnp.float32)                          # [M, B, d]
    logits = outputs["logits"]                                                # [M, B, C]
    anchor_feats = jnp.take(feats, state.anchor, axis=0)                      # [B, d]
    new_bank = prototypes.ema_update(state.bank, anchor_feats, labels, opts.rho,
                                     base.modality_row(kept, state.anchor))
    bank = new_bank if opts.prototypes_in_loss == "after" else state.bank
    seen = bank.seen if opts.mask_unseen_prototypes else None
    # PRA for every modality; the anchor's term is multiplied by λ_{m*} = 0.
    per_modality = kept is not None and kept.ndim == 2
    pra = jax.vmap(lambda z, k: prototypes.pra_loss(z, labels, bank.protos, opts.tau_p,
                                                    opts.similarity, seen, k),
                   in_axes=(0, 0 if per_modality else None))(feats, kept)
    stage_one = losses.stage_one(logits, labels, pra, state.strength, kept)
    stage_two = losses.stage_two(outputs["fused_logits"], logits, outputs["weights"], labels,
                                 opts.gamma, mask, opts.detach_weights_in_aux,
                                 present=batch["present"].T if "present" in batch else None)
    weight = losses.stage_weight(stage_time(step), spec.total_epochs, opts.lambda_start)
    total = losses.total_loss(stage_one, stage_two, weight)
    metrics = {
        "loss_stage_one": stage_one,
        "loss_stage_two": stage_two,
        "stage_weight": weight,
        "ce_unimodal": base.unimodal_ce(logits, batch),
        "loss_pra": pra * (state.strength > 0),
        "fusion_weights": losses.masked_mean(outputs["weights"].T, mask),       # [M]
        "beta": state.beta,
        "alignment_strength": state.strength,
    }
    return total, {"metrics": metrics, "bank": new_bank}

  def update_state(state: IIBState, aux, batch) -> IIBState:
    del batch
    return state.replace(bank=aux["bank"])

  return base.Method(name="iibalance", init_state=init_state, loss=loss,
                     model={"fusion": "gated", "detach_heads": False,
                            "fusion_rule": opts.fusion_rule},
                     forward_kwargs=lambda state: {"prior": state.beta},
                     update_state=update_state)


DEFINITION = base.Definition(name="iibalance", build=build, options=Options,
                             needs_budgets=True, display="IIBalance")
