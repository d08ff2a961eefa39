"""Benchmarks: the FLOP counter against hand counts, and every benchmark command at tiny sizes.

Only the outputs are checked (keys, positive rates, counts), never the speed. FLOP references are
worked out layer by layer in this file with torchvision's feature-map sizes.
"""
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, flops, train_step
from iib_jax.models import build_model
from iib_jax.models.resnet import ResNet


# ------------------------------------------------------------------------------------------------
# FLOP counter


def _out(size, kernel, stride, pad):
  return (size + 2 * pad - kernel) // stride + 1


def ref_resnet18_macs(height, width, channels):
  """torchvision ResNet-18 (no fc) multiply-adds, layer by layer, for one image."""
  h, w = _out(height, 7, 2, 3), _out(width, 7, 2, 3)
  macs = h * w * 64 * 7 * 7 * channels                         # stem
  h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)                    # max-pool
  macs += 4 * h * w * 64 * 3 * 3 * 64                          # stage 1: 4 convs
  cin = 64
  for cout in (128, 256, 512):
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    macs += h * w * cout * 3 * 3 * cin                         # strided conv
    macs += 3 * h * w * cout * 3 * 3 * cout                    # three more 3×3
    macs += h * w * cout * cin                                 # 1×1 projection
    cin = cout
  return macs


def stem_macs(height, width, channels):
  return _out(height, 7, 2, 3) * _out(width, 7, 2, 3) * 64 * 49 * channels


def test_resnet18_reference_is_the_known_torchvision_count():
  # 1.814 GMACs with the 1000-way classifier (fvcore, ptflops report 1.81-1.82 G).
  assert ref_resnet18_macs(224, 224, 3) == 1_813_561_344
  assert ref_resnet18_macs(224, 224, 3) + 512 * 1000 == 1_814_073_344


class _Stack(nn.Module):
  @nn.compact
  def __call__(self, x, train=True):
    image, sequence = x["image"], x["sequence"]
    y = nn.relu(nn.Conv(4, (3, 3), padding="SAME", use_bias=False)(image))      # [1, 8, 8, 4]
    y = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                feature_group_count=4)(y)                                        # [1, 4, 4, 4]
    y = nn.Dense(10)(y.reshape(y.shape[0], -1))                                  # 64 -> 10
    z = nn.RNN(nn.GRUCell(5))(sequence)                                          # [1, 7, 5]
    return y, z


def test_counter_matches_hand_counts_of_a_conv_dense_gru_stack():
  example = {"image": jnp.zeros((1, 8, 8, 3)), "sequence": jnp.zeros((1, 7, 3))}
  count = flops.count_module(_Stack(), example)
  conv = 8 * 8 * 4 * (3 * 3 * 3)              # 6912
  depthwise = 4 * 4 * 4 * (3 * 3 * 1)         # 576: one input channel per group
  dense = 64 * 10                             # 640
  gru_input = 7 * 3 * (3 * 5)                 # 315: r, z, n gates read x_t
  gru_hidden = 7 * 3 * (5 * 5)                # 525: r, z, n gates read h_{t-1}
  assert count.forward_macs == conv + depthwise + dense + gru_input + gru_hidden
  assert count.by_kind == {"conv_general_dilated": conv + depthwise,
                           "dot_general": dense + gru_input + gru_hidden}
  # Backward: weight gradients everywhere; input gradients only where the input depends on the
  # parameters (not for the first conv nor for the GRU's input gates, which read the batch).
  assert count.grad_macs == conv + 2 * depthwise + 2 * dense + gru_input + 2 * gru_hidden
  assert count.forward_flops == 2 * count.forward_macs
  assert count.train_flops == 3 * count.forward_flops


