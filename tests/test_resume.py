"""A run killed after its first checkpoint resumes to the same final metrics (a real SIGKILL).

Joint training keeps the test short (no unimodal phase); the restore path of IIBalance's own
state (prototype bank, β) is exercised by the smoke run's restore of its best checkpoint.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from data_prep import synthetic
  cache = tmp_path_factory.mktemp("synthetic")
  return synthetic.ensure_synthetic(str(cache), num_classes=3, clips_per_class=8, duration=1.0,
                                    fps=4, size=32, workers=1)


def _command(data_dir, workdir, epochs):
  return [sys.executable, "-m", "experiments.synthetic",
          "--config=experiments/configs/synthetic.py:smoke", f"--config.data.dir={data_dir}",
          f"--workdir={workdir}", f"--config.optim.epochs={epochs}", "--config.method=joint",
          "--config.compare_with=()"]


def test_killed_run_resumes_to_the_same_final_metrics(data_dir, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_command(data_dir, straight, 3), cwd=ROOT, env=env, check=True,
                 capture_output=True)
  proc = subprocess.Popen(_command(data_dir, killed, 3), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = killed / "checkpoints" / "latest" / "0"
  deadline = time.time() + 300
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert first.exists(), "the run never wrote its first checkpoint"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.json").exists()
  out = subprocess.run(_command(data_dir, killed, 3), cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True)
  assert "resuming" in out.stdout
  a = json.load(open(straight / "results.json"))
  b = json.load(open(killed / "results.json"))
  assert a["test_best"] == b["test_best"] and a["test_last"] == b["test_last"]
  assert a["best_epoch"] == b["best_epoch"]
