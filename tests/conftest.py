"""Shared test settings, for this process and every command the tests start (they inherit it).

- CPU only, four host devices (the sharding tests; every runner process uses the same count, so
  in-process and command runs compile the same programs).
- One persistent compilation cache for the whole session, shared by the xdist workers and the
  commands they start, with no minimum compile time: the runs compile many identical tiny steps.
- Settings that halve CPU compile times, which dominate these tiny runs: the "rbg" generator
  (threefry's unrolled hash compiles slowly; no test depends on which generator makes the
  numbers) and unoptimised machine code (`--xla_backend_optimization_level=0`).
- TensorFlow started as the commands start it, without its eager import of Keras
  (`iib_jax.quiet.skip_keras`).
A fresh cache every session: the suite's time is measured cold.
"""
import os
import shutil
import tempfile

_CACHE = "IIB_JAX_TEST_COMPILATION_CACHE"
if _CACHE not in os.environ:                 # the controller; xdist workers inherit its choice
  os.environ[_CACHE] = tempfile.mkdtemp(prefix="iib_jax_test_cache_")
  _OWNER = True
else:
  _OWNER = False

os.environ.update({
    "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
    "JAX_NUM_CPU_DEVICES": "4",
    "JAX_DEFAULT_PRNG_IMPL": "rbg",
    "JAX_COMPILATION_CACHE_DIR": os.environ[_CACHE],
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
})
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

# TensorFlow without its eager import of Keras, as the commands start it (iib_jax.quiet).
from iib_jax import quiet  # noqa: E402

quiet.skip_keras()


def pytest_unconfigure(config):
  if _OWNER and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ[_CACHE], ignore_errors=True)


# The files that take longest on 2 cores (`pytest --durations=0`, summed per file), started first:
# with `--dist loadfile` each file runs whole on one worker, and longest-first keeps a long file
# from starting last while the other worker idles. xdist's own order (most tests first) is off.
LONGEST_FIRST = (
    "test_distributed.py", "test_phases.py", "test_experiments.py", "test_protocol.py",
    "test_sweeps.py", "test_benchmarks.py", "test_experiments_datasets.py", "test_table1.py",
    "test_robustness_sweeps.py", "test_predict.py", "test_evaluate.py", "test_methods.py",
    "test_encoders.py", "test_sharding.py", "test_train.py", "test_data_prep.py",
    "test_architecture.py", "test_data.py", "test_readme.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
