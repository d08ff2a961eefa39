"""The main job end to end on a tiny prepared dataset: the run directory and the guards."""
import json
import os

import numpy as np
import pytest

from experiments import run as runner
from experiments.configs import synthetic as synthetic_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from data_prep import synthetic
  cache = tmp_path_factory.mktemp("synthetic")
  return synthetic.ensure_synthetic(str(cache), num_classes=3, clips_per_class=8, duration=1.0,
                                    fps=4, size=32, workers=1)


def smoke(data_dir, workdir, **overrides):
  config = synthetic_config.get_config("smoke")
  config.data.dir = data_dir
  config.workdir = str(workdir)
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config


def test_smoke_run_writes_the_run_directory(data_dir, tmp_path):
  results = runner.main(smoke(data_dir, tmp_path / "run"))
  work = tmp_path / "run"
  assert set(results) == {"iibalance", "joint"}
  for name in ("config.json", "metrics.jsonl", "results.json", "results.md", "iib/budgets.json",
               "accuracy_curves.png", "prior_vs_weights.png", "weight_distribution.png"):
    assert (work / name).exists(), name
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(work / "tensorboard"))
  assert os.listdir(work / "checkpoints" / "latest") and os.listdir(work / "checkpoints" / "best")
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  val = [r for r in records if r["phase"] == "multimodal" and r["split"] == "val"]
  assert [r["epoch"] for r in val] == [0, 1]
  for key in ("acc_fused", "acc_audio", "acc_video", "acc_avg", "weight_audio", "weight_video"):
    assert key in val[0], key
  train = [r for r in records if r["phase"] == "multimodal" and r["split"] == "train"]
  for key in ("loss", "loss_stage_one", "loss_stage_two", "loss_pra_video", "beta_audio",
              "alignment_strength_video", "fusion_weights_audio"):
    assert any(key in r for r in train), key
  table = (work / "results.md").read_text()
  assert "| iibalance |" in table and "| joint |" in table
  budgets = json.load(open(work / "iib" / "budgets.json"))
  np.testing.assert_allclose(sum(budgets["beta"]), 1.0, rtol=1e-5)
  result = json.load(open(work / "results.json"))
  # Test accuracy is computed over every test clip exactly once.
  assert result["test_best"]["num_examples"] == 6
  assert 0 <= result["best_epoch"] <= 1


@pytest.mark.parametrize("key,value,message", [
    ("methods.iibalance.tau", 0.0, "methods.iibalance.tau"),
    ("methods.iibalance.tau_p", -1.0, "methods.iibalance.tau_p"),
    ("methods.iibalance.rho", 1.0, "methods.iibalance.rho"),
    ("methods.iibalance.gamma", -0.1, "methods.iibalance.gamma"),
    ("methods.iibalance.lambda_start", 1.5, "methods.iibalance.lambda_start"),
    ("method", "nope", "method='nope'"),
    ("data.name", "imagenet", "data.name"),
    ("model.encoders.video", "vgg", "model.encoders.video"),
])
def test_invalid_config_fails_before_any_computation(data_dir, tmp_path, key, value, message):
  config = smoke(data_dir, tmp_path / "run", **{key: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    runner.main(config)
  assert not (tmp_path / "run").exists()


def test_data_dir_without_prepared_dataset_is_refused(tmp_path):
  config = smoke(str(tmp_path), tmp_path / "run")
  with pytest.raises(ValueError, match="data.dir"):
    runner.main(config)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  from iib_jax import loop
  work = tmp_path / "run"
  runner.main(smoke(data_dir, work, method="joint", compare_with=(), **{"optim.epochs": 1}))
  config = smoke(data_dir, work, method="joint", compare_with=(),
                 **{"optim.epochs": 3, "optim.learning_rate": 1e30})
  with pytest.raises(loop.NonFiniteError, match=r"non-finite .*'loss'.* in steps? \d+"):
    runner.main(config)
  assert os.listdir(work / "checkpoints" / "latest") == ["0"]
