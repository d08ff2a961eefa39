"""The evaluation command on trained smoke run directories (IIBalance and, as a compare run, AGM),
and its corruptions and linear probe against values worked out by hand."""
import json

import numpy as np
import pytest

from experiments import evaluate
from tests import commands


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  data_dir = commands.tiny_dataset(tmp_path_factory)
  work = tmp_path_factory.mktemp("evaluate")
  run, out = work / "run", work / "combined"
  commands.run("experiments.synthetic", commands.SMOKE, f"--config.data.dir={data_dir}",
               f"--workdir={run}", "--config.method=iibalance", "--config.compare_with=('agm',)",
               "--config.optim.epochs=1", "--config.iib.epochs=1")
  result = commands.run("experiments.evaluate", f"--workdir={run}",
                        f"--workdir={run / 'compare' / 'agm'}", f"--out={out}",
                        "--noise_levels=0,1,4", "--occlusion_levels=0,0.5,1", "--probe_steps=100")
  return run, out, result.stdout


def test_each_run_gets_its_evaluation(evaluated):
  run, _, _ = evaluated
  for workdir, method in ((run, "iibalance"), (run / "compare" / "agm", "agm")):
    record = json.load(open(workdir / "evaluation.json"))
    assert record["method"] == method
    results = json.load(open(workdir / "results.json"))
    # The restored best checkpoint reproduces the run's own test numbers.
    for key in ("acc_fused", "acc_audio", "acc_video"):
      assert record["clean"][key] == pytest.approx(results["test_best"][key]), (method, key)
    for m in ("audio", "video"):
      probe = record["linear_probe"][m]
      assert 0 <= probe["probe_test_acc"] <= 1 and 0 <= probe["probe_train_acc"] <= 1
      assert set(record["missing"][m]) >= {"acc_fused", "num_examples"}
    assert set(record["curves"]) == {"noise:audio", "noise:video", "occlusion:video"}
    assert record["curves"]["occlusion:video"]["levels"] == [0.0, 0.5, 1.0]
    assert "## Linear probes" in (workdir / "evaluation.md").read_text()
  iib = json.load(open(run / "evaluation.json"))
  assert iib["readout"] == "heads"
  # The gated fusion's weights are reported at every level; AGM has none.
  for summary in iib["curves"]["noise:audio"]["summaries"]:
    assert summary["weight_audio"] + summary["weight_video"] == pytest.approx(1.0, abs=1e-5)
  agm = json.load(open(run / "compare" / "agm" / "evaluation.json"))
  assert agm["readout"] == "Shapley outputs"
  assert "weight_audio" not in agm["clean"]


def test_several_runs_share_one_figure_and_table(evaluated):
  _, out, stdout = evaluated
  record = json.load(open(out / "evaluation.json"))
  assert [r["method"] for r in record["runs"]] == ["iibalance", "agm"]
  for name in ("robustness.png", "probes.png"):
    assert (out / name).stat().st_size > 0, name
  text = (out / "evaluation.md").read_text()
  assert "| iibalance |" in text and "| agm |" in text and "without video" in text
  assert "Command: `python -m experiments.evaluate" in stdout


