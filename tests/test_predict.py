"""Prediction: the numpy evaluation ops against the tf.data ones, the library loader and its
export, and `python -m experiments.predict` on raw mp4s of a smoke run's own test split against
the evaluation of the same clips from the TFRecords."""
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests import commands
from tests.test_readme import python_block, snippet_env

# docs/DATA.md, "Prediction from raw files": the tolerance on the fused probabilities against the
# evaluation from TFRecords, with the frames rounded through JPEG as stored, and without.
JPEG_ATOL = 1e-5
RAW_ATOL = 0.05


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return commands.tiny_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
  """(run directory, raw dataset directory) of an IIBalance smoke run."""
  run = tmp_path_factory.mktemp("predict") / "run"
  commands.smoke_run(data_dir, run, method="iibalance", compare_with=(),
                     **{"optim.epochs": 1, "iib.epochs": 1})
  raw_dir = os.path.join(os.path.dirname(os.path.dirname(data_dir)), "raw")
  return run, raw_dir


def predict(*args):
  """The command as a user runs it (on the session's four CPU devices); its status unchecked."""
  return commands.run("experiments.predict", *map(str, args), check=False)


# ----------------------------------------------------------------------------------------------
# The evaluation ops in numpy


def stored_examples(data_dir, split="test", count=3):
  """(parsed tf examples, stored-form numpy examples) of the first records of a split."""
  import tensorflow as tf
  from data_prep import media
  from iib_jax import preprocess, schema
  info = schema.load_info(data_dir)
  parsed, stored = [], []
  for serialized in tf.data.TFRecordDataset(info["files"][split]).take(count):
    ex = preprocess.parse(serialized, ("audio", "video"))
    parsed.append(ex)
    stored.append({"video": np.stack([media.decode_jpeg(j) for j in ex["video"].numpy()]),
                   "audio": ex["audio"].numpy()})
  return info, parsed, stored


@pytest.mark.parametrize("image_size", [32, 16, 20, 48])   # stored size, shrink, shrink, enlarge
@pytest.mark.parametrize("frames_dtype", ["float32", "uint8"])
def test_numpy_eval_ops_equal_the_pipeline(data_dir, image_size, frames_dtype):
  import ml_collections
  import tensorflow as tf
  from iib_jax import data, inference, preprocess
  info, parsed, stored = stored_examples(data_dir)
  audio_options = [(64, "zeros", "start", "none"), (200, "tile", "start", "dataset"),
                   (50, "zeros", "center", "ks"), (150, "zeros", "center", None),
                   (80, "tile", "center", (1.5, 2.0))]
  for frames, pad, position, norm in audio_options:
    ops = data.default_ops(info, train=False, stored=["audio", "video"], num_frames=3,
                           image_size=image_size, audio_frames=frames, audio_norm=norm,
                           audio_pad=pad, audio_position=position, frames_dtype=frames_dtype)
    config = ml_collections.ConfigDict(dict(
        modalities=("audio", "video"),
        model=dict(encoders=dict(audio="audio_cnn", video="resnet18")),
        data=dict(num_frames=3, image_size=image_size, frames_dtype=frames_dtype,
                  audio_frames=frames, audio_pad=pad, audio_position=position, audio_norm=norm)))
    ops_np = inference.Preprocessing.from_config(config, info)
    assert ops_np.audio_norm == data.audio_normalization(info, norm)
    for ex, example in zip(parsed, stored):
      want = preprocess.apply(ops, ex, tf.constant([0, 0], tf.int64))
      got = ops_np(example)
      np.testing.assert_array_equal(got["audio"], want["audio"].numpy())
      video = want["video"].numpy()
      assert got["video"].dtype == video.dtype and got["video"].shape == video.shape
      assert got["video"].shape == (3, image_size, image_size, 3)
      if image_size == 32:                              # the stored size: no resize, exact
        np.testing.assert_array_equal(got["video"], video)
      elif frames_dtype == "float32":
        np.testing.assert_allclose(got["video"], video, atol=1e-5, rtol=0)
      else:                                             # rounding of a resize: a grey level
        diff = np.abs(got["video"].astype(int) - video.astype(int))
        assert diff.max() <= 1 and np.mean(diff > 0) < 0.01
      specs = ops_np.input_specs()
      for m in ("audio", "video"):
        assert (got[m].shape, got[m].dtype) == specs[m]


