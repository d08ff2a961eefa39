"""The Table I command on a tiny prepared dataset: the table in three formats, Fig. 3, the run
directories, and a second invocation that trains nothing."""
import csv
import json
import os

import pytest

from experiments import table1
from tests import commands


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return commands.tiny_dataset(tmp_path_factory)


def table_command(root, data_dir):
  return ["experiments.table1", "--config=experiments/configs/table1.py:smoke",
          "--config.methods=iibalance,ogm_ge", "--config.seeds=1", f"--config.root={root}",
          f"--config.data_dirs.synthetic={data_dir}", "--config.epochs=1",
          "--config.iib_epochs=1",
          # The session's cache, shared with the other runner processes (tests/conftest.py).
          f"--config.compilation_cache={os.environ['JAX_COMPILATION_CACHE_DIR']}"]


@pytest.fixture(scope="module")
def table(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("table1")
  first = commands.run(*table_command(root, data_dir))
  return root, first.stdout, data_dir


def test_table_is_written_as_markdown_csv_and_json(table):
  root, _, _ = table
  text = (root / "table1.md").read_text()
  assert "### synthetic" in text and "| IIBalance |" in text and "| OGM-GE |" in text
  assert "**" in text and "<u>" in text                 # best and second best marked
  assert "| Method | Acc_m | Acc_a | Acc_v | Avg |" in text
  assert "each modality alone" in text and "Command: `python -m experiments.table1" in text
  rows = list(csv.DictReader(open(root / "table1.csv")))
  # Every method under the shared optimiser; the gradient multiplier and the reference under
  # the paper's too, in a block of their own with the paired difference to the reference.
  assert [(r["method"], r["optimizer"]) for r in rows] == [
      ("iibalance", "shared"), ("ogm_ge", "shared"), ("joint", "paper"), ("ogm_ge", "paper")]
  assert {"acc_fused_mean", "acc_audio_std", "acc_avg_mean"} <= set(rows[0])
  assert rows[3]["delta_wins"] in ("0", "1") and rows[2].get("delta_wins") in ("", None)
  assert "Protocol: every method: encoders from the unimodal phase (warm)" in text
  assert "the paper's optimiser: sgd lr 0.01, momentum 0.9, weight decay 0.0001" in text
  assert "| OGM-GE (paper optimiser) |" in text and "Δ Acc_m vs Joint [95% CI] (wins)" in text
  record = json.load(open(root / "table1.json"))
  runs = record["datasets"]["synthetic"]["methods"]["iibalance"]["runs"]
  assert len(runs) == 1 and runs[0]["test_best"]["num_examples"] == 6
  assert record["datasets"]["synthetic"]["methods"]["ogm_ge"]["acc_unimodal_from"] == \
      "split fusion layer"
  # The two other perspectives of the field's benchmark: shares and cost.
  view = record["datasets"]["synthetic"]["methods"]["iibalance"]["perspectives"]
  assert view["epoch_seconds"] > 0 and set(view["share"]) == {"audio", "video"}
  contribution = runs[0]["contribution"]
  assert set(contribution["coalitions"]) == {"none", "audio", "video", "audio+video"}
  assert contribution["coalitions"]["audio+video"] == runs[0]["test_best"]["acc_fused"]


def test_figure3_and_every_run_directory_are_kept(table):
  root, _, _ = table
  assert (root / "synthetic" / "fig3.png").stat().st_size > 0
  for name in ("iibalance", "ogm_ge"):
    run = root / "synthetic" / "seed0" / name
    for item in ("config.json", "results.json", "metrics.jsonl"):
      assert (run / item).exists(), (name, item)
    assert json.load(open(run / "config.json"))["method"] == name
  assert (root / "synthetic" / "seed0" / "iib" / "budgets.json").exists()


def test_second_invocation_trains_nothing(table, capsys):
  from experiments.configs import table1 as table1_config
  root, first, data_dir = table
  assert "== iibalance, seed 0" in first and "== ogm_ge, seed 0" in first
  settings = table1_config.get_config("smoke")
  settings.methods, settings.seeds, settings.root = "iibalance,ogm_ge", 1, str(root)
  settings.data_dirs.synthetic, settings.epochs, settings.iib_epochs = data_dir, 1, 1
  settings.compilation_cache = "off"
  before = (root / "synthetic" / "seed0" / "iibalance" / "results.json").stat().st_mtime
  table1.run(settings)
  again = capsys.readouterr().out
  assert "== " not in again and "IIB phase" not in again
  assert "| IIBalance |" in again
  assert (root / "synthetic" / "seed0" / "iibalance" / "results.json").stat().st_mtime == before


def test_columns_mark_best_in_bold_and_second_underlined():
  assert table1._ranks([50.0, 70.0, 60.0, 70.0]) == [2, 0, 1, 0]
  aggregates = {"joint": {"acc_fused": (60.0, 1.0), "acc_audio": (40.0, 0.5),
                          "acc_video": (30.0, 0.0), "acc_avg": (43.3, 0.4)},
                "iibalance": {"acc_fused": (70.0, 2.0), "acc_audio": (35.0, 0.5),
                              "acc_video": (30.0, 0.0), "acc_avg": (45.0, 0.4)}}
  text = table1.dataset_table("toy", aggregates, ("audio", "video"),
                              {"joint": 3, "iibalance": 3},
                              {"joint": "heads", "iibalance": "heads"}, None)
  assert "| IIBalance | **70.00 ± 2.00** | <u>35.00 ± 0.50</u> | **30.00 ± 0.00** |" in text
  assert "| Joint | <u>60.00 ± 1.00</u> | **40.00 ± 0.50** |" in text


def test_method_and_dataset_lists_are_checked():
  assert table1.parse_names("all", ("joint",), "methods", all_value=table1.all_methods()) == \
      table1.all_methods()
  assert table1.parse_names("joint, udi", ("joint", "udi"), "methods") == ("joint", "udi")
  assert table1.parse_names("('joint', 'udi')", ("joint", "udi"), "methods") == ("joint", "udi")
  assert table1.parse_names(("udi",), ("joint", "udi"), "methods") == ("udi",)
  with pytest.raises(ValueError, match="invalid config: methods='joint,nope'"):
    table1.parse_names("joint,nope", ("joint",), "methods")
  from iib_jax import methods
  assert all(methods.definition(n).label for n in table1.all_methods())
