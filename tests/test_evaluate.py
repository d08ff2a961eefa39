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
  commands.smoke_run(data_dir, run, method="iibalance", compare_with=("agm",),
                     **{"optim.epochs": 1, "iib.epochs": 1})
  result = commands.run("experiments.evaluate", f"--workdir={run}",
                        f"--workdir={run / 'compare' / 'agm'}", f"--out={out}",
                        "--noise_levels=0,1,4", "--occlusion_levels=0,0.5,1", "--probe_steps=100",
                        "--reference=agm")
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


def test_gated_fusion_gets_its_log_alpha_decomposition_plot_data_and_tables(evaluated):
  run, out, _ = evaluated
  assert (out / "decomposition.png").stat().st_size > 0
  record = json.load(open(out / "evaluation.json"))
  iib, agm = record["runs"]
  assert "decomposition" not in agm                            # AGM fuses without weights
  d = iib["decomposition"]
  assert d["terms"] == ["prior", "uncertainty", "gate"]
  assert set(d["curves"]) == {"noise:audio", "noise:video", "occlusion:video"}
  for curve, summary in iib["curves"].items():
    entry = d["curves"][curve]
    assert entry["levels"] == summary["levels"]
    for i, point in enumerate(summary["summaries"]):
      # The terms are the corrupted summaries' means, and their sum's softmax is the weight
      # only per example; on the means the prior is log β and the uncertainty −mean(u) ∈ [−1, 0].
      for term in d["terms"]:
        for m in ("audio", "video"):
          assert entry[term][m][i] == point[f"log_alpha_{term}_{m}"]
      for m in ("audio", "video"):
        assert -1.0 <= entry["uncertainty"][m][i] <= 0.0 and entry["gate"][m][i] <= 0.0
        assert entry["prior"][m][i] == pytest.approx(d["clean"]["prior"][m], abs=1e-6)
  for m in ("audio", "video"):
    assert d["missing"][m]["gate"]["audio"] == iib["missing"][m]["log_alpha_gate_audio"]
  # The per-run record has it too, and the tables name every term.
  assert "decomposition" in json.load(open(run / "evaluation.json"))
  text = (out / "evaluation.md").read_text()
  assert "## Decomposition of log α (Eq. 9)" in text
  for term in ("prior", "uncertainty", "gate"):
    assert f"| iibalance | {term} |" in text


def test_robustness_table_with_areas_and_the_reference_in_the_report(evaluated):
  run, out, _ = evaluated
  record = json.load(open(out / "evaluation.json"))
  table = record["robustness_table"]
  assert table["reference"] == "agm" and list(table["groups"]) == ["iibalance", "agm"]
  iib = record["runs"][0]
  levels = iib["curves"]["noise:audio"]["levels"]
  acc = [s["acc_fused"] for s in iib["curves"]["noise:audio"]["summaries"]]
  # Trapezoid over 0, 1, 4 by hand, divided by the range 4.
  want = ((acc[0] + acc[1]) / 2 * 1 + (acc[1] + acc[2]) / 2 * 3) / 4
  assert levels == [0.0, 1.0, 4.0] and iib["auc"]["noise:audio"] == pytest.approx(want)
  assert table["groups"]["iibalance"]["mean"]["area:noise:audio"] == pytest.approx(want)
  paired = table["paired"]["iibalance"]["clean"]
  assert paired["n"] == 1 and paired["low"] is None            # one seed: no interval
  assert paired["mean"] == pytest.approx(iib["clean"]["acc_fused"]
                                         - record["runs"][1]["clean"]["acc_fused"])
  assert (out / "robustness_table.png").stat().st_size > 0
  text = (out / "evaluation.md").read_text()
  assert "## Robustness table" in text and "area: occlusion on video" in text
  assert "## Paired by seed: each method − agm" in text


def test_area_under_curve_by_hand():
  from experiments.evaluate import area_under_curve
  # Levels 0, 0.5, 1, 2, 4: trapezoids 0.375 + 0.325 + 0.5 + 0.6 = 1.8, over the range 4.
  levels, acc = [0, 0.5, 1, 2, 4], [0.8, 0.7, 0.6, 0.4, 0.2]
  assert area_under_curve(levels, acc) == pytest.approx(0.45)
  assert area_under_curve(levels[::-1], acc[::-1]) == pytest.approx(0.45)   # sorted first
  assert area_under_curve([0, 0.25, 1], [0.5, 0.5, 0.5]) == pytest.approx(0.5)  # flat: its value
  assert area_under_curve([0], [0.7]) == pytest.approx(0.7)
  assert area_under_curve([0, 1], [0.7, None]) is None


def _run(method, seed, clean, without, noise, damage="", variant=None):
  curve = {"levels": [0.0, 1.0, 2.0],
           "summaries": [{"acc_fused": a} for a in [clean] + list(noise)]}
  return {"method": method, "variant": variant or method, "train_damage": damage, "seed": seed,
          "workdir": f"/runs/{'damage' if damage else 'none'}/seed{seed}/{method}",
          "modalities": ["audio", "video"], "clean": {"acc_fused": clean},
          "missing": {"audio": {"acc_fused": without[0]}, "video": {"acc_fused": without[1]}},
          "curves": {"noise:audio": curve}}


