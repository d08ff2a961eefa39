"""iib_jax.data / preprocess / sharding: prepared TFRecords → numpy batches → device arrays.

The dataset is a tiny synthetic one (3 classes, 8 clips each, 1 s, 32x32 at 4 fps, 2 clips per
shard). Expected values come from reading the shards with tensorflow-datasets and numpy/PIL,
and from segment positions worked out by hand.
"""
import io
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from data_prep.synthetic import ensure_synthetic
from iib_jax import data, preprocess, schema, sharding

MEAN = np.array(schema.IMAGENET_MEAN, np.float32)
STD = np.array(schema.IMAGENET_STD, np.float32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return ensure_synthetic(str(tmp_path_factory.mktemp("synthetic")), num_classes=3,
                          clips_per_class=8, duration=1.0, fps=4, size=32, clips_per_shard=2,
                          workers=0)


@pytest.fixture(scope="module")
def stored(data_dir):
  """{split: {clip_id: example}} as tensorflow-datasets decodes them (independent reader)."""
  builder = tfds.builder_from_directory(data_dir)
  return {split: {ex["clip_id"].decode(): ex
                  for ex in tfds.as_numpy(builder.as_dataset(split=split))}
          for split in builder.info.splits}


def collect(batches):
  """Real (unmasked) clip ids of an epoch, in order, and the batches."""
  batches = list(batches)
  ids = [c.decode() for b in batches for c, m in zip(b["clip_id"], b["mask"]) if m]
  return ids, batches


def test_load_info(data_dir, stored):
  info = data.load_info(data_dir)
  assert info["num_classes"] == 3 and len(info["class_names"]) == 3
  assert info["splits"] == {s: len(e) for s, e in stored.items()}
  assert info["splits"] == {"train": 15, "validation": 3, "test": 6}
  assert info["audio"]["preset"] == "iibalance" and info["audio"]["bins"] == 128
  assert info["video"]["fps"] == 4.0 and info["video"]["height"] == 32
  assert [sum(v) for v in info["shard_lengths"].values()] == list(info["splits"].values())


@pytest.mark.parametrize("batch_size", [1, 3, 4])  # 1, a divisor and a non-divisor of 6
def test_evaluation_yields_every_clip_exactly_once(data_dir, stored, batch_size):
  batches = data.make_dataset(data_dir, "test", batch_size=batch_size, train=False,
                              process_index=0, process_count=1)
  ids, got = collect(batches)
  assert sorted(ids) == sorted(stored["test"]) and len(ids) == 6
  assert len(got) == len(batches) == math.ceil(6 / batch_size)
  for b in got:
    assert b["video"].shape == (batch_size, 3, 32, 32, 3) and b["label"].shape == (batch_size,)
    padding = b["mask"] == 0
    assert np.all(b["clip_id"][padding] == b"") and np.all(b["video"][padding] == 0)


def test_batch_contract(data_dir):
  batch = next(iter(data.make_dataset(data_dir, "train", batch_size=4, train=True,
                                      num_frames=2, audio_frames=50, process_index=0,
                                      process_count=1)))
  assert set(batch) == {"video", "audio", "label", "mask", "clip_id"}
  assert batch["video"].shape == (4, 2, 32, 32, 3) and batch["video"].dtype == np.float32
  assert batch["audio"].shape == (4, 50, 128) and batch["audio"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.float32
  assert np.all(batch["mask"] == 1) and isinstance(batch["clip_id"][0], bytes)


def test_modality_keys_are_configurable_and_subsets_skip_decoding(data_dir):
  batch = next(iter(data.make_dataset(data_dir, "validation", batch_size=2, train=False,
                                      modalities={"visual": "video"}, process_index=0,
                                      process_count=1)))
  assert set(batch) == {"visual", "label", "mask", "clip_id"}


def test_training_drops_the_remainder_and_order_depends_on_seed_and_epoch(data_dir):
  def epoch_ids(**kw):
    return collect(data.make_dataset(data_dir, "train", batch_size=4, train=True,
                                     process_index=0, process_count=1, **kw))

  ids, batches = epoch_ids(seed=3, epoch=1)
  assert len(batches) == 15 // 4 and len(ids) == 12 and len(set(ids)) == 12
  again, again_batches = epoch_ids(seed=3, epoch=1)
  assert again == ids
  for a, b in zip(batches, again_batches):
    for key in ("video", "audio", "label"):
      np.testing.assert_array_equal(a[key], b[key])
  assert epoch_ids(seed=3, epoch=2)[0] != ids
  assert epoch_ids(seed=4, epoch=1)[0] != ids
  # Resuming at batch 1 gives the same batches 1, 2, ... (order and augmentation).
  resumed, resumed_batches = epoch_ids(seed=3, epoch=1, start_batch=1)
  assert resumed == ids[4:]
  np.testing.assert_array_equal(resumed_batches[0]["video"], batches[1]["video"])


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_together_yield_the_global_batches_of_one_process(data_dir, hosts, train):
  """'global' host sharding: host h's batch b is the h-th slice of one process's batch b, for
  the ids, the labels and the augmented pixels (the same per-example random draws)."""
  kwargs = dict(batch_size=4, train=train, seed=5, epoch=2) if train else dict(batch_size=4,
                                                                              train=False)
  split = "train" if train else "test"
  single = list(data.make_dataset(data_dir, split, process_index=0, process_count=1, **kwargs))
  parts = [list(data.make_dataset(data_dir, split, process_index=h, process_count=hosts,
                                  **kwargs)) for h in range(hosts)]
  assert all(len(p) == len(single) for p in parts)
  for b, whole in enumerate(single):
    for key in ("clip_id", "label", "video", "audio", "mask"):
      joined = np.concatenate([parts[h][b][key] for h in range(hosts)])
      np.testing.assert_array_equal(joined, whole[key], err_msg=f"{key}, batch {b}")


@pytest.mark.parametrize("host_sharding", ["file", "example", "global"])
def test_hosts_split_an_epoch_without_overlap(data_dir, stored, host_sharding):
  per_host, lengths = [], []
  for host in range(2):
    batches = data.make_dataset(data_dir, "test", batch_size=4, train=False,
                                process_index=host, process_count=2,
                                host_sharding=host_sharding)
    ids, got = collect(batches)
    per_host.append(ids)
    lengths.append(len(got))
    assert all(b["label"].shape == (2,) for b in got)  # the local part of the global batch
  assert lengths[0] == lengths[1] == data.num_batches(
      data_dir, "test", batch_size=4, train=False, process_count=2, host_sharding=host_sharding)
  real = [i for i in per_host[0] + per_host[1] if i]
  assert sorted(real) == sorted(stored["test"])


def test_evaluation_frames_are_segment_centres_resized_and_normalised(data_dir):
  builder = tfds.builder_from_directory(data_dir)
  jpegs = {ex["clip_id"].decode(): ex["video"]["frames"] for ex in tfds.as_numpy(
      builder.as_dataset(split="test", decoders={"video": {"frames": tfds.decode.SkipDecoding()}}))}
  batch = next(iter(data.make_dataset(data_dir, "test", batch_size=6, train=False,
                                      num_frames=2, process_index=0, process_count=1)))
  for i, clip_id in enumerate(batch["clip_id"]):
    frames = jpegs[clip_id.decode()]  # 4 JPEGs: 1 s at 4 fps
    assert len(frames) == 4
    # Segments [0, 2) and [2, 4): centres 1 and 3; PIL decodes, numpy normalises.
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(frames[k]))) for k in (1, 3)])
    expected = (pixels.astype(np.float32) / 255 - MEAN) / STD
    # One grey level of JPEG decoder difference is 1 / 255 / 0.225 = 0.017.
    np.testing.assert_allclose(batch["video"][i], expected, atol=0.018)


