"""What the end-to-end tests share: the repository root, the tiny prepared dataset, and running a
command as a user would (a subprocess with the session's environment, tests/conftest.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=experiments/configs/synthetic.py:smoke"


def tiny_dataset(tmp_path_factory) -> str:
  """The tiny synthetic dataset (3 classes × 8 clips of 1 s, 32×32 frames at 4 fps), prepared
  once per test process."""
  from data_prep import synthetic
  return synthetic.ensure_synthetic(str(tmp_path_factory.getbasetemp() / "synthetic_tiny"),
                                    num_classes=3, clips_per_class=8, duration=1.0, fps=4,
                                    size=32, workers=1)


def run(module: str, *args: str, check: bool = True, timeout: float = 900,
        **kwargs) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root; with `check`, a failure shows the
  command's last output."""
  done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=dict(os.environ),
                        capture_output=True, text=True, timeout=timeout, **kwargs)
  if check:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  return done


def start(module: str, *args: str) -> subprocess.Popen:
  """`python -m module args...` in the background (for tests that stop or kill it)."""
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=dict(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def smoke_config(data_dir, workdir, **overrides):
  """The smoke configuration of the synthetic command (what `SMOKE` gives it) on `data_dir`, with
  dotted keys replaced: `smoke_config(d, w, **{"optim.epochs": 1})`."""
  from experiments.configs import common, synthetic
  config = synthetic.get_config("smoke")
  config.data.dir, config.workdir = str(data_dir), str(workdir)
  return common.override(config, overrides)


def smoke_run(data_dir, workdir, **overrides):
  """`experiments.synthetic` with `SMOKE` and these overrides, run in this process (the tests'
  compiled steps and imports shared): the results per method."""
  from experiments import run as runner
  return runner.main(smoke_config(data_dir, workdir, **overrides))
