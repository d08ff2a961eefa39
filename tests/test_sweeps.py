"""The Table II (ablation) and Fig. 4 (sensitivity) commands on a tiny prepared dataset: their
tables, JSON and figure, one run directory per variant and seed, and a second invocation that
trains nothing."""
import json
import os

import pytest

from experiments import sweep
from tests import commands

SMOKE = [commands.SMOKE, "--config.optim.epochs=1", "--config.iib.epochs=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return commands.tiny_dataset(tmp_path_factory)


def run(module, data_dir, root, *flags):
  return commands.run(module, *SMOKE, f"--config.data.dir={data_dir}", f"--root={root}",
                      "--seeds=1", *flags).stdout


def table_rows(markdown: str) -> dict[str, list[float]]:
  """{row label: [Acc_m, Acc_audio, Acc_video, Avg]} of a results table ('mean ± std' cells)."""
  rows = {}
  for line in markdown.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 5 and "±" in cells[1]:
      rows[cells[0]] = [float(c.split("±")[0]) for c in cells[1:5]]
  return rows


def test_ablation_writes_table2_with_every_variant(data_dir, tmp_path):
  root = tmp_path / "ablation"
  out = run("experiments.ablation", data_dir, root)
  with open(root / "table2.md") as f:
    rows = table_rows(f.read())
  assert list(rows) == ["IIBalance", "w/o IIB prior", "w/o Stage I (PRA)",
                        "w/o Stage II (fixed mean fusion)"]
  for values in rows.values():
    assert all(0 <= v <= 100 for v in values)
    assert values[3] == pytest.approx(sum(values[:3]) / 3, abs=0.02)   # Avg of the three
  with open(root / "table2.json") as f:
    record = json.load(f)
  for name in rows:
    with open(root / "seed0" / sweep.dir_name(name) / "results.json") as f:
      result = json.load(f)
    assert result["method"] == "iibalance"
    assert name in json.dumps(record)
  # The variants really differ where they should: uniform β against the IIB prior.
  with open(root / "seed0" / "IIBalance" / "config.json") as f:
    base = json.load(f)["methods"]["iibalance"]
  with open(root / "seed0" / "w_o_IIB_prior" / "config.json") as f:
    uniform = json.load(f)["methods"]["iibalance"]
  assert (base["prior"], uniform["prior"]) == ("iib", "uniform")
  assert "IIBalance" in out
  assert sorted(os.listdir(root / "seed0")) == sorted(
      ["iib", "metrics.jsonl", "tensorboard", "IIBalance", "w_o_IIB_prior", "w_o_Stage_I_PRA",
       "w_o_Stage_II_fixed_mean_fusion"])
  # Finished runs are not run again.
  again = run("experiments.ablation", data_dir, root)
  assert "== " not in again and table_rows(again) == rows
  # ... and not reused for another configuration: the sweep stops before writing anything.
  before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
  refused = commands.run("experiments.ablation", *SMOKE, f"--config.data.dir={data_dir}",
                         f"--root={root}", "--seeds=1", "--config.optim.learning_rate=0.5",
                         check=False)
  assert refused.returncode == 1 and "optim.learning_rate" in refused.stderr
  assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_sensitivity_sweeps_tau_and_gamma_and_plots(data_dir, tmp_path):
  root = tmp_path / "sensitivity"
  run("experiments.sensitivity", data_dir, root, "--taus=0.07,1", "--gammas=0.5")
  with open(root / "sensitivity.json") as f:
    curves = json.load(f)
  assert [p["value"] for p in curves["tau"]] == [0.07, 1.0]
  assert [p["value"] for p in curves["gamma"]] == [0.5]
  with open(root / "sensitivity.md") as f:
    rows = table_rows(f.read())
  assert set(rows) == {"tau=0.07", "tau=1", "gamma=0.5"}
  # τ = 0.07 and γ = 0.5 are both the default configuration: one run, reported twice.
  assert rows["tau=0.07"] == rows["gamma=0.5"]
  with open(root / "seed0" / "gamma=0.5" / "results.json") as f:
    assert json.load(f)["same_run_as"] == "tau=0.07"
  assert not (root / "seed0" / "gamma=0.5" / "checkpoints").exists()
  assert curves["tau"][0]["agg"]["acc_fused"][0] == pytest.approx(rows["tau=0.07"][0], abs=0.01)
  with open(root / "seed0" / "tau=1" / "config.json") as f:
    assert json.load(f)["methods"]["iibalance"]["tau"] == 1.0
  with open(root / "sensitivity.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