def test_audio_is_cropped_padded_and_normalised_with_dataset_statistics(data_dir, stored):
  info = data.load_info(data_dir)
  train_values = np.concatenate([ex["audio"]["spectrogram"].ravel()
                                 for ex in stored["train"].values()])
  assert info["audio"]["mean"] == pytest.approx(train_values.mean(), rel=1e-5)
  assert info["audio"]["std"] == pytest.approx(train_values.std(), rel=1e-4)
  mean, std = info["audio"]["mean"], info["audio"]["std"]
  for pad in ("zeros", "tile"):
    batch = next(iter(data.make_dataset(data_dir, "validation", batch_size=3, train=False,
                                        audio_frames=250, audio_pad=pad, process_index=0,
                                        process_count=1)))
    for i, clip_id in enumerate(batch["clip_id"]):
      spec = stored["validation"][clip_id.decode()]["audio"]["spectrogram"]  # [~101, 128]
      assert 100 < len(spec) < 125
      if pad == "zeros":
        expected = np.concatenate([spec, np.zeros((250 - len(spec), 128), np.float32)])
      else:
        expected = np.concatenate([spec, spec, spec])[:250]
      np.testing.assert_allclose(batch["audio"][i], (expected - mean) / std, rtol=1e-5,
                                 atol=1e-5)
  crop = next(iter(data.make_dataset(data_dir, "validation", batch_size=3, train=False,
                                     audio_frames=40, audio_position="center",
                                     audio_norm="ks", process_index=0, process_count=1)))
  spec = stored["validation"][crop["clip_id"][0].decode()]["audio"]["spectrogram"]
  start = (len(spec) - 40) // 2
  np.testing.assert_allclose(crop["audio"][0], (spec[start:start + 40] + 4.503877) / (2 * 5.141276),
                             rtol=1e-5, atol=1e-5)


