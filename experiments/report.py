"""What every published figure carries: the command, the machine, the versions, the wall time."""
from __future__ import annotations

import os
import platform
import sys


def machine() -> str:
  import jax
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  return (f"{jax.device_count()} × {device.device_kind} ({device.platform}); host {cpu}, "
          f"{os.cpu_count()} cores; python {sys.version.split()[0]}, jax {jax.__version__}")


def footer(command: str, seconds: float) -> str:
  args = " ".join(sys.argv[1:])
  return f"Command: `{command}{' ' + args if args else ''}`; {seconds:.0f} s on {machine()}.\n"
