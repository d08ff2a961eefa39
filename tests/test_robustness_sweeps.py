"""The sweeps of the robustness measurements (experiments/configs/sweeps.py: gate, damage_spec,
damage), the gate command's selection on validation (experiments/gate.py), and the damage
command end to end on the tiny prepared dataset (experiments/damage.py)."""
import json

import numpy as np
import pytest

from experiments.configs import common, sweeps
from tests import commands


def synthetic_config():
  config = common.base_config()
  config.data.name = "synthetic"
  return config


def test_gate_sweep_is_the_default_and_one_change_each_all_valid_configs():
  from iib_jax import build as lib_build, methods
  plan = sweeps.gate()
  assert plan.method == "iibalance"
  assert list(plan.variants) == ["default", "gate_pool=mean", "gate_input=uncertainty",
                                 "detach_gate_features", "detach_weights_in_aux"]
  assert plan.variants["default"] == {}
  base = synthetic_config()
  spec = methods.MethodSpec(("audio", "video"), 3, 8, 1, 1, budgets=(0.5, 0.4))
  for name, overrides in plan.variants.items():
    assert len(overrides) <= 1, name
    config = common.override(base, overrides)
    common.validate(config, check_data=False)
    for key, value in overrides.items():          # a change from today's default, not a no-op
      section, option = key.rsplit(".", 1)
      node = base
      for part in section.split("."):
        node = node[part]
      assert node[option] != value, key
    model = lib_build.model(config, 3, lib_build.method(config, "iibalance", spec))
    assert (model.gate_pool, model.gate_input, model.detach_gate_features) == (
        config.model.gate_pool, config.model.gate_input, config.model.detach_gate_features)


def test_damage_spec_by_hand_and_accepted_by_the_pipeline_and_the_config():
  from iib_jax import preprocess
  kinds = {"audio": "audio", "video": "video"}
  spec = sweeps.damage_spec(kinds, {"audio": 2.978, "video": 0.8207})
  assert spec == ("drop_modalities(audio=0.25, video=0.25)"
                  "|noise(audio, max=2, p=0.5, scale=2.98)|noise(video, max=2, p=0.5, scale=0.821)"
                  "|occlude(video, max=0.75, p=0.5)")
  ops = preprocess.parse_damage(spec, ["audio", "video"])
  assert [op.op_name for op in ops] == ["drop_modalities", "noise", "noise", "occlude"]
  config = synthetic_config()
  config.data.train_damage = spec
  common.validate(config, check_data=False)
  # M = 3 with two frame modalities: every modality noised, both frame modalities occluded.
  three = sweeps.damage_spec({"audio": "audio", "rgb": "video", "flow": "video"}, drop=0.1, p=0.3)
  assert three == ("drop_modalities(audio=0.1, rgb=0.1, flow=0.1)|noise(audio, max=2, p=0.3)"
                   "|noise(rgb, max=2, p=0.3)|noise(flow, max=2, p=0.3)"
                   "|occlude(rgb, max=0.75, p=0.3)|occlude(flow, max=0.75, p=0.3)")
  preprocess.parse_damage(three, ["audio", "rgb", "flow"])


def test_damage_sweep_is_two_settings_of_the_same_methods():
  plan = sweeps.damage("drop_modalities(0.2)")
  assert list(plan) == ["none", "damage"]
  assert plan["none"][0] == {"data.train_damage": ""}
  assert plan["damage"][0] == {"data.train_damage": "drop_modalities(0.2)"}
  for _, sweep_plan in plan.values():
    assert list(sweep_plan.variants) == list(sweeps.DAMAGE_METHODS)
    assert all(v == {"method": name} for name, v in sweep_plan.variants.items())
  assert {"iibalance", "joint"} <= set(sweeps.DAMAGE_METHODS) and len(sweeps.DAMAGE_METHODS) >= 4


def _result(seed, val, test):
  keys = ("acc_fused", "acc_audio", "acc_video", "acc_avg")
  return {"seed": seed, "val_best": dict(zip(keys, val)), "test_best": dict(zip(keys, test))}


