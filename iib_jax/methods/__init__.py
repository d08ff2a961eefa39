"""Balancing methods. `get_method(name, options, spec)` builds one; the registry is a plain dict."""
from __future__ import annotations

from typing import Any, Mapping

from iib_jax.methods import (agm, base, bmlmi, gblending, ggdm, greedy, iibalance, joint,
                             mmpareto, mslr, ogm_ge, pmr, udi)
from iib_jax.methods.base import Method, MethodSpec

METHODS = {
    "iibalance": iibalance.build,
    "joint": joint.build,
    "unimodal": joint.build_unimodal,
    "mslr": mslr.build,
    "gblending": gblending.build,
    "ogm_ge": ogm_ge.build,
    "greedy": greedy.build,
    "pmr": pmr.build,
    "agm": agm.build,
    "mmpareto": mmpareto.build,
    "ggdm": ggdm.build,
    "udi": udi.build,
    "bmlmi": bmlmi.build,
}


def get_method(name: str, options: Mapping[str, Any] | None, spec: MethodSpec) -> Method:
  """Builds the method `name` from its options (config.methods.<name>) and the run's spec."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; accepted: {sorted(METHODS)}")
  return METHODS[name](dict(options or {}), spec)


__all__ = ["METHODS", "Method", "MethodSpec", "get_method", "base"]