def test_corruptions_remove_noise_and_occlude_as_specified():
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  batch = {"audio": jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32),
           "video": jnp.asarray(rng.normal(size=(2, 3, 8, 8, 3)) + 5.0, jnp.float32)}
  modalities, kinds = ("audio", "video"), {"audio": "audio", "video": "video"}
  key = jax.random.key(0)
  ones, zeros, scale = jnp.ones(2), jnp.zeros(2), jnp.ones(2)

  def run(keep=ones, noise=zeros, occlusion=zeros):
    return jax.device_get(evaluate.corrupt(batch, modalities, kinds, keep, noise, occlusion,
                                           scale, key))

  clean = run()
  for m in modalities:
    np.testing.assert_array_equal(clean[m], np.asarray(batch[m]))
  removed = run(keep=jnp.array([0.0, 1.0]))
  assert not removed["audio"].any()
  np.testing.assert_array_equal(removed["video"], np.asarray(batch["video"]))
  noisy = run(noise=jnp.array([2.0, 0.0]))
  assert abs(np.std(noisy["audio"] - np.asarray(batch["audio"])) - 2.0) < 0.6
  np.testing.assert_array_equal(noisy["video"], np.asarray(batch["video"]))
  # Side 0.5 of an 8-pixel frame: a 4×4 square per clip, the same in every frame and channel.
  occluded = run(occlusion=jnp.array([0.0, 0.5]))["video"]
  zeroed = occluded == 0
  assert zeroed.sum() == 2 * 3 * 16 * 3
  np.testing.assert_array_equal(zeroed[:, 0], zeroed[:, 2])
  assert not run(occlusion=jnp.array([0.0, 1.0]))["video"].any()


def test_linear_probe_separates_separable_features():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 60)
  z = rng.normal(0, 0.3, (60, 5)) + np.eye(3, 5)[labels] * 3
  probe = evaluate.linear_probe(z[:40], labels[:40], z[40:], labels[40:], 3, steps=200)
  assert probe["train_acc"] == 1.0 and probe["test_acc"] == 1.0


def _record(method, seed, acc, weights):
  curve = {"levels": [0.0, 1.0],
           "summaries": [{"acc_fused": a, "weight_audio": w, "weight_video": 1 - w}
                         for a, w in zip(acc, weights)]}
  return {"method": method, "seed": seed, "workdir": f"/runs/seed{seed}/{method}",
          "dataset": "synthetic", "modalities": ["audio", "video"], "readout": "heads",
          "clean": {"acc_fused": acc[0], "weight_audio": weights[0],
                    "weight_video": 1 - weights[0]},
          "missing": {m: {"acc_fused": acc[1]} for m in ("audio", "video")},
          "curves": {"noise:audio": curve},
          "linear_probe": {m: {"probe_train_acc": 1.0, "probe_test_acc": acc[0] / 2,
                               "readout_test_acc": acc[1]} for m in ("audio", "video")}}


def test_runs_of_a_method_are_averaged_over_seeds(tmp_path):
  from experiments import evaluate
  runs = [_record("iibalance", 0, [0.8, 0.5], [0.6, 0.3]),
          _record("joint", 0, [0.7, 0.2], [0.5, 0.5]),
          _record("iibalance", 1, [0.6, 0.4], [0.4, 0.2])]
  means, stds, labels = evaluate.over_seeds(runs)
  assert labels == ["iibalance (2 runs)", "joint (1 run)"]
  # numpy reference: mean and sample std of the two iibalance runs, place by place.
  acc = np.array([[0.8, 0.5], [0.6, 0.4]])
  summaries = means[0]["curves"]["noise:audio"]["summaries"]
  np.testing.assert_allclose([s["acc_fused"] for s in summaries], acc.mean(0))
  np.testing.assert_allclose([s["weight_audio"] for s in summaries], [0.5, 0.25])
  np.testing.assert_allclose(
      [s["acc_fused"] for s in stds[0]["curves"]["noise:audio"]["summaries"]], acc.std(0, ddof=1))
  assert means[0]["linear_probe"]["audio"]["probe_test_acc"] == pytest.approx(0.35)
  assert means[1]["clean"]["acc_fused"] == pytest.approx(0.7) and stds[1]["clean"]["acc_fused"] == 0
  assert means[0]["method"] == "iibalance" and means[0]["readout"] == "heads"
  paths = evaluate.write(runs, str(tmp_path))
  assert (tmp_path / "robustness_mean.png").stat().st_size > 0
  text = (tmp_path / "evaluation.md").read_text()
  assert "| iibalance (2 runs) | 70.00 ± 14.14 | 45.00 ± 7.07 | 45.00 ± 7.07 |" in text
  assert paths["robustness_mean"].endswith("robustness_mean.png")
