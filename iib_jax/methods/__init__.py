"""Balancing methods. The registry is a plain dict of `Definition`s, in the row order of Table I.

  method = get_method("ogm_ge", {"alpha": 0.8}, spec)      # options checked against ogm_ge.Options
  definition("iibalance").needs_budgets                   # static facts, without building

A new method is one file with a `DEFINITION` and one line below (or `register(...)` at run time).
"""
from __future__ import annotations

from typing import Any, Mapping

from iib_jax.methods import (agm, base, bmlmi, gblending, ggdm, greedy, iibalance, joint,
                             mmpareto, mslr, ogm_ge, pmr, udi)
from iib_jax.methods.base import Definition, Hooks, Method, MethodSpec, Options

METHODS: dict[str, Definition] = {}


def register(method: Definition) -> Definition:
  """Adds a method to the registry (its name must be new); returns it."""
  if method.name in METHODS:
    raise ValueError(f"a method named {method.name!r} is already registered")
  METHODS[method.name] = method
  return method


def unregister(name: str) -> None:
  """Removes a method added with `register` (tests)."""
  METHODS.pop(name, None)


def definition(name: str) -> Definition:
  """The registered method `name`."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; accepted: {', '.join(listed())}")
  return METHODS[name]


def listed() -> tuple[str, ...]:
  """The methods a run may choose, in the registry's (Table I's) order."""
  return tuple(name for name, d in METHODS.items() if d.listed)


def get_method(name: str, options: Mapping[str, Any] | Options | None,
               spec: MethodSpec) -> Method:
  """Builds the method `name` from its options (config.methods.<name>) and the run's spec."""
  return definition(name).make(options, spec)


for _module in (joint, mslr, gblending, ogm_ge, greedy, pmr, agm, mmpareto, ggdm, udi, bmlmi,
                iibalance):
  register(_module.DEFINITION)
register(joint.UNIMODAL)

__all__ = ["METHODS", "Definition", "Hooks", "Method", "MethodSpec", "Options", "base",
           "definition", "get_method", "listed", "register", "unregister"]
