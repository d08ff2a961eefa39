"""Several processes on one machine: 2 processes × 2 CPU devices compute what 1 process × 4
devices computes, and resume after a kill like one process; only process 0 writes.

The processes find each other through jax.distributed on a free localhost port and exchange
tensors over gloo; each reads its slices of the global batches from the same files.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from iib_jax import checkpoint
from tests import commands


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def args(data_dir, workdir):
  return ["experiments.synthetic", commands.SMOKE, f"--config.data.dir={data_dir}",
          f"--workdir={workdir}", "--config.method=iibalance", "--config.compare_with=()",
          "--config.iib.epochs=1", "--config.optim.epochs=2"]


def launch(data_dir, workdir, processes: int):
  """`processes` runner processes of one job, each with 4 / processes CPU devices."""
  port = free_port()
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(4 // processes)}
  extra = ([] if processes == 1 else
           [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"])
  return [subprocess.Popen([sys.executable, "-m", *args(data_dir, workdir), *extra]
                           + ([f"--process_id={i}"] if processes > 1 else []),
                           cwd=commands.ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
          for i in range(processes)]


def wait(procs, timeout=600, kill_when=None):
  """Waits for every process (or kills them all when `kill_when()` holds); a failure or a
  timeout kills the others and reports the outputs."""
  deadline = time.time() + timeout
  try:
    while any(p.poll() is None for p in procs):
      if kill_when is not None and kill_when():
        for p in procs:
          p.send_signal(signal.SIGKILL)
        for p in procs:
          p.wait()
        return [p.stdout.read() for p in procs]
      if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
        break
      time.sleep(0.02)
    outputs = [p.communicate(timeout=10)[0] if p.poll() is not None else "" for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  assert codes == [0] * len(procs), f"exit codes {codes}:\n" + "\n----\n".join(
      o[-3000:] for o in outputs)
  return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  data_dir = commands.tiny_dataset(tmp_path_factory)
  root = tmp_path_factory.mktemp("distributed")
  # The reference, 1 process × 4 devices: in this process (tests/conftest.py gives it 4 CPU
  # devices), with the command's config.
  commands.smoke_run(data_dir, root / "one", method="iibalance", compare_with=(),
                     **{"iib.epochs": 1, "optim.epochs": 2})
  outputs = wait(launch(data_dir, root / "two", 2))
  return data_dir, root, outputs


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_close(a, b, what):
  """float32 agreement, relative to each array's scale: the processes sum their parts in
  another order than one process does, and a few Adam steps (which divide by the root of a
  running mean of squared gradients) carry last-bit differences of a small gradient into the
  fifth digit of a parameter."""
  for x, y in zip(_leaves(a), _leaves(b)):
    scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


def test_two_processes_compute_what_one_computes(runs):
  _, root, _ = runs
  one, two = root / "one", root / "two"
  for which in ("latest", "best"):
    a, b = checkpoint.read_arrays(str(one), which), checkpoint.read_arrays(str(two), which)
    for part in ("params", "batch_stats", "method"):          # the prototype bank, β, λ
      assert_close(a[part], b[part], f"{which} {part}")
  ra, rb = json.load(open(one / "results.json")), json.load(open(two / "results.json"))
  assert ra["best_epoch"] == rb["best_epoch"]
  for summary in ("val_best", "test_best", "test_last"):
    # Accuracies (the predictions of every clip) identical; weights and terms to float32.
    accuracies = [k for k in ra[summary] if k.startswith("acc_") or k == "num_examples"]
    assert {k: ra[summary][k] for k in accuracies} == {k: rb[summary][k] for k in accuracies}
    np.testing.assert_allclose([ra[summary][k] for k in sorted(ra[summary])],
                               [rb[summary][k] for k in sorted(ra[summary])], rtol=1e-4,
                               atol=1e-5, err_msg=summary)
  # Per-example evaluation outputs: every test clip once, in the same order.
  np.testing.assert_allclose(np.load(one / "test_weights.npy"), np.load(two / "test_weights.npy"),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(json.load(open(one / "iib" / "budgets.json"))["budgets"],
                             json.load(open(two / "iib" / "budgets.json"))["budgets"], rtol=1e-5)


def test_only_process_zero_writes(runs):
  _, root, outputs = runs
  two = root / "two"
  records = [json.loads(line) for line in open(two / "metrics.jsonl")]
  keys = [(r["phase"], r["split"], r["epoch"], r["step"]) for r in records]
  assert len(keys) == len(set(keys))                             # each step once
  reference = [json.loads(line) for line in open(root / "one" / "metrics.jsonl")]
  assert keys == [(r["phase"], r["split"], r["epoch"], r["step"]) for r in reference]
  for mine, theirs in zip(records, reference):
    assert set(mine) == set(theirs)
    np.testing.assert_allclose([mine[k] for k in sorted(mine) if k not in ("phase", "split")],
                               [theirs[k] for k in sorted(mine) if k not in ("phase", "split")],
                               rtol=1e-4, atol=1e-5)
  # TensorBoard event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: one writer.
  assert len({name.split(".")[-3] for name in os.listdir(two / "tensorboard")}) == 1
  assert (two / "accuracy_curves.png").exists()
  assert "Protocol:" in outputs[0] and "Protocol:" not in outputs[1]   # one table printed
  assert "[iibalance] epoch 1/1" in outputs[0] and "epoch" not in outputs[1]


def test_a_log_off_a_terminal_has_one_line_per_epoch_and_no_carriage_returns(runs):
  _, root, outputs = runs
  for text in (outputs[0], (root / "two" / "run.log").read_text()):
    assert "\r" not in text
    lines = text.splitlines()
    for tag in ("[unimodal] epoch 0/0", "[iibalance] epoch 0/1", "[iibalance] epoch 1/1"):
      assert sum(line.startswith(tag) for line in lines) == 1, tag
    epoch_line = next(line for line in lines if line.startswith("[iibalance] epoch 1/1"))
    assert "train loss" in epoch_line and "val Acc_m" in epoch_line and "ETA" in epoch_line


def test_two_processes_resume_after_a_kill(runs, tmp_path):
  data_dir, root, _ = runs
  work = tmp_path / "killed"
  wait(launch(data_dir, work, 2),
       kill_when=lambda: (work / "checkpoints" / "latest" / "0").exists())
  assert not (work / "results.json").exists()
  outputs = wait(launch(data_dir, work, 2))
  assert "resuming" in outputs[0]
  a = checkpoint.read_arrays(str(root / "two"), "latest")
  b = checkpoint.read_arrays(str(work), "latest")
  for part in ("params", "batch_stats", "method"):
    assert_close(a[part], b[part], part)
  resumed = json.load(open(work / "results.json"))["test_best"]
  straight = json.load(open(root / "two" / "results.json"))["test_best"]
  assert {k: v for k, v in resumed.items() if k.startswith("acc_")} == \
      {k: v for k, v in straight.items() if k.startswith("acc_")}
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert records == [json.loads(line) for line in open(root / "two" / "metrics.jsonl")]
