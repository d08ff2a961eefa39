"""The fair protocol: no selection reads test labels, and the commands publish what they chose.

A tiny sweep runs twice, on the tiny dataset and on a copy whose test labels are permuted: the
unimodal phase's early stopping, each variant's best epoch and best checkpoint, and the sweep's
winner must not change. Then the controlled-imbalance command on a tiny feature dataset.
"""
import json
import os
import shutil

import numpy as np
import pytest

from experiments import sweep
from experiments.configs import synthetic as synthetic_config
from iib_jax import checkpoint, schema
from tests import commands


def permute_test_labels(src: str, dst: str, num_classes: int) -> None:
  """A copy of a prepared dataset whose test labels are y → (y + 1) mod C (metadata updated)."""
  import tensorflow as tf
  shutil.copytree(src, dst)
  info = schema.load_info(dst)
  meta_path = os.path.join(dst, schema.METADATA_FILE)
  meta = json.load(open(meta_path))
  for path in info["files"]["test"]:
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    with tf.io.TFRecordWriter(path) as writer:
      for record in records:
        example = tf.train.Example.FromString(record)
        labels = example.features.feature[schema.LABEL].int64_list.value
        labels[:] = [(y + 1) % num_classes for y in labels]
        writer.write(example.SerializeToString())
    for shard in meta["shards"]["test"]:
      if shard["file"] == os.path.basename(path):
        shard["num_bytes"] = os.path.getsize(path)
        shard["sha256"] = schema.file_sha256(path)
  json.dump(meta, open(meta_path, "w"), indent=1)


def test_label_ids_are_permuted(tmp_path, tmp_path_factory):
  import tensorflow as tf
  data = commands.tiny_dataset(tmp_path_factory)
  permute_test_labels(data, str(tmp_path / "permuted"), 3)

  def labels(d):
    files = schema.load_info(d)["files"]["test"]
    return [tf.train.Example.FromString(r).features.feature[schema.LABEL].int64_list.value[0]
            for f in files for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]

  original, permuted = labels(data), labels(str(tmp_path / "permuted"))
  assert permuted == [(y + 1) % 3 for y in original]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
  data = commands.tiny_dataset(tmp_path_factory)
  permuted = str(tmp_path_factory.mktemp("permuted") / "data")
  permute_test_labels(data, permuted, 3)
  out = {}
  for name, data_dir in (("original", data), ("permuted", permuted)):
    config = synthetic_config.get_config("smoke")
    config.data.dir = data_dir
    config.method, config.compare_with = "joint", ()
    config.start = "warm"                          # the unimodal phase's early stopping too
    config.optim.epochs, config.iib.epochs, config.iib.patience = 3, 3, 1
    root = tmp_path_factory.mktemp(name)
    variants = {"lr 1e-3": {"optim.learning_rate": 1e-3},
                "lr 1e-2": {"optim.learning_rate": 1e-2}}
    out[name] = (root, sweep.run_variants(config, variants, [0], str(root)))
  return out


def test_no_selection_reads_test_labels(two_sweeps):
  (root_a, a), (root_b, b) = two_sweeps["original"], two_sweeps["permuted"]
  # Early stopping of the unimodal phase: the same best epochs and budgets.
  budgets_a = json.load(open(root_a / "seed0" / "iib" / "budgets.json"))
  budgets_b = json.load(open(root_b / "seed0" / "iib" / "budgets.json"))
  assert budgets_a["budgets"] == budgets_b["budgets"]
  for m in ("audio", "video"):
    assert budgets_a["unimodal"][m]["best_epoch"] == budgets_b["unimodal"][m]["best_epoch"]
    assert budgets_a["unimodal"][m]["val_acc"] == budgets_b["unimodal"][m]["val_acc"]
  # The best epoch of every variant, and its checkpoint, bit for bit.
  for variant in a:
    assert a[variant][0]["best_epoch"] == b[variant][0]["best_epoch"], variant
    assert a[variant][0]["val_best"] == b[variant][0]["val_best"], variant
    run_a = checkpoint.read_arrays(str(root_a / "seed0" / sweep.dir_name(variant)))
    run_b = checkpoint.read_arrays(str(root_b / "seed0" / sweep.dir_name(variant)))
    import jax
    for x, y in zip(jax.tree.leaves(run_a["params"]), jax.tree.leaves(run_b["params"])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The sweep's winner (a default chosen by measurement).
  assert sweep.select(a) == sweep.select(b)
  # While what is reported on test did see the other labels.
  assert any(a[v][0]["test_best"] != b[v][0]["test_best"] for v in a)


def test_the_imbalance_command_writes_the_dial_table_and_both_plots(tmp_path):
  root = tmp_path / "imbalance"
  done = commands.run(
      "experiments.imbalance", "--config=experiments/configs/synthetic_features.py:smoke",
      f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.optim.epochs=1",
      "--config.iib.epochs=1", "--seeds=2", "--dials=0,1", "--methods=joint,iibalance",
      f"--root={root}", "--workers=2")
  text = (root / "imbalance.md").read_text()
  assert "| dial | β_audio | β_video | Joint Acc_m | IIBalance: Δ vs Joint |" in text
  assert text.count("\n| 0 |") == 1 and text.count("\n| 1 |") == 1
  record = json.load(open(root / "imbalance.json"))
  assert set(record["dials"]) == {"0", "1"}
  for dial in record["dials"].values():
    beta = np.asarray(dial["budgets"]["beta"])
    assert beta.shape == (2, 2) and np.allclose(beta.sum(1), 1, atol=1e-5)
    assert dial["methods"]["iibalance"]["paired"]["n"] == 2
  for name in ("budgets_vs_dial.png", "gain_vs_dial.png"):
    assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert "Protocol: every method: encoders from the unimodal phase (warm)" in done.stdout
  assert "2 worker processes" in done.stdout
  # Seed 1 of dial 1, trained by worker 1, is what one process computes.
  from experiments.configs import synthetic_features
  from experiments.configs import common
  config = common.override(synthetic_features.get_config("smoke"), {
      "data.dir": record["dials"]["1"]["data_dir"], "data.features.dial": 1.0,
      "optim.epochs": 1, "iib.epochs": 1, "compare_with": ()})
  alone = sweep.run_variants(config, {"iibalance": {"method": "iibalance"}}, [1],
                             str(tmp_path / "alone"))["iibalance"][0]
  worker = json.load(open(root / "dial1" / "seed1" / "iibalance" / "results.json"))
  assert alone["test_best"] == worker["test_best"] and alone["val_best"] == worker["val_best"]
  import jax
  for x, y in zip(jax.tree.leaves(checkpoint.read_arrays(str(tmp_path / "alone" / "seed1" /
                                                              "iibalance"))["params"]),
                  jax.tree.leaves(checkpoint.read_arrays(str(root / "dial1" / "seed1" /
                                                              "iibalance"))["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("text, expected", [
    ("0/2", (0, 2)), ("1/2", (1, 2)), ("2/5", (2, 5)),
    ("2/2", None), ("-1/2", None), ("1", None), ("a/b", None), ("", None)])
def test_a_worker_part_is_k_of_n(text, expected):
  """The share of a sweep's seeds one worker process trains (`--part`, `--config.part`)."""
  from experiments import cli
  if expected is not None:
    assert cli.parse_part(text) == expected
  else:
    with pytest.raises(ValueError, match=r"invalid flag: --config.part=.*accepted: 'k/n'"):
      cli.parse_part(text, "--config.part")