def test_counter_gives_resnet18_at_224_its_torchvision_count():
  count = flops.count_module(ResNet(), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert count.forward_macs == ref_resnet18_macs(224, 224, 3)        # ≈ 1.81e9
  assert count.grad_macs == 2 * count.forward_macs - stem_macs(224, 224, 3)


def test_standard_configuration_flops_and_the_issues_anchor():
  config = common.CONFIGS["standard"]
  model = build_model(("audio", "video"), dict(config.encoders), config.num_classes)
  example = {"audio": jax.ShapeDtypeStruct((2, 257, 188), jnp.float32),
             "video": jax.ShapeDtypeStruct((2, 3, 224, 224, 3), jnp.float32)}
  count = flops.model_flops(model, example)
  video, audio = 3 * ref_resnet18_macs(224, 224, 3), ref_resnet18_macs(257, 188, 1)
  heads = 2 * 512 * 31 + 2 * 512 * 31                  # unimodal heads + concat fusion
  assert count.forward_macs == video + audio + heads
  assert count.by_module["video"] == video + 512 * 31
  # 3 × forward is 43.35 GFLOP per sample; leaving out the input gradient of the two stems
  # (nothing asks for the gradient of the frames) gives the issue's 42.6.
  assert count.train_flops / 1e9 == pytest.approx(43.35, abs=0.01)
  assert count.autodiff_flops / 1e9 == pytest.approx(42.6, abs=0.05)


def test_peak_table_by_device_kind():
  assert common.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert common.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert common.peak_tflops("NVIDIA H200", "float32") == 494.7          # TF32
  assert common.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert common.peak_tflops("cpu", "bfloat16") is None


# ------------------------------------------------------------------------------------------------
# The commands at tiny sizes


def _load(path):
  with open(path) as f:
    return json.load(f)


def _check_environment(env):
  assert env["command"] and env["versions"]["jax"]
  assert len(env["load_avg_start"]) == 3 and len(env["load_avg_end"]) == 3


@pytest.fixture(scope="module")
def train_step_record(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench") / "train_step.json")
  train_step.main(["--size=tiny", "--configs=standard", "--batch_sizes=4",
                   "--dtypes=bfloat16", "--warmup=0", "--steps=2", "--method_overhead",
                   "--frames_dtype=uint8", f"--out={out}"])
  return _load(out)


def test_train_step_reports_rates_flops_and_load(train_step_record):
  record = train_step_record
  _check_environment(record["environment"])
  assert record["environment"]["device_kind"] == "cpu"
  rows = record["results"]
  assert [r["method"] for r in rows] == ["joint", "iibalance"]
  for r in rows:
    assert "error" not in r and r["finite"] and r["frames_dtype"] == "uint8"
    assert r["ms_median"] > 0 and r["samples_per_s"] > 0 and r["ms_pipelined"] > 0
    assert r["train_gflops_per_sample"] == pytest.approx(3 * r["forward_gflops_per_sample"])
    assert 0 < r["autodiff_gflops_per_sample"] < r["train_gflops_per_sample"]
    assert r["peak_tflops"] is None and r["peak_fraction"] is None      # no CPU peak
    assert len(r["load_avg"]) == 3 and r["timed_steps"] == 2
  assert rows[0]["vs_joint"] == 1.0
  (overhead,) = record["method_overhead"]
  assert overhead["joint_ms"] > 0 and overhead["iibalance_ms"] > 0
  assert overhead["overhead_pct"] == pytest.approx(
      100 * (overhead["iibalance_ms"] / overhead["joint_ms"] - 1))


def test_isolate_passes_every_other_flag_to_the_children():
  argv = ["--size=tiny", "--isolate", "--configs", "ks,standard", "--out", "x.json",
          "--methods=joint", "--dtypes=float32"]
  assert train_step.child_argv(argv) == ["--size=tiny", "--methods=joint"]


def test_gpu_side_benchmarks_import_without_tensorflow_librosa_av_or_torch():
  code = ("import sys, benchmarks.train_step, benchmarks.torch_peer, benchmarks.flops; "
          "bad = [m for m in ('tensorflow', 'librosa', 'av', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_all_selects_every_registered_method():
  args = train_step.parse_args(["--size=tiny", "--methods=all"])
  from iib_jax.methods import METHODS
  assert args.methods == list(METHODS)


def test_torch_peer_without_torch_skips_and_says_so(tmp_path, capsys):
  if __import__("importlib").util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  from benchmarks import torch_peer
  out = str(tmp_path / "peer.json")
  torch_peer.main(["--size=tiny", f"--out={out}"])
  assert "PyTorch is not installed" in capsys.readouterr().out
  record = _load(out)
  assert "not installed" in record["skipped"] and record["results"] == []
  _check_environment(record["environment"])


def test_torch_peer_tiny_times_both_frameworks(tmp_path):
  pytest.importorskip("torch")
  from benchmarks import torch_peer
  out = str(tmp_path / "peer.json")
  torch_peer.main(["--size=tiny", "--batch_sizes=4", "--dtypes=float32", "--torch_modes=eager",
                   "--warmup=0", "--steps=1", f"--out={out}"])
  record = _load(out)
  rows = {(r["framework"], r["variant"]): r for r in record["results"]}
  assert set(rows) == {("iib-jax", "joint"), ("iib-jax", "iibalance"), ("pytorch", "eager")}
  assert all(r["ms_median"] > 0 and "error" not in r for r in rows.values())
  assert {p["jax_method"] for p in record["ratios"]} == {"joint", "iibalance"}
  assert all(p["speedup"] > 0 for p in record["ratios"])


def test_input_pipeline_tiny_compares_the_loaders_on_the_same_batches(tmp_path):
  from benchmarks import input_pipeline
  out = str(tmp_path / "input.json")
  input_pipeline.main(["--size=tiny", f"--cache_dir={tmp_path / 'cache'}", "--cores=1",
                       "--batches=2", "--stages", f"--out={out}"])
  record = _load(out)
  _check_environment(record["environment"])
  rows = {r["loader"]: r for r in record["results"]}
  assert set(rows) == {"tfdata", "tfdata_uint8", "per_item", "per_item_resample"}
  for r in rows.values():
    assert "error" not in r, r.get("error")
    assert r["clips"] == 2 * 4 and r["clips_per_s"] > 0 and len(r["load_avg"]) == 3
  tf_shapes, item_shapes = rows["tfdata"]["batch_shapes"], rows["per_item"]["batch_shapes"]
  # One batch in two layouts: [B, T, H, W, 3] / [B, 3, T, H, W]; [B, 188, 257] / [B, 1, 257, 188].
  assert tf_shapes["video"] == [4, 3, 32, 32, 3] and item_shapes["visual"] == [4, 3, 3, 32, 32]
  assert tf_shapes["audio"] == [4, 188, 257] and item_shapes["audio"] == [4, 1, 257, 188]
  assert rows["tfdata_uint8"]["batch_shapes"] == tf_shapes
  assert rows["tfdata"]["batch_dtypes"]["video"] == "float32"
  assert rows["tfdata_uint8"]["batch_dtypes"]["video"] == "uint8"
  stages = {entry["frames_dtype"]: entry["stages"] for entry in record["stages"]}
  assert [s["up_to"] for s in stages["uint8"]] == [
      "sample_frames", "crop_audio", "decode_random_resized_crop", "quantize_frames",
      "flip_left_right"]
  assert stages["float32"][-1]["up_to"] == "normalize_frames"
  assert all(s["ms_per_clip"] > 0 for entry in stages.values() for s in entry)
  assert record["tfdata_uint8_vs_per_item_per_core"] == pytest.approx(
      rows["tfdata_uint8"]["clips_per_s"] / rows["per_item"]["clips_per_s"])
  assert record["tfdata_vs_per_item_per_core"] == pytest.approx(
      rows["tfdata"]["clips_per_s"] / rows["per_item"]["clips_per_s"])
  needed = {n["loader"]: n for n in record["cores_needed"]}
  assert needed["tfdata"]["cores_needed"] == pytest.approx(
      common.ANCHOR_STEP_RATE / rows["tfdata"]["clips_per_s"])


def test_data_prep_tiny_scales_over_workers(tmp_path):
  from benchmarks import data_prep as bench
  out = str(tmp_path / "prep.json")
  bench.main(["--size=tiny", f"--cache_dir={tmp_path / 'cache'}", "--workers=1,2",
              f"--out={out}"])
  record = _load(out)
  _check_environment(record["environment"])
  rows = record["results"]
  assert [r["workers"] for r in rows] == [1, 2]
  for r in rows:
    assert r["clips"] == 12 and r["clips_per_s"] > 0
    assert r["clips_per_s_per_worker"] == pytest.approx(r["clips_per_s"] / r["workers"])
  assert rows[0]["speedup_vs_1"] == 1.0
  assert all(v > 0 for v in record["stages_ms_per_clip"].values())


def test_precision_table_and_verdict(tmp_path, monkeypatch):
  from benchmarks import precision
  from experiments import sweep

  def fake_run_variants(config, variants, seeds, root):
    assert {n: dict(v) for n, v in variants.items()} == {
        "float32": {"model.dtype": "float32"}, "bfloat16": {"model.dtype": "bfloat16"}}
    acc = {"float32": [0.70, 0.74, 0.72], "bfloat16": [0.71, 0.73, 0.72]}
    return {name: [{"seed": s, "wall_s": 10.0, "test_best": {
        "acc_fused": acc[name][s], "acc_audio": 0.6, "acc_video": 0.5, "acc_avg": 0.55}}
                   for s in seeds] for name in variants}

  monkeypatch.setattr(sweep, "run_variants", fake_run_variants)
  root = str(tmp_path / "precision")
  precision.main(["--seeds=3", f"--root={root}", "--data_dir=unused"])
  record = _load(os.path.join(root, "precision.json"))
  comparison = record["comparison"]
  assert comparison["differences"] == pytest.approx([1.0, -1.0, 0.0])
  assert comparison["mean_difference"] == pytest.approx(0.0, abs=1e-9)
  assert comparison["verdict"] == "within seed noise"
  text = open(os.path.join(root, "precision.md")).read()
  assert "| bfloat16 |" in text and "within seed noise" in text


def test_precision_verdict_outside_noise():
  from benchmarks import precision
  runs = {name: [{"seed": s, "test_best": {"acc_fused": a}} for s, a in enumerate(accs)]
          for name, accs in {"float32": [0.80, 0.81, 0.79],
                             "bfloat16": [0.70, 0.71, 0.70]}.items()}
  assert precision.compare(runs)["verdict"] == "outside seed noise"
  assert math.isnan(precision.compare({k: v[:1] for k, v in runs.items()})["std_difference"])
