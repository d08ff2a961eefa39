"""Analytic FLOP counts of a model, from the shapes of its convolutions and matrix products.

The forward pass is traced once (`jax.make_jaxpr`, nothing is computed) and every
`conv_general_dilated` and `dot_general` in it is counted with the textbook formula:

  convolution     MACs = output elements × kernel height × kernel width × input channels / groups
  dot (dense,     MACs = batch dims × lhs free dims × rhs free dims × contracted dims
  GRU/LSTM gates, einsum)

A `scan` (the recurrences of the GRU/LSTM encoders) multiplies its body by its length; `jit`,
`custom_jvp`/`custom_vjp` and `remat` bodies are counted once, `cond` by its largest branch. One
multiply-add is 2 FLOPs. BatchNorm, activations, pooling, softmax and the losses are not counted
(the usual convention: they are a few percent of a ResNet's FLOPs and are memory-bound anyway).

A train step is counted two ways:

  train_flops       3 × forward (forward + weight gradient + input gradient of every layer): the
                    convention of model-FLOPs utilisation, used for the fraction of peak;
  autodiff_flops    forward + one pass per operand of each product that depends on the parameters:
                    what reverse-mode differentiation has to compute. It leaves out the input
                    gradient of the layers that read the batch directly (nobody asks for the
                    gradient of the frames), which is 1.8% of the standard configuration.

Everything is per sample: the model is traced at batch 1 (BatchNorm in training mode), and frames
folded into the batch are counted as they run (T frames = T images).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Callable, Mapping

import jax
import numpy as np

_COUNTED = ("conv_general_dilated", "dot_general")


@dataclasses.dataclass
class FlopCount:
  """MACs of one forward pass, and what its gradient needs.

  Attributes:
    forward_macs: multiply-adds of the forward pass.
    grad_macs: multiply-adds of the backward pass when only the parameters need a gradient
      (each product contributes its forward MACs once per operand that depends on them).
    by_kind: forward MACs per primitive ('conv_general_dilated', 'dot_general').
    by_module: forward MACs per top-level module (e.g. modality names and 'fusion').
  """
  forward_macs: int = 0
  grad_macs: int = 0
  by_kind: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
  by_module: dict = dataclasses.field(default_factory=lambda: defaultdict(int))

  @property
  def forward_flops(self) -> int:
    return 2 * self.forward_macs

  @property
  def train_flops(self) -> int:
    """3 × forward: forward, weight gradient and input gradient of every layer."""
    return 3 * self.forward_flops

  @property
  def autodiff_flops(self) -> int:
    """Forward plus the backward products reverse mode actually needs (no gradient of the batch)."""
    return 2 * (self.forward_macs + self.grad_macs)

  def to_json(self) -> dict:
    return {"forward_macs": self.forward_macs, "forward_flops": self.forward_flops,
            "train_flops": self.train_flops, "autodiff_flops": self.autodiff_flops,
            "forward_macs_by_kind": dict(self.by_kind),
            "forward_macs_by_module": dict(self.by_module)}


def conv_macs(lhs_shape, rhs_shape, out_shape, dimension_numbers) -> int:
  """MACs of a convolution: output elements × (kernel elements / output channels).

  The kernel's input-channel dimension already holds input channels / groups, so this is right
  for grouped and depthwise convolutions too.
  """
  del lhs_shape
  rhs_out_dim = dimension_numbers.rhs_spec[0]
  return int(np.prod(out_shape, dtype=np.int64)
             * (np.prod(rhs_shape, dtype=np.int64) // rhs_shape[rhs_out_dim]))


def dot_macs(lhs_shape, rhs_shape, dimension_numbers) -> int:
  """MACs of a dot_general: batch × lhs free × rhs free × contracted."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  contracted = int(np.prod([lhs_shape[d] for d in lhs_contract], dtype=np.int64))
  batch = int(np.prod([lhs_shape[d] for d in lhs_batch], dtype=np.int64))
  lhs_free = int(np.prod(lhs_shape, dtype=np.int64)) // max(contracted * batch, 1)
  rhs_free = int(np.prod(rhs_shape, dtype=np.int64)) // max(contracted * batch, 1)
  return batch * lhs_free * rhs_free * contracted


def _is_var(x) -> bool:
  return not hasattr(x, "val")          # a Literal has .val; a Var does not


def _sub_jaxprs(eqn):
  """(jaxpr, invar dependence mapper, multiplier) for each body of a higher-order primitive."""
  name = eqn.primitive.name
  params = eqn.params
  subs = []
  for key, value in params.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      jaxpr = getattr(v, "jaxpr", v)       # ClosedJaxpr → Jaxpr
      if hasattr(jaxpr, "eqns"):
        subs.append((key, jaxpr))
  out = []
  for key, jaxpr in subs:
    mult = 1
    if name == "scan":
      mult = int(params["length"])
    elif name == "while":
      if key == "cond_jaxpr":
        continue
      # A while loop's trip count is not known from shapes; counted once (none of the models
      # here has one).
    if name == "cond":
      operands = eqn.invars[1:]
    elif len(jaxpr.invars) == len(eqn.invars):
      operands = eqn.invars
    else:
      operands = None
    out.append((key, jaxpr, operands, mult))
  return out


