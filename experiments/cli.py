"""Command-line entry shared by the commands: `--config` (ml_collections) and `--workdir`.

  python -m experiments.kinetics_sounds --config.data.dir=/data/ks --config.seed=1
  python -m experiments.kinetics_sounds --config=experiments/configs/kinetics_sounds.py:smoke

With no `--config.data.dir` the command runs the synthetic demonstration. A mistyped config key
stops the command before anything runs, with one line: the key, the closest valid key and the
valid keys at that level (`check_config_flags`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from typing import Sequence

from iib_jax import quiet

quiet.skip_keras()               # the commands never use Keras: TensorFlow starts 2.5 s sooner
HERE = os.path.dirname(os.path.abspath(__file__))


def load_config_file(spec: str):
  """The config of a `--config` value, `path/to/config.py[:arg]`, as ml_collections loads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_file", path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"config file not found: {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _config_keys(argv: Sequence[str], name: str) -> list[str]:
  """The dotted keys given as `--<name>.<key>=value` or `--<name>.<key> value`."""
  keys = []
  for arg in argv:
    if arg.startswith(f"--{name}."):
      keys.append(arg[len(name) + 3:].split("=", 1)[0])
  return keys


def check_config_flags(argv: Sequence[str], default_file: str, name: str = "config") -> None:
  """Exits with one line naming the first unknown `--config.<key>` of `argv` (status 2)."""
  from experiments.configs import common
  keys = _config_keys(argv, name)
  if not keys:
    return
  spec = default_file
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      spec = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      spec = argv[i + 1]
  try:
    config = load_config_file(spec)
  except Exception as e:  # the flag parser reports a broken config file itself
    del e
    return
  for key in keys:
    problem = common.missing_key(config, key)
    if problem:
      sys.stderr.write(f"error: {problem}\n")
      sys.exit(2)


@contextlib.contextmanager
def stops_on_bad_input():
  """Turns the errors that name their cause (an invalid config, a workdir made from something
  else, a damaged dataset) into `error: ...` on stderr and exit status 1, without a traceback."""
  from experiments.workdir import WorkdirMismatch
  try:
    yield
  except WorkdirMismatch as e:
    sys.exit(f"error: {e}")
  except ValueError as e:
    from iib_jax.schema import DatasetError
    if str(e).startswith("invalid config") or isinstance(e, DatasetError):
      sys.exit(f"error: {e}")
    raise


def parse_part(text: str, flag: str = "--part") -> tuple[int, int]:
  """'k/n' -> (k, n) with 0 ≤ k < n: the share of a sweep's seeds one worker process trains."""
  try:
    k, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise ValueError(f"invalid flag: {flag}={text!r}; accepted: 'k/n' with 0 <= k < n") from None
  if not 0 <= k < n:
    raise ValueError(f"invalid flag: {flag}={text!r}; accepted: 'k/n' with 0 <= k < n")
  return k, n


def run_workers(module: str, count: int, argv: Sequence[str], *, workers_flag: str = "--workers",
                part_flag: str = "--part") -> None:
  """`python -m module argv` again in `count` processes on this machine, worker k with
  `part_flag=k/count` (it trains seeds k, k + count, ...); waits for all of them. A failing
  worker stops the others and names itself; what the workers finished is kept, and the same
  command resumes it.

  Each worker runs with this process's environment (XLA's settings included), so a run computes
  in a worker bit for bit what it computes in one process (tests/test_protocol.py).
  """
  from experiments.build import log
  args = [a for a in argv if not a.startswith((workers_flag, part_flag))]
  procs = {k: subprocess.Popen([sys.executable, "-m", module, *args, f"{workers_flag}=1",
                                f"{part_flag}={k}/{count}"])
           for k in range(count)}
  name = module.rsplit(".", 1)[-1]
  log(f"[{name}] {count} worker processes: " + ", ".join(
      f"worker {k} (pid {p.pid}) trains seeds {k}, {k + count}, ..." for k, p in procs.items()))
  try:
    while procs:
      for k, p in list(procs.items()):
        code = p.poll()
        if code not in (None, 0):
          raise SystemExit(f"error: {name} worker {k}/{count} (pid {p.pid}) exited with "
                           f"status {code}; its runs so far are kept, and the same command "
                           "resumes them")
        if code == 0:
          del procs[k]
      time.sleep(0.5)
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes, --process_id (iib_jax.distributed)."""
  from absl import flags
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, when this command is one of several processes "
                      "(or JAX_COORDINATOR_ADDRESS; SLURM, Open MPI and TPU pods are detected)")
  flags.DEFINE_integer("num_processes", None, "number of processes (or JAX_NUM_PROCESSES)")
  flags.DEFINE_integer("process_id", None, "this process, 0 .. num_processes − 1 (or "
                       "JAX_PROCESS_ID)")


def initialize_distributed() -> None:
  """Starts jax.distributed when this command runs as one of several processes (before any
  JAX computation); a no-op for one process. A bad setting exits with one line."""
  from absl import flags
  from iib_jax import distributed
  args = flags.FLAGS
  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except ValueError as e:
    sys.exit(f"error: {e}")


def run(dataset: str) -> None:
  argv = sys.argv[1:]
  default_file = os.path.join(HERE, "configs", f"{dataset}.py")
  check_config_flags(argv, default_file)
  if not any(a.startswith("--config.data.dir") and a.split("=", 1)[-1] for a in argv):
    # Said before anything heavy is imported, so it is the first line a new user sees.
    print("No --config.data.dir given: running the synthetic demonstration "
          "(the configured method and its comparisons on a generated audio-visual dataset).",
          flush=True)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", default_file, "experiment config", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (overrides config.workdir)")
  define_distributed_flags()

  def main(_):
    from absl import logging
    logging.set_verbosity(logging.WARNING)        # orbax logs every save at INFO
    initialize_distributed()
    from experiments import run as runner
    config = flags.FLAGS.config
    if flags.FLAGS.workdir:
      with config.unlocked():
        config.workdir = flags.FLAGS.workdir
    with stops_on_bad_input():
      runner.main(config)

  app.run(main)