def test_robustness_table_pairs_by_seed_against_the_reference_and_the_undamaged_twin():
  from experiments import evaluate
  runs = [_run("joint", 0, 0.70, (0.40, 0.60), (0.50, 0.30)),
          _run("joint", 1, 0.80, (0.45, 0.62), (0.60, 0.40)),
          _run("joint", 2, 0.60, (0.35, 0.50), (0.40, 0.20)),
          _run("iibalance", 2, 0.66, (0.50, 0.52), (0.40, 0.30)),      # seeds in another order
          _run("iibalance", 0, 0.75, (0.48, 0.55), (0.45, 0.25)),
          _run("iibalance", 1, 0.82, (0.55, 0.60), (0.50, 0.35)),
          _run("iibalance", 1, 0.80, (0.60, 0.70), (0.70, 0.60), damage="drop_modalities(0.2)"),
          _run("iibalance", 0, 0.73, (0.58, 0.66), (0.60, 0.50), damage="drop_modalities(0.2)")]
  table = evaluate.robustness_table(runs, reference="joint")
  assert list(table["groups"]) == ["joint", "iibalance", "iibalance + damage"]
  assert table["groups"]["iibalance"]["seeds"] == [0, 1, 2]
  # Paired by seed: d = (0.75 − 0.70, 0.82 − 0.80, 0.66 − 0.60) = (0.05, 0.02, 0.06).
  d = np.array([0.05, 0.02, 0.06])
  half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)          # t_{0.975, 2} from a table
  clean = table["paired"]["iibalance"]["clean"]
  assert clean["mean"] == pytest.approx(d.mean()) and clean["std"] == pytest.approx(d.std(ddof=1))
  assert (clean["low"], clean["high"]) == (pytest.approx(d.mean() - half),
                                           pytest.approx(d.mean() + half))
  assert (clean["wins"], clean["n"], clean["verdict"]) == (3, 3, "no difference")
  # Areas over 0, 1, 2 (range 2): iibalance seed 0: ((0.75 + 0.45) / 2 + (0.45 + 0.25) / 2) / 2.
  assert table["groups"]["iibalance"]["values"]["0"]["area:noise:audio"] == pytest.approx(0.475)
  # The damaged runs are paired with the same method undamaged, over their common seeds 0, 1.
  damage = table["damage"]["iibalance + damage"]
  assert damage["against"] == "iibalance" and damage["seeds"] == [0, 1]
  assert damage["without:audio"]["mean"] == pytest.approx(((0.58 - 0.48) + (0.60 - 0.55)) / 2)
  assert damage["clean"]["mean"] == pytest.approx(((0.73 - 0.75) + (0.80 - 0.82)) / 2)
  assert damage["clean"]["losses"] == 2
  text = evaluate.table.markdown(table)
  assert "| iibalance | 3 | 74.33 ± 8.02 |" in text
  assert "Damage: `drop_modalities(0.2)`." in text
  with pytest.raises(ValueError, match="reference='ogm_ge' is not among"):
    evaluate.robustness_table(runs, reference="ogm_ge")
  with pytest.raises(ValueError, match="two runs of 'joint' with seed 0"):
    evaluate.robustness_table(runs + [_run("joint", 0, 0.7, (0.4, 0.6), (0.5, 0.3))])


def test_run_labels_are_the_sweep_variant_and_the_damage():
  from experiments import evaluate
  assert evaluate.variant_of("/runs/gate/seed2/gate_pool=mean", "iibalance") == "gate_pool=mean"
  assert evaluate.variant_of("/runs/x/compare/agm", "agm") == "agm"
  assert evaluate.variant_of("/runs/synthetic_iibalance_seed0", "iibalance") == "iibalance"
  a, b = {"method": "joint", "train_damage": "noise(audio)"}, {"method": "joint",
                                                               "train_damage": "occlude(video)"}
  assert evaluate.group_of(a) == "joint + damage"
  assert [evaluate.group_of(e, evaluate.table.damage_specs([a, b])) for e in (a, b)] == [
      "joint + damage 1", "joint + damage 2"]


def test_decomposition_reads_the_term_means_of_each_summary():
  from experiments import evaluate

  def summary(g):
    return {f"log_alpha_{t}_{m}": v for m in ("audio", "video")
            for t, v in (("prior", -0.7), ("uncertainty", -0.5), ("gate", g))}

  record = {"clean": summary(-0.1), "missing": {"audio": summary(-0.9), "video": summary(-0.3)},
            "curves": {"noise:audio": {"levels": [0, 1], "summaries": [summary(-0.1),
                                                                        summary(-2.0)]}}}
  d = evaluate.decomposition(record, ("audio", "video"))
  assert d["clean"]["gate"] == {"audio": -0.1, "video": -0.1}
  assert d["missing"]["audio"]["gate"]["video"] == -0.9
  assert d["curves"]["noise:audio"]["gate"]["audio"] == [-0.1, -2.0]
  assert d["curves"]["noise:audio"]["prior"]["video"] == [-0.7, -0.7]
  assert evaluate.decomposition({"clean": {"acc_fused": 0.5}, "missing": {}, "curves": {}},
                                ("audio",)) is None


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
