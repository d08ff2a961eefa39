"""The main job end to end on a tiny prepared dataset: the run directory, the guards before any
computation, the refusal of a workdir made from something else, damaged shards, and exact logs
after a kill at any point.

One uninterrupted smoke run (IIBalance and joint training, in this process) is the reference of
every test here: its run directory, and its metrics.jsonl against the killed-and-resumed command.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import run as runner, workdir as workdir_lib
from experiments.configs import synthetic as synthetic_config
from iib_jax import data as data_lib, losses, methods
from iib_jax.methods import base
from tests import commands


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return commands.tiny_dataset(tmp_path_factory)


smoke = commands.smoke_config


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """The uninterrupted reference run: (workdir, results)."""
  work = tmp_path_factory.mktemp("smoke") / "run"
  return work, runner.main(smoke(data_dir, work))


def snapshot(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def records(path):
  return [json.loads(line) for line in open(path) if line.strip()]


def test_smoke_run_writes_the_run_directory(finished):
  work, results = finished
  assert set(results) == {"iibalance", "joint"}
  for name in ("config.json", "metrics.jsonl", "results.json", "results.md", "iib/budgets.json",
               "fingerprint.json", "iib/fingerprint.json", "compare/joint/fingerprint.json",
               "accuracy_curves.png", "prior_vs_weights.png", "weight_distribution.png"):
    assert (work / name).exists(), name
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(work / "tensorboard"))
  assert os.listdir(work / "checkpoints" / "latest") and os.listdir(work / "checkpoints" / "best")
  log = records(work / "metrics.jsonl")
  val = [r for r in log if r["phase"] == "multimodal" and r["split"] == "val"]
  assert [r["epoch"] for r in val] == [0, 1]
  for key in ("acc_fused", "acc_audio", "acc_video", "acc_avg", "weight_audio", "weight_video"):
    assert key in val[0], key
  train = [r for r in log if r["phase"] == "multimodal" and r["split"] == "train"]
  for key in ("loss", "loss_stage_one", "loss_stage_two", "loss_pra_video", "beta_audio",
              "alignment_strength_video", "fusion_weights_audio"):
    assert any(key in r for r in train), key
  # Every step window is tagged with the epoch its steps belong to.
  steps_per_epoch = train[0]["step"]
  for r in log:
    if r["split"] == "train_steps":
      assert (r["step"] - 1) // steps_per_epoch == r["epoch"], r
  table = (work / "results.md").read_text()
  assert "| iibalance |" in table and "| joint |" in table
  budgets = json.load(open(work / "iib" / "budgets.json"))
  np.testing.assert_allclose(sum(budgets["beta"]), 1.0, rtol=1e-5)
  result = json.load(open(work / "results.json"))
  # Test accuracy is computed over every test clip exactly once.
  assert result["test_best"]["num_examples"] == 6
  assert 0 <= result["best_epoch"] <= 1


def test_rerunning_a_finished_run_trains_and_writes_nothing(finished, data_dir, capsys):
  work, results = finished
  def kept(files):                     # the report and the console log are written again
    return {k: v for k, v in files.items() if not k.startswith(("results", "run.log"))}

  before = kept(snapshot(work))
  again = runner.main(smoke(data_dir, work))
  assert again == results
  after = kept(snapshot(work))
  assert after == before
  assert "reusing its results" in capsys.readouterr().out


@pytest.mark.parametrize("key,value,named", [
    ("optim.learning_rate", 0.5, "optim.learning_rate: 0.001 recorded, 0.5 now"),
    ("methods.iibalance.tau", 0.5, "methods.iibalance.tau: 0.07 recorded, 0.5 now"),
    ("model.feature_dim", 8, "model.feature_dim: 16 recorded, 8 now"),
    ("data.dir", "copy", "data.dir: "),
])
def test_a_workdir_made_from_something_else_is_refused_untouched(finished, data_dir, tmp_path,
                                                                 key, value, named):
  work, _ = finished
  if value == "copy":                         # the same dataset, somewhere else
    value = str(tmp_path / "moved")
    shutil.copytree(data_dir, value)
  before = snapshot(work)
  with pytest.raises(workdir_lib.WorkdirMismatch) as refused:
    runner.main(smoke(data_dir, work, **{key: value}))
  message = str(refused.value)
  assert named in message and "--config.overwrite=True" in message and str(work) in message
  assert snapshot(work) == before


@pytest.mark.parametrize("optimizer,key,differs", [
    ("shared", "paper_optim.learning_rate", False),  # the section the run did not train with
    ("shared", "optim.learning_rate", True),
    ("paper", "paper_optim.learning_rate", True),
    ("paper", "optim.learning_rate", False),
    ("paper", "optim.epochs", True),                 # epochs and batch size stay in optim
])
def test_the_fingerprint_holds_the_optimiser_the_run_trained_with(optimizer, key, differs):
  config = synthetic_config.get_config()
  config.optimizer = optimizer
  info = {"name": "x", "files": {}, "shards": {"train": [{"file": "a", "num_examples": 1}]}}
  before = workdir_lib.fingerprint(config, info, "joint")
  section, name = key.split(".")
  config[section][name] = config[section][name] * 2
  after = workdir_lib.fingerprint(config, info, "joint")
  assert (workdir_lib._differences(before, after) != []) == differs, key
  # A fingerprint recorded with every optimiser key compares the same way.
  unused = "paper_optim.name" if optimizer == "shared" else "optim.name"
  recorded = dict(after, config={**after["config"], unused: "rmsprop"})
  assert workdir_lib._differences(recorded, after) == []
  # The unimodal phase always trains with the shared optimiser.
  assert workdir_lib.fingerprint(config, info, workdir_lib.UNIMODAL)["config"].get(
      "paper_optim.learning_rate") is None


def test_the_refusal_is_one_error_and_exit_status_1(finished, data_dir):
  work, _ = finished
  before = snapshot(work)
  done = commands.run("experiments.synthetic", commands.SMOKE, f"--config.data.dir={data_dir}",
                      f"--workdir={work}", "--config.optim.learning_rate=0.5", check=False)
  assert done.returncode == 1
  assert "error: " in done.stderr and "optim.learning_rate" in done.stderr
  assert "Traceback" not in done.stderr
  assert snapshot(work) == before


@pytest.mark.parametrize("key,value,message", [
    ("methods.iibalance.tau", 0.0, "methods.iibalance.tau"),
    ("methods.iibalance.tau_p", -1.0, "methods.iibalance.tau_p"),
    ("methods.iibalance.rho", 1.0, "methods.iibalance.rho"),
    ("methods.iibalance.gamma", -0.1, "methods.iibalance.gamma"),
    ("methods.iibalance.lambda_start", 1.5, "methods.iibalance.lambda_start"),
    ("method", "nope", "method='nope'"),
    ("data.name", "imagenet", "data.name"),
    ("model.encoders.video", "vgg", "model.encoders.video"),
    ("modalities", ("audio", "audio"), "modalities=('audio', 'audio')"),
])
def test_invalid_config_fails_before_any_computation(data_dir, tmp_path, key, value, message):
  config = smoke(data_dir, tmp_path / "run", **{key: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")
                     .replace(")", r"\)")):
    runner.main(config)
  assert not (tmp_path / "run").exists()


def test_data_dir_without_prepared_dataset_is_refused(tmp_path):
  config = smoke(str(tmp_path), tmp_path / "run")
  with pytest.raises(ValueError, match="data.dir"):
    runner.main(config)


def _damage(shard, how):
  data = open(shard, "rb").read()
  if how == "missing":
    os.remove(shard)
  elif how == "truncated":
    open(shard, "wb").write(data[: len(data) // 2])
  elif how == "bit flip":
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    open(shard, "wb").write(bytes(flipped))
  elif how == "record boundary":
    length = int.from_bytes(data[:8], "little")        # the first record: 8 + 4 + length + 4
    open(shard, "wb").write(data[: 16 + length])


@pytest.mark.parametrize("how", ["missing", "truncated", "bit flip", "record boundary"])
def test_a_damaged_test_shard_stops_the_run_before_training(data_dir, tmp_path, how):
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  shard = sorted(str(p) for p in copy.glob("*test*tfrecord*"))[-1]
  _damage(shard, how)
  with pytest.raises(data_lib.DatasetError, match=os.path.basename(shard)):
    runner.main(smoke(copy, tmp_path / "run"))
  assert not (tmp_path / "run" / "config.json").exists()
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_damaged_shard_is_one_error_and_exit_status_1(data_dir, tmp_path):
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  shard = sorted(str(p) for p in copy.glob("*train*tfrecord*"))[0]
  _damage(shard, "truncated")
  done = commands.run("experiments.synthetic", commands.SMOKE, f"--config.data.dir={copy}",
                      f"--workdir={tmp_path / 'run'}", check=False)
  assert done.returncode == 1 and os.path.basename(shard) in done.stderr
  assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------
# A loss that becomes non-finite in its second epoch


@dataclasses.dataclass(frozen=True)
class _NoOptions(base.Options):
  pass


def _build_diverging(options, spec):
  def loss(outputs, batch, state, step):
    value = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    return jnp.where(spec.epoch(step) >= 1, jnp.nan, value), {"metrics": {}}

  return base.Method(name="diverging", init_state=base.no_state, loss=loss,
                     model={"fusion": "concat", "detach_heads": True})


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  from iib_jax import loop
  methods.register(base.Definition(name="diverging", build=_build_diverging, options=_NoOptions))
  try:
    work = tmp_path / "run"
    config = smoke(data_dir, work, method="diverging", compare_with=(), **{"optim.epochs": 3})
    with pytest.raises(loop.NonFiniteError, match=r"non-finite .*'loss'.* in steps? \d+"):
      runner.main(config)
  finally:
    methods.unregister("diverging")
  assert os.listdir(work / "checkpoints" / "latest") == ["0"]


# ----------------------------------------------------------------------------------------------
# Killed at three points, rerun each time: the same logs and results as the uninterrupted run


def _has(path, predicate):
  if not os.path.exists(path):
    return False
  try:
    return any(predicate(r) for r in records(path))
  except json.JSONDecodeError:           # a line being written
    return False


def _kill_when(process, condition, timeout=600):
  """Stops the command the moment `condition(output so far)` holds, then kills it (a real
  SIGKILL)."""
  output = []
  reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")),
                            daemon=True)
  reader.start()
  deadline = time.time() + timeout
  while not condition("".join(output)):
    assert process.poll() is None, "the command ended before the kill point:\n" + \
        "".join(output)[-3000:]
    assert time.time() < deadline, "the kill point never came"
    time.sleep(0.01)
  process.send_signal(signal.SIGSTOP)
  process.send_signal(signal.SIGKILL)
  process.wait()


def test_metrics_are_exact_after_kills_at_three_points(finished, data_dir, tmp_path):
  reference, results = finished
  work = tmp_path / "killed"
  args = ("experiments.synthetic", commands.SMOKE, f"--config.data.dir={data_dir}",
          f"--workdir={work}")
  log = work / "metrics.jsonl"
  points = [
      # in the unimodal phase: an epoch of it logged, its budgets not yet written
      lambda out: _has(log, lambda r: r["phase"] == "unimodal")
      and not (work / "iib" / "budgets.json").exists(),
      # right after the first checkpoint of the multimodal training
      lambda out: (work / "checkpoints" / "latest" / "0").exists(),
      # in the middle of the next epoch: resumed, a step of epoch 1 logged, no checkpoint of it
      lambda out: "resuming" in out
      and _has(log, lambda r: r["split"] == "train_steps" and r["epoch"] == 1)
      and not (work / "checkpoints" / "latest" / "1").exists(),
  ]
  for point in points:
    _kill_when(commands.start(*args), point)
    assert not (work / "results.json").exists()
  done = commands.run(*args)
  assert "resuming" in done.stdout or "reusing" in done.stdout
  for name in ("metrics.jsonl", os.path.join("compare", "joint", "metrics.jsonl")):
    assert records(work / name) == records(reference / name), name
  for method in ("iibalance", "joint"):
    path = work if method == "iibalance" else work / "compare" / "joint"
    again = json.load(open(path / "results.json"))
    for key in ("test_best", "test_last", "best_epoch"):
      assert again[key] == results[method][key], (method, key)
