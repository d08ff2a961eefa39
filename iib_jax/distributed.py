"""One process or many: starting jax.distributed, and which process writes.

  from iib_jax import distributed
  distributed.initialize()          # before any JAX computation; a no-op for one process
  if distributed.is_primary(): ...  # logs, tables, plots, JSON: process 0 only

`initialize` starts JAX's multi-process runtime when this process is one of several, and does
nothing otherwise. It knows it is one of several from, in this order:
  - explicit arguments (the commands' `--coordinator_address`, `--num_processes`,
    `--process_id`), or the environment variables `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
  - a cluster JAX detects itself: a SLURM job step of several tasks (`srun`), an Open MPI job
    (`mpirun`), a multi-host Cloud TPU slice; then `jax.distributed.initialize()` is called
    without arguments and JAX reads the cluster's own variables.
On CPU the cross-process collectives run over gloo.
"""
from __future__ import annotations

import os
from typing import Optional

import jax


def _int_env(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def cluster_detected() -> bool:
  """Whether the environment is a multi-process job JAX can configure itself for."""
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Starts jax.distributed when this process is one of several (module docstring).

  Returns:
    Whether the multi-process runtime was started (False: a single process).

  Raises:
    ValueError: naming the missing setting when some but not all are given.
  """
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
  explicit = [v is not None for v in (address, count, index)]
  # Several processes exchange tensors on CPU through gloo (the default is none).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if any(explicit):
    if count is not None and count <= 1 and address is None:
      return False
    if not all(explicit):
      missing = [n for n, given in zip(("coordinator_address", "num_processes", "process_id"),
                                       explicit) if not given]
      raise ValueError(f"invalid config: several processes need {', '.join(missing)} too "
                       "(flags --coordinator_address/--num_processes/--process_id or the "
                       "variables JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index)
    return True
  if cluster_detected():
    jax.distributed.initialize()
    return True
  return False


def is_primary() -> bool:
  """Whether this process writes the logs, tables, plots and JSON records (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process got here (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