def _count(jaxpr, depends: set, scope: str, count: FlopCount, mult: int, top: Callable) -> set:
  """Counts `jaxpr`'s products into `count`; returns the set of vars depending on parameters."""
  depends = set(depends)
  for eqn in jaxpr.eqns:
    in_dep = [(_is_var(v) and v in depends) for v in eqn.invars]
    name = eqn.primitive.name
    where = top(scope, str(eqn.source_info.name_stack))
    if name in _COUNTED:
      shapes = [v.aval.shape for v in eqn.invars]
      if name == "conv_general_dilated":
        macs = conv_macs(shapes[0], shapes[1], eqn.outvars[0].aval.shape,
                         eqn.params["dimension_numbers"])
      else:
        macs = dot_macs(shapes[0], shapes[1], eqn.params["dimension_numbers"])
      macs *= mult
      count.forward_macs += macs
      count.grad_macs += macs * sum(in_dep[:2])
      count.by_kind[name] += macs
      count.by_module[where] += macs
    subs = _sub_jaxprs(eqn)
    if subs:
      branch_counts = []
      for key, sub, operands, sub_mult in subs:
        if operands is not None:
          sub_dep = {iv for iv, ov, d in zip(sub.invars, operands, [
              (_is_var(v) and v in depends) for v in operands]) if d}
        else:
          sub_dep = set(sub.invars) if any(in_dep) else set()
        if eqn.primitive.name == "scan":
          # A carry can become parameter-dependent inside the body: iterate to a fixed point.
          num_consts, num_carry = eqn.params["num_consts"], eqn.params["num_carry"]
          for _ in range(4):
            probe = FlopCount()
            out_dep = _count(sub, sub_dep, where, probe, 1, top)
            carry_out = [v in out_dep for v in sub.outvars[:num_carry]]
            new = set(sub_dep) | {sub.invars[num_consts + i] for i, d in enumerate(carry_out) if d}
            if new == sub_dep:
              break
            sub_dep = new
        part = FlopCount()
        out_dep = _count(sub, sub_dep, where, part, mult * sub_mult, top)
        branch_counts.append((part, out_dep, sub))
      if eqn.primitive.name == "cond":
        chosen = [max(branch_counts, key=lambda b: b[0].forward_macs)]
      else:
        chosen = branch_counts
      for part, _, _ in chosen:
        count.forward_macs += part.forward_macs
        count.grad_macs += part.grad_macs
        for k, v in part.by_kind.items():
          count.by_kind[k] += v
        for k, v in part.by_module.items():
          count.by_module[k] += v
      # An output depends on the parameters if any input does (conservative and exact for the
      # bodies that appear here: jit, custom_jvp, scan over parameters).
      if any(in_dep) or any(o for _, od, s in branch_counts for o in s.outvars if o in od):
        depends.update(v for v in eqn.outvars)
      continue
    if any(in_dep):
      depends.update(eqn.outvars)
  return depends


def _top_module(root: str | None):
  """Maps a name stack to its top-level module under `root` (e.g. 'video', 'fusion')."""

  def top(scope: str, name_stack: str) -> str:
    if scope:
      return scope
    parts = [p for p in name_stack.split("/") if p]
    if root is not None and root in parts:
      i = parts.index(root)
      if i + 1 < len(parts):
        return parts[i + 1].split("(")[0]
    return parts[0] if parts else "?"

  return top


def count_fn(fn: Callable, params: Any, *inputs: Any, root: str | None = None) -> FlopCount:
  """Counts the products of `fn(params, *inputs)`; gradients are taken w.r.t. `params` only.

  Args:
    fn: a function of (params, *inputs), traced once with `jax.make_jaxpr`.
    params, inputs: arrays or `jax.ShapeDtypeStruct`s.
    root: the outermost module name in the name stack (e.g. 'MultimodalModel'); the breakdown
      is by the module one level below it.
  """
  closed = jax.make_jaxpr(fn)(params, *inputs)
  jaxpr = closed.jaxpr
  num_params = len(jax.tree.leaves(params))
  depends = set(jaxpr.invars[:num_params])
  count = FlopCount()
  _count(jaxpr, depends, "", count, 1, _top_module(root))
  count.by_kind = dict(count.by_kind)
  count.by_module = dict(count.by_module)
  return count


def count_module(module, example: Any, *, train: bool = True, **kwargs: Any) -> FlopCount:
  """Per-call FLOPs of a Linen module on `example` (shapes only; nothing is computed).

  Args:
    module: an unbound Linen module whose `__call__` takes (inputs, train=..., **kwargs).
    example: the inputs (arrays or ShapeDtypeStructs); counts are for this batch size.
    train: BatchNorm mode (does not change the count).
  """
  variables = jax.eval_shape(lambda x: module.init({"params": jax.random.key(0),
                                                    "dropout": jax.random.key(0)},
                                                   x, train=False, **kwargs), example)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  def forward(p, state, x):
    return module.apply({"params": p, **state}, x, train=train,
                        rngs={"dropout": jax.random.key(0)},
                        mutable=list(state) if train else False, **kwargs)

  return count_fn(forward, params, rest, example, root=type(module).__name__)


def per_sample(example: Mapping[str, Any]) -> dict:
  """A batch of one: each array's leading axis set to 1 (as ShapeDtypeStructs)."""
  return {k: jax.ShapeDtypeStruct((1,) + tuple(v.shape[1:]), v.dtype) for k, v in example.items()}


def model_flops(model, example: Mapping[str, Any], **kwargs: Any) -> FlopCount:
  """Per-sample FLOPs of a MultimodalModel on batches shaped like `example`.

  Args:
    model: the MultimodalModel.
    example: a batch (only the model's inputs are read; any batch size).
    **kwargs: extra forward arguments (e.g. prior=beta for the gated fusion).
  """
  inputs = per_sample({m: example[m] for m in model.modalities})
  return count_module(model, inputs, **kwargs)


def gflops(x: float) -> str:
  return f"{x / 1e9:.2f}"