def test_segment_indices_by_hand():
  def idx(n, t, train=False, seed=(0, 0)):
    return preprocess.segment_indices(tf.constant(n), t, train, tf.constant(seed)).numpy()

  np.testing.assert_array_equal(idx(24, 3), [4, 12, 20])
  np.testing.assert_array_equal(idx(5, 2), [1, 3])      # segments [0, 2), [2, 5)
  np.testing.assert_array_equal(idx(2, 3), [0, 0, 1])   # fewer frames than segments
  seen = set()
  for s in range(50):
    got = idx(24, 3, True, (s, 7))
    assert all(8 * i <= g < 8 * (i + 1) for i, g in enumerate(got))
    seen.add(tuple(got))
  assert len(seen) > 10


def test_crop_audio_op_by_hand():
  audio = tf.reshape(tf.range(12, dtype=tf.float32), [6, 2])
  seed = tf.constant([0, 0])
  out = preprocess.crop_audio(4)({"audio": audio}, seed)["audio"].numpy()
  np.testing.assert_array_equal(out, [[0, 1], [2, 3], [4, 5], [6, 7]])
  out = preprocess.crop_audio(4, position="center")({"audio": audio}, seed)["audio"].numpy()
  np.testing.assert_array_equal(out, [[2, 3], [4, 5], [6, 7], [8, 9]])
  out = preprocess.crop_audio(8, pad="tile")({"audio": audio}, seed)["audio"].numpy()
  np.testing.assert_array_equal(out[6:], [[0, 1], [2, 3]])
  out = preprocess.crop_audio(8)({"audio": audio}, seed)["audio"].numpy()
  np.testing.assert_array_equal(out[6:], 0)


