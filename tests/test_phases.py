"""Per-method phases through the runner on a tiny prepared dataset: MSLR's factors, PMR's prototype
passes, G-Blending's holdout and estimates, AGM's Shapley evaluation, and the stages of UDI and
BML-MI. One runner trains them all (the unimodal phase and the compiles are shared)."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from experiments import build
from iib_jax import checkpoint
from iib_jax.methods import gblending
from tests import commands
from experiments.configs import common, synthetic as synthetic_config

COMPARED = ("pmr", "gblending", "udi", "bmlmi")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return commands.tiny_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def workdir(data_dir, tmp_path_factory):
  """One runner, in this process (its compiled steps shared with the other tests here), with the
  console log captured."""
  work = tmp_path_factory.mktemp("phases") / "run"
  console = io.StringIO()
  with contextlib.redirect_stdout(console):
    commands.smoke_run(data_dir, work, method="mslr", compare_with=COMPARED, **{
        "optim.epochs": 2, "iib.epochs": 1, "methods.gblending.super_epoch": 1,
        "methods.udi.fusion_epochs": 1, "methods.bmlmi.distill_epochs": 1,
        # Without probe steps Î(z_s; y) = H(y) − log C = 0 on the balanced validation split,
        # while the trained InfoNCE bound is positive: the student distils, so stage 1 runs.
        "methods.bmlmi.probe_steps": 0})
  return work, console.getvalue()


def _records(path):
  return [json.loads(line) for line in open(path) if line.strip()]


def _equal(a, b):
  import jax
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_method_writes_results(workdir):
  work, stdout = workdir
  for name, path in [("mslr", work)] + [(n, work / "compare" / n) for n in COMPARED]:
    result = json.load(open(path / "results.json"))
    assert result["method"] == name
    assert result["test_best"]["num_examples"] == 6, name
    assert os.listdir(path / "checkpoints" / "best"), name
  table = (work / "results.md").read_text()
  for name in ("mslr",) + COMPARED:
    assert f"| {name} |" in table


def test_mslr_factors_follow_validation_accuracy(workdir):
  work, _ = workdir
  state = checkpoint.read_arrays(str(work), "latest")["method"]
  val = [r for r in _records(work / "metrics.jsonl")
         if r["phase"] == "multimodal" and r["split"] == "val"]
  # Two epochs in a memory of five: accuracies recorded in order, factors still c⁰.
  assert int(state["filled"]) == 2
  np.testing.assert_allclose(state["memory"][:, :2],
                             [[r["acc_audio"] for r in val], [r["acc_video"] for r in val]],
                             rtol=1e-6)
  np.testing.assert_allclose(state["factors"], [0.9, 1.1], rtol=1e-6)


def test_pmr_computes_prototypes_before_training_and_after_each_epoch(workdir):
  work, _ = workdir
  state = checkpoint.read_arrays(str(work / "compare" / "pmr"), "latest")["method"]
  assert int(state["passes"]) == 3
  assert np.asarray(state["valid"]).all()


def test_gblending_estimates_online_on_its_holdout(workdir):
  work, stdout = workdir
  assert "[gblending] holdout V′: 3 training clips" in stdout
  assert "weights from epoch 0" in stdout and "weights from epoch 1" in stdout
  weights = np.asarray(checkpoint.read_arrays(str(work / "compare" / "gblending"),
                                             "latest")["method"]["weights"])
  assert weights.shape == (3,) and abs(weights.sum() - 1) < 1e-5
  assert not np.allclose(weights, 1 / 3)                  # the placeholder was replaced


def test_udi_stages_freeze_the_anchor_then_the_encoders(workdir):
  work, stdout = workdir
  udi_dir = work / "compare" / "udi"
  result = json.load(open(udi_dir / "results.json"))
  anchor = result["stages"]["anchor"]
  assert json.load(open(udi_dir / "stages" / "udi.json"))["anchor"] == anchor
  follower_name = "video" if anchor == "audio" else "audio"
  unimodal = checkpoint.read_arrays(str(work / "iib"))
  follower = checkpoint.read_arrays(str(udi_dir / "stages" / "follower"))
  final = checkpoint.read_arrays(str(udi_dir))
  # Stage B: the anchor (parameters and BatchNorm statistics) is the unimodal phase's.
  assert _equal(follower["params"][anchor], unimodal["params"][anchor])
  assert _equal(follower["batch_stats"][anchor], unimodal["batch_stats"][anchor])
  assert not _equal(follower["params"][follower_name], unimodal["params"][follower_name])
  # Stage C: only the fused head moves.
  for m in ("audio", "video"):
    assert _equal(final["params"][m], follower["params"][m]), m
    assert _equal(final["batch_stats"][m], follower["batch_stats"][m]), m
  assert not _equal(final["params"]["fusion"], follower["params"]["fusion"])
  assert int(final["method"]["anchor"]) == ("audio", "video").index(anchor)


def test_bmlmi_distils_then_trains_with_calibrated_weights(workdir):
  work, stdout = workdir
  bml_dir = work / "compare" / "bmlmi"
  decision = json.load(open(bml_dir / "stages" / "bmlmi.json"))
  teacher = decision["teacher"]
  student = "video" if teacher == "audio" else "audio"
  assert decision["distill"] == {teacher: False, student: True}
  unimodal = checkpoint.read_arrays(str(work / "iib"))
  distilled = checkpoint.read_arrays(str(bml_dir / "stages" / "distill"), "latest")
  assert _equal(distilled["params"][teacher], unimodal["params"][teacher])
  assert not _equal(distilled["params"][student], unimodal["params"][student])
  final = checkpoint.read_arrays(str(bml_dir), "latest")
  weights = np.asarray(final["method"]["weights"])
  np.testing.assert_allclose(weights.sum(), 2.0, rtol=1e-5)        # Σ w_m = M
  assert int(final["method"]["teacher"]) == ("audio", "video").index(teacher)
  assert "[bmlmi] loss weights after epoch 1" in stdout
  assert json.load(open(bml_dir / "results.json"))["stages"]["teacher"] == teacher


def test_subset_batches_keep_every_selected_clip_once():
  ids = np.array([f"c{i}".encode() for i in range(10)], object)
  batches = [{"clip_id": ids[i:i + 4], "label": np.arange(i, i + 4)[:len(ids[i:i + 4])],
              "mask": np.ones(len(ids[i:i + 4]), np.float32)} for i in range(0, 10, 4)]
  keep = lambda i: int(i[1:]) % 3 != 0                                  # 6 of 10 clips
  train = list(build.subset_batches(batches, keep, 4, pad=False))
  assert [len(b["label"]) for b in train] == [4]                       # the last 2 dropped
  evaluation = list(build.subset_batches(batches, keep, 4, pad=True))
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in evaluation])
  assert labels.tolist() == [1, 2, 4, 5, 7, 8]
  assert [len(b["label"]) for b in evaluation] == [4, 4]


def test_holdout_is_stratified_and_deterministic(data_dir):
  clips = build.clip_labels(data_dir, "train")
  held = gblending.holdout_ids(clips, 0.1, seed=0)
  assert len(held) == 3                                  # one clip of each of the 3 classes
  assert {label for clip, label in clips if clip in held} == {0, 1, 2}
  assert gblending.holdout_ids(clips, 0.1, seed=0) == held
  assert gblending.holdout_ids(clips, 0.5, seed=1) != held


def test_ogm_ge_noise_follows_the_seed():
  import jax
  import jax.numpy as jnp
  from iib_jax import methods

  def noisy_grads(seed, noise_seed):
    spec = methods.MethodSpec(("audio", "video"), 3, 4, 2, 4, seed=seed)
    method = methods.get_method("ogm_ge", {"noise_seed": noise_seed}, spec)
    grads = {m: {"encoder": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 3))}}
             for m in ("audio", "video")}
    aux = {"coefficients": jnp.array([0.5, 1.0])}
    return jax.device_get(method.rewrite_grads(grads, aux, (), jnp.int32(1)))

  # The run's seed plus the offset: seed 3 with offset 10 draws what seed 13 with offset 0 draws.
  leaf = lambda g: g["audio"]["encoder"]["kernel"]
  np.testing.assert_array_equal(leaf(noisy_grads(3, 10)), leaf(noisy_grads(13, 0)))
  assert not np.array_equal(leaf(noisy_grads(3, 0)), leaf(noisy_grads(4, 0)))


@pytest.mark.parametrize("key,value,message", [
    ("methods.mslr.strategy", "sometimes", "methods.mslr.strategy"),
    ("methods.mslr.initial_factors", (1.0,), "methods.mslr.initial_factors"),
    ("methods.gblending.holdout_fraction", 1.5, "methods.gblending.holdout_fraction"),
    ("methods.gblending.mode", "never", "methods.gblending.mode"),
    ("methods.udi.follower_init", "copy", "methods.udi.follower_init"),
    ("methods.bmlmi.distill_epochs", -1, "methods.bmlmi.distill_epochs"),
    ("method", "unimodal", "method='unimodal'"),
])
def test_invalid_method_options_fail_in_validate(key, value, message):
  config = synthetic_config.get_config("smoke")
  config.method = key.split(".")[1] if key.startswith("methods.") else config.method
  node = config
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    common.validate(config, check_data=False)


def test_every_method_has_its_options_in_the_base_config():
  from iib_jax.methods import METHODS
  config = common.base_config()
  for name in METHODS:
    assert name in config.methods, name