def test_gate_selection_picks_the_best_mean_validation_acc_m_and_reports_test_beside():
  from experiments import gate
  results = {
      "default": [_result(0, (0.70, 0.6, 0.5, 0.6), (0.90, 0.6, 0.5, 0.67)),
                  _result(1, (0.74, 0.6, 0.5, 0.61), (0.90, 0.6, 0.5, 0.67))],
      "gate_pool=mean": [_result(1, (0.80, 0.6, 0.5, 0.63), (0.10, 0.6, 0.5, 0.4)),
                         _result(0, (0.72, 0.6, 0.5, 0.61), (0.10, 0.6, 0.5, 0.4))],
      "gate_input=uncertainty": [_result(0, (0.76, 0.6, 0.5, 0.62), (0.20, 0.6, 0.5, 0.4)),
                                 _result(1, (0.76, 0.6, 0.5, 0.62), (0.20, 0.6, 0.5, 0.4))]}
  chosen = gate.selection(results, ("audio", "video"))
  # Mean validation Acc_m: 72, 76, 76: a tie between the last two goes to the earlier variant;
  # test (default 90) never enters the choice.
  assert chosen["winner"] == "gate_pool=mean"
  assert chosen["variants"]["default"]["val"]["acc_fused"][0] == pytest.approx(72.0)
  assert chosen["variants"]["default"]["test"]["acc_fused"][0] == pytest.approx(90.0)
  paired = chosen["variants"]["gate_pool=mean"]["paired_val_acc_fused"]
  # Paired by seed: seed 0: 0.72 − 0.70, seed 1: 0.80 − 0.74.
  assert paired["mean"] == pytest.approx(0.04) and paired["n"] == 2 and paired["wins"] == 2
  d = np.array([0.02, 0.06])
  half = 12.706204736174707 * d.std(ddof=1) / np.sqrt(2)       # t_{0.975, 1} from a table
  assert paired["low"] == pytest.approx(0.04 - half) and paired["high"] == pytest.approx(0.04 + half)
  assert "paired_val_acc_fused" not in chosen["variants"]["default"]
  text = gate.markdown(chosen, ("audio", "video"), "runs/gate")
  assert "| gate_pool=mean (winner) | 76.00 ± 5.66 |" in text
  assert "--split=validation --reference=default" in text
  assert "--workdir=runs/gate/seed1/gate_input=uncertainty" in text


@pytest.fixture(scope="module")
def damage_run(tmp_path_factory):
  data_dir = commands.tiny_dataset(tmp_path_factory)
  root = tmp_path_factory.mktemp("damage") / "root"
  out = commands.run("experiments.damage", commands.SMOKE, f"--config.data.dir={data_dir}",
                     f"--root={root}", "--seeds=1", "--methods=iibalance",
                     "--config.optim.epochs=1", "--config.iib.epochs=1")
  return root, out.stdout


def test_damage_command_trains_each_method_without_and_with_the_damage(damage_run):
  root, stdout = damage_run
  record = json.load(open(root / "damage.json"))
  spec = record["train_damage"]["damage"]
  assert record["train_damage"]["none"] == ""
  assert spec.startswith("drop_modalities(audio=0.25, video=0.25)|noise(audio, max=2, p=0.5, "
                         "scale=") and "occlude(video, max=0.75, p=0.5)" in spec
  for setting, want in (("none", ""), ("damage", spec)):
    run_dir = root / setting / "seed0" / "iibalance"
    config = json.load(open(run_dir / "config.json"))
    assert config["data"]["train_damage"] == want and config["method"] == "iibalance"
    assert json.load(open(run_dir / "results.json"))["method"] == "iibalance"
    # Each setting has its own unimodal phase, trained with the same pipeline.
    assert (root / setting / "seed0" / "iib" / "budgets.json").exists()
    assert 0 <= record["test"][setting]["iibalance"]["acc_fused"][0] <= 100
  text = (root / "damage.md").read_text()
  assert f"`data.train_damage`: `{spec}`" in text
  assert (f"--workdir={root / 'none' / 'seed0' / 'iibalance'} "
          f"--workdir={root / 'damage' / 'seed0' / 'iibalance'}") in record["evaluate"]
  assert "--reference" not in record["evaluate"]     # joint is not among the methods here
  assert record["evaluate"] in text
  from experiments import damage
  assert "--reference=joint --workdir=r/none/seed0/joint" in damage.evaluate_command(
      "r", ["none", "damage"], ["joint", "iibalance"], [0])