def test_random_resized_crop_full_box_is_a_resize_and_flip_mirrors():
  frames = tf.constant(np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)), tf.uint8)
  seed = tf.constant([1, 2])
  full = preprocess.random_resized_crop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))(
      {"video": frames}, seed)["video"].numpy()
  np.testing.assert_allclose(full, frames.numpy(), atol=1e-3)
  flipped = preprocess.flip_left_right()({"video": frames}, seed)["video"].numpy()
  for t in range(2):
    assert (np.array_equal(flipped[t], frames.numpy()[t, :, ::-1])
            or np.array_equal(flipped[t], frames.numpy()[t]))
  seen = set()
  for s in range(8):   # one draw for the whole clip: every frame flipped, or none
    clip = preprocess.flip_left_right(per_frame=False)({"video": frames}, seed + s)["video"].numpy()
    if np.array_equal(clip, frames.numpy()[:, :, ::-1]):
      seen.add("flipped")
    else:
      np.testing.assert_array_equal(clip, frames.numpy())
      seen.add("kept")
  assert seen == {"flipped", "kept"}
  crops = preprocess.random_resized_crop(5)({"video": frames}, seed)["video"]
  assert crops.shape == (2, 5, 5, 3)


def _jpegs(shape, seed=0):
  """T smooth JPEG frames of `shape` [T, H, W] (smooth, so that they compress as video frames)."""
  rng = np.random.default_rng(seed)
  t, h, w = shape
  out = []
  for _ in range(t):
    coarse = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    out.append(tf.io.encode_jpeg(image, quality=90))
  return tf.stack(out)


@pytest.mark.parametrize("size,per_frame", [(16, True), (40, True), (16, False)])
def test_decoding_only_the_crop_box_gives_the_pixels_of_decode_then_crop(size, per_frame):
  # Frames 28 x 36: size 16 shrinks (antialiased), 40 enlarges every box.
  jpegs = _jpegs((3, 28, 36))
  seed = tf.constant([3, 4], tf.int64)
  reference = preprocess.apply(
      [preprocess.decode_frames(28, 36), preprocess.random_resized_crop(size, per_frame=per_frame)],
      {"video": jpegs}, seed)["video"].numpy()
  fused = preprocess.decode_random_resized_crop(size, per_frame=per_frame, height=28, width=36)(
      {"video": jpegs}, seed)["video"].numpy()
  assert fused.shape == (3, size, size, 3) and fused.dtype == np.float32
  np.testing.assert_array_equal(fused, reference)
  # The boxes really are random crops: frames differ from a plain resize of the whole frame.
  whole = preprocess.apply([preprocess.decode_frames(28, 36), preprocess.resize(size)],
                           {"video": jpegs}, seed)["video"].numpy()
  assert not np.allclose(fused, whole, atol=1.0)


def test_decoding_a_window_with_its_margin_gives_the_pixels_of_a_full_decode():
  # Chroma-subsampled JPEG (TensorFlow's default 4:2:0): a window decoded without a margin
  # differs from the full decode in its edge columns; the op's windows must not.
  jpeg = _jpegs((1, 28, 36), seed=3)[0]
  full = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
  rng = np.random.default_rng(0)
  for _ in range(40):
    y, x = rng.integers(0, 27), rng.integers(0, 35)
    h, w = rng.integers(1, 29 - y), rng.integers(1, 37 - x)
    window = preprocess._decode_window(jpeg, tf.constant([y, x, 0]), tf.constant([h, w, -1]))
    np.testing.assert_array_equal(window.numpy(), full[y:y + h, x:x + w])


def test_quantize_frames_rounds_and_saturates():
  x = np.array([-3.0, 0.4, 0.5, 1.5, 254.49, 254.5, 300.0], np.float32).reshape(1, 1, 7, 1)
  out = preprocess.quantize_frames()({"video": tf.constant(x)}, tf.constant([0, 0]))["video"]
  # numpy reference: round half to even (tf.round's rule), then clip to [0, 255].
  np.testing.assert_array_equal(out.numpy(), np.clip(np.round(x), 0, 255).astype(np.uint8))
  assert out.dtype == tf.uint8