def test_preprocessing_of_three_modalities_with_a_vector_one():
  import ml_collections
  from iib_jax import inference
  info = {"audio": {"bins": 4, "default_frames": 5, "norm": "dataset", "mean": 1.0, "std": 2.0},
          "video": {"height": 8, "width": 8}, "dims": {"feat": 3}}
  config = ml_collections.ConfigDict(dict(
      modalities=("audio", "video", "feat"),
      model=dict(encoders=dict(audio="gru", video="resnet18", feat="mlp")),
      data=dict(num_frames=2, image_size=8, audio_frames=6, audio_norm=None)))
  ops = inference.Preprocessing.from_config(config, info)
  assert ops.stored == {"audio": "audio", "video": "video", "feat": "vector"}
  rng = np.random.default_rng(0)
  example = {"audio": rng.normal(size=(4, 4)).astype(np.float32),
             "video": rng.integers(0, 256, (5, 8, 8, 3)).astype(np.uint8),
             "feat": np.array([1.0, 2.0, 3.0])}
  out = ops(example)
  expected_audio = np.concatenate([(example["audio"] - 1.0) / 2.0,
                                   np.full((2, 4), -0.5, np.float32)])   # zero rows, normalised
  np.testing.assert_allclose(out["audio"], expected_audio, rtol=1e-6)
  frames = example["video"][[1, 3]].astype(np.float32) / 255.0        # centres of [0,2), [2,5)
  np.testing.assert_allclose(out["video"], (frames - np.array([0.485, 0.456, 0.406]))
                             / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
  np.testing.assert_array_equal(out["feat"], np.array([1.0, 2.0, 3.0], np.float32))
  assert {m: spec[0] for m, spec in ops.input_specs().items()} == {
      "audio": (6, 4), "video": (2, 8, 8, 3), "feat": (3,)}
  with pytest.raises(KeyError, match="no 'feat'"):
    ops({"audio": example["audio"], "video": example["video"]})


def test_center_frames_are_the_pipelines_segment_centres():
  import tensorflow as tf
  from iib_jax import inference, preprocess
  for n in range(1, 30):
    for t in (1, 2, 3, 5, 8):
      want = preprocess.segment_indices(tf.constant(n), t, train=False).numpy()
      np.testing.assert_array_equal(inference.center_frame_indices(n, t), want, err_msg=(n, t))


def test_jpeg_decoding_equals_tensorflows(data_dir):
  import tensorflow as tf
  from data_prep import media
  _, parsed, _ = stored_examples(data_dir, "train", count=4)
  for ex in parsed:
    for jpeg in ex["video"].numpy():
      want = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
      np.testing.assert_array_equal(media.decode_jpeg(jpeg), want)


def test_decoding_for_prediction_is_preparations(data_dir):
  """clip_example with --jpeg gives exactly the stored frames and features of a clip."""
  from data_prep import examples
  from iib_jax import schema
  info, parsed, stored = stored_examples(data_dir, count=2)
  raw_dir = os.path.join(os.path.dirname(os.path.dirname(data_dir)), "raw")
  for ex, want in zip(parsed, stored):
    clip_id = ex["clip_id"].numpy().decode()
    clip = examples.media_clip(os.path.join(raw_dir, "videos", clip_id + ".mp4"))
    got = examples.clip_example(clip, examples.prediction_config(info, jpeg=True))
    np.testing.assert_array_equal(got["video"], want["video"])
    np.testing.assert_array_equal(got["audio"], want["audio"])
    raw = examples.clip_example(clip, examples.prediction_config(info))
    assert raw["video"].shape == want["video"].shape and raw["video"].dtype == np.uint8
    np.testing.assert_array_equal(raw["audio"], want["audio"])
  assert schema.load_info(data_dir)["video"]["jpeg_quality"] == 90


# ----------------------------------------------------------------------------------------------
# The command against the evaluation from TFRecords


@pytest.fixture(scope="module")
def evaluated(smoke):
  """Per-clip fused probabilities and weights of the restored best checkpoint on the prepared
  test split: the evaluation of `experiments.evaluate` (`restore_run`, its eval step, the
  pipeline's batches)."""
  from experiments import build
  from iib_jax import inference, loop
  run_dir, _ = smoke
  run = build.restore_run(str(run_dir), build.Devices())
  out = loop.collect(run.eval_step, run.state, run.data.eval("test"))
  ids = [clip_id.decode() for clip_id, _ in run.data.clip_labels("test")]
  return {"ids": ids, "probs": inference.softmax(out["fused_logits"]), "weights": out["weights"],
          "outputs": out, "summary": loop.summarize(out, run.modalities)}


@pytest.mark.parametrize("jpeg", [True, False], ids=["jpeg", "raw"])
def test_command_on_raw_test_clips_matches_evaluation(smoke, evaluated, tmp_path, jpeg):
  run_dir, raw_dir = smoke
  out_json = tmp_path / "predictions.jsonl"
  result = predict("--workdir", run_dir, os.path.join(raw_dir, "test.txt"), "--json",
                   out_json, "--workers=0", "--batch_size=4", *(["--jpeg"] if jpeg else []))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  records = [json.loads(line) for line in out_json.read_text().splitlines()]
  assert sorted(r["clip_id"] for r in records) == sorted(evaluated["ids"])
  index = {clip_id: i for i, clip_id in enumerate(evaluated["ids"])}
  probs = np.array([r["probs"] for r in records])
  weights = np.array([[r["weights"][m] for m in ("audio", "video")] for r in records])
  rows = [index[r["clip_id"]] for r in records]
  want, want_w = evaluated["probs"][rows], evaluated["weights"][rows]
  atol = JPEG_ATOL if jpeg else RAW_ATOL
  print(f"jpeg={jpeg}: max |dp| {np.abs(probs - want).max():.3g}, "
        f"max |dw| {np.abs(weights - want_w).max():.3g}")
  np.testing.assert_allclose(probs, want, atol=atol, rtol=0)
  np.testing.assert_allclose(weights, want_w, atol=atol, rtol=0)
  # The top-1 agrees wherever the evaluation's margin exceeds the tolerance.
  top2 = np.sort(want, -1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 2 * atol
  np.testing.assert_array_equal(probs.argmax(-1)[clear], want.argmax(-1)[clear])
  assert all(r["label"] == int(r["clip_id"][1:3]) for r in records)   # s<class>_<n>
  if jpeg:   # the same predictions: the run's own test accuracies
    results = json.load(open(run_dir / "results.json"))["test_best"]
    assert f"fused {results['acc_fused']:.3f}, audio {results['acc_audio']:.3f}" in result.stderr
    uni = evaluated["outputs"]["unimodal_pred"][rows]
    assert [[r["unimodal"][m]["index"] for m in ("audio", "video")] for r in records] == \
        uni.tolist()
  assert len(result.stdout.splitlines()) == len(records)   # the text lines too (--json FILE)


def test_unreadable_file_is_one_error_line_and_the_others_go_on(smoke, tmp_path):
  run_dir, raw_dir = smoke
  clips = tmp_path / "clips"
  clips.mkdir()
  for name in ("s00_0002.mp4", "s02_0003.mp4"):
    shutil.copy(os.path.join(raw_dir, "videos", name), clips / name)
  (clips / "broken.mp4").write_bytes(open(os.path.join(raw_dir, "videos", "s01_0001.mp4"),
                                          "rb").read()[:2000])
  (clips / "notes.txt").write_text("not a clip\n")               # not a media file: not listed
  out_json = tmp_path / "out.jsonl"
  result = predict("--workdir", run_dir, clips, "--workers=2", "--json", out_json,
                   "--top_k=2")
  assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-5000:]
  lines = result.stdout.splitlines()
  assert [line.split(": ")[0] for line in lines] == [str(clips / "s00_0002.mp4"),
                                                     str(clips / "s02_0003.mp4")]
  for line in lines:   # top-2 with probabilities | each modality's top-1 | the fusion weights
    parts = line.split(": ", 1)[1].split(" | ")
    assert len(parts) == 4 and len(parts[0].split(", ")) == 2
    assert parts[1].startswith("audio ") and parts[2].startswith("video ")
    assert parts[3].startswith("weights audio ") and " video " in parts[3]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and str(clips / "broken.mp4") in errors[0], result.stderr
  records = [json.loads(line) for line in out_json.read_text().splitlines()]
  assert [r["clip_id"] for r in records] == ["broken", "s00_0002", "s02_0003"]
  assert records[0]["kind"] == "unreadable" and "error" in records[0]
  assert "2 of 3 clips predicted" in result.stderr and "1 could not be read" in result.stderr


def test_command_fails_cleanly_without_a_run(tmp_path, smoke):
  _, raw_dir = smoke
  result = predict("--workdir", tmp_path, os.path.join(raw_dir, "videos", "s00_0002.mp4"))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: no config.json")
  empty = tmp_path / "empty"
  empty.mkdir()
  result = predict("--workdir", smoke[0], empty)
  assert result.returncode == 1 and "no media file" in result.stderr


# ----------------------------------------------------------------------------------------------
# The library: load, predict, export


def test_load_and_export_give_the_same_predictions(smoke, tmp_path):
  from iib_jax import inference
  run_dir, _ = smoke
  trained = inference.load(str(run_dir))
  assert trained.name == "iibalance" and trained.which == "best" and trained.epoch == 0
  assert trained.class_names == json.load(open(os.path.join(
      trained.config.data.dir, "metadata.json")))["class_names"]
  rng = np.random.default_rng(0)
  batch = {m: rng.normal(size=(5,) + shape).astype(dtype)
           for m, (shape, dtype) in trained.preprocessing.input_specs().items()}
  batch["mask"] = np.array([1, 1, 0, 1, 1], np.float32)       # a padding row is dropped
  out = trained.predict(batch)
  assert out["probs"].shape == (4, 3) and out["unimodal_probs"].shape == (4, 2, 3)
  np.testing.assert_allclose(out["probs"].sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(out["weights"].sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(out["unimodal_pred"], out["unimodal_probs"].argmax(-1))
  export = tmp_path / "export"
  trained.export(str(export))
  assert sorted(os.listdir(export)) == ["budgets.json", "checkpoints", "config.json",
                                        "dataset.json", "export.json", "results.json"]
  # Shipped: read-only, without the run or the dataset next to it.
  shipped = tmp_path / "shipped"
  shutil.copytree(export, shipped)
  for root, dirs, files in os.walk(shipped):
    for name in dirs + files:
      path = os.path.join(root, name)
      os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
  config = json.load(open(shipped / "config.json"))
  assert config["data"]["dir"] == trained.config.data.dir      # recorded, never read
  try:
    loaded = inference.load(str(shipped))
    again = loaded.predict(batch)
    with pytest.raises(ValueError, match="export of the 'best' checkpoint"):
      inference.load(str(shipped), "latest")
  finally:
    for root, dirs, files in os.walk(shipped):
      for name in dirs + files:
        os.chmod(os.path.join(root, name), 0o755)
  assert loaded.name == trained.name and loaded.class_names == trained.class_names
  assert loaded.preprocessing == trained.preprocessing
  for key in out:
    np.testing.assert_array_equal(again[key], out[key], err_msg=key)
  latest = inference.load(str(run_dir), "latest")
  assert latest.which == "latest" and latest.epoch == 0


def test_library_needs_no_tensorflow_given_arrays(smoke):
  run_dir, _ = smoke
  code = ("import sys\nfrom iib_jax import inference\n"
          f"trained = inference.load({str(run_dir)!r})\n"
          "out = trained.predict(trained.example_batch(3))\n"
          "assert out['probs'].shape == (3, 3), out['probs'].shape\n"
          "print(sorted(m for m in ('tensorflow', 'librosa', 'av') if m in sys.modules))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=commands.ROOT, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr[-5000:]
  assert result.stdout.strip() == "[]"


def test_readme_loading_example_runs_as_written(smoke, tmp_path):
  """The README's 'Loading a trained run' block, in a directory laid out as the main job leaves
  it (runs/synthetic_iibalance_seed0)."""
  run_dir, _ = smoke
  work = tmp_path / "work"
  (work / "runs").mkdir(parents=True)
  os.symlink(run_dir, work / "runs" / "synthetic_iibalance_seed0")
  code = python_block("Loading a trained run")
  result = subprocess.run([sys.executable, "-c", code], cwd=work, env=snippet_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("iibalance ['00_250hz_hue000'")
  assert len(lines) == 1 + 8 and lines[1].startswith("s00_0000.mp4 ")
  assert (work / "exported" / "synthetic_iibalance" / "export.json").exists()