@pytest.mark.parametrize("train", [False, True])
def test_uint8_frames_normalised_on_the_device_match_float32_frames(data_dir, train):
  from iib_jax.models.multimodal import normalize_frames
  kwargs = dict(batch_size=4, train=train, num_frames=2, seed=1, process_index=0,
                process_count=1)
  floats = next(iter(data.make_dataset(data_dir, "train", **kwargs)))
  quantized = next(iter(data.make_dataset(data_dir, "train", frames_dtype="uint8", **kwargs)))
  assert quantized["video"].dtype == np.uint8 and floats["video"].dtype == np.float32
  np.testing.assert_array_equal(quantized["clip_id"], floats["clip_id"])
  np.testing.assert_array_equal(quantized["audio"], floats["audio"])
  on_device = np.asarray(normalize_frames(jax.numpy.asarray(quantized["video"])))
  expected = (quantized["video"].astype(np.float32) / 255 - MEAN) / STD   # numpy reference
  np.testing.assert_allclose(on_device, expected, atol=1e-6)
  # Evaluation at the stored size has nothing to round; training rounds interpolated pixels
  # (at most half a grey level: 0.5 / 255 / 0.225 = 0.0088).
  np.testing.assert_allclose(on_device, floats["video"], atol=1e-5 if not train else 0.009)


def test_a_bad_frames_dtype_is_named(data_dir):
  with pytest.raises(ValueError, match="frames_dtype.*'float16'"):
    data.make_dataset(data_dir, "test", batch_size=2, train=False, frames_dtype="float16")


def test_ops_give_the_same_result_eagerly_and_inside_tf_data(data_dir):
  info = data.load_info(data_dir)
  ops = data.default_ops(info, train=True, stored=["audio", "video"], num_frames=2,
                         audio_frames=60, audio_random_crop=True)
  serialized = next(iter(tf.data.TFRecordDataset(info["files"]["train"][0])))
  seed = tf.constant([5, 9], tf.int64)
  eager = preprocess.apply(ops, preprocess.parse(serialized, ["audio", "video"], 128), seed)
  ds = tf.data.Dataset.from_tensors(serialized).map(
      lambda s: preprocess.apply(ops, preprocess.parse(s, ["audio", "video"], 128), seed))
  graph = next(iter(ds))
  for key in ("video", "audio", "label"):
    np.testing.assert_allclose(eager[key].numpy(), graph[key].numpy(), rtol=1e-6)


def test_ops_compose_from_a_string(data_dir):
  ops = preprocess.parse_ops("sample_frames(2)|crop_audio(30, pad='tile')|decode_frames|"
                             "resize(16)|normalize_frames")
  assert [op.op_name for op in ops] == ["sample_frames", "crop_audio", "decode_frames",
                                        "resize", "normalize_frames"]
  batch = next(iter(data.make_dataset(data_dir, "test", batch_size=2, train=False, ops=ops,
                                      process_index=0, process_count=1)))
  assert batch["video"].shape == (2, 2, 16, 16, 3) and batch["audio"].shape == (2, 30, 128)
  with pytest.raises(ValueError, match="unknown preprocessing op 'blur'"):
    preprocess.parse_ops("decode_frames|blur(3)")


def test_prefetch_to_device_places_numeric_keys_only(data_dir):
  mesh = sharding.data_mesh(jax.devices()[:4])
  batch_sharding = sharding.batch_sharding(mesh)
  host = list(data.make_dataset(data_dir, "test", batch_size=4, train=False, audio_frames=20,
                                process_index=0, process_count=1))
  with jax.transfer_guard("disallow"):
    placed = list(sharding.prefetch_to_device(host, batch_sharding, size=2,
                                              with_host_data=True))
  assert len(placed) == len(host)
  for (device, host_only), numpy_batch in zip(placed, host):
    assert set(device) == {"video", "audio", "label", "mask"}
    assert list(host_only) == ["clip_id"]
    for key, value in device.items():
      assert value.sharding == batch_sharding and len(value.addressable_shards) == 4
      np.testing.assert_array_equal(np.asarray(value), numpy_batch[key])


def test_importing_iib_jax_leaves_tensorflow_librosa_av_and_torch_out():
  code = ("import sys, iib_jax, iib_jax.schema, iib_jax.sharding, iib_jax.estimate, "
          "iib_jax.checkpoint, iib_jax.writers, iib_jax.loop; "
          "bad = [m for m in ('tensorflow', 'librosa', 'av', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
