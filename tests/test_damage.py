"""Train-time modality damage (iib_jax/preprocess.py: drop_modalities, noise, occlude; plumbed
into iib_jax/data.py's `damage`).

Ops are checked on synthetic example dicts, eagerly and inside tf.data (many draws at once: one
tf.data map over seeds, no Python loop over examples), and through `make_dataset` on a tiny
prepared synthetic dataset, with M = 3 batch keys. Expected values are worked out by hand or
computed in numpy here: dropped inputs are exactly zero, drop rates lie within 4.5 binomial σ
of p (or of p − Π p / M with keep_one), the occluded square is the one of the documented
formula.
"""
import numpy as np
import pytest
import tensorflow as tf

from data_prep.synthetic import ensure_synthetic
from iib_jax import data, preprocess, schema

MODALITIES = ("video", "audio", "aux")   # M = 3, in pipeline order (not sorted)
MEAN = np.array(schema.IMAGENET_MEAN, np.float64)
STD = np.array(schema.IMAGENET_STD, np.float64)
N = 4000                                  # draws for the frequency checks
SIGMAS = 4.5


def example(rng, dtype=np.float32):
  """One example of M = 3 modalities, no input exactly zero."""
  if dtype == np.uint8:
    video = rng.integers(1, 256, (2, 6, 8, 3)).astype(np.uint8)
  else:
    video = (rng.normal(size=(2, 6, 8, 3)) + 5).astype(np.float32)
  return {"video": tf.constant(video), "audio": tf.constant(rng.normal(size=(5, 4)) + 5, tf.float32),
          "aux": tf.constant(rng.normal(size=(3, 4)) + 5, tf.float32), "label": tf.constant(1)}


def draws(spec, n=N, seed=0, dtype=np.float32, modalities=MODALITIES):
  """The damaged example for per-example seeds [seed, 0..n-1], inside tf.data, as numpy [n, ...]."""
  ops = preprocess.parse_damage(spec, modalities)
  ex = example(np.random.default_rng(0), dtype)
  ds = tf.data.Dataset.range(n).map(lambda i: preprocess.apply_damage(
      ops, ex, tf.stack([tf.constant(seed, tf.int64), i]), modalities))
  batch = next(iter(ds.batch(n)))
  return {k: v.numpy() for k, v in batch.items()}, {k: v.numpy() for k, v in ex.items()}


def within_binomial(count, n, p):
  return abs(count / n - p) <= SIGMAS * np.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------------------------
# drop_modalities


def test_dropped_modality_is_exactly_zero_and_marked_eagerly_and_in_tf_data():
  ex = example(np.random.default_rng(1))
  ops = preprocess.parse_damage("drop_modalities(audio=1.0)", MODALITIES)
  eager = preprocess.apply_damage(ops, ex, tf.constant([3, 4], tf.int64), MODALITIES)
  graph = next(iter(tf.data.Dataset.from_tensors(ex).map(
      lambda e: preprocess.apply_damage(ops, e, tf.constant([3, 4], tf.int64), MODALITIES))))
  for out in (eager, graph):
    audio = out["audio"].numpy()
    assert audio.shape == (5, 4) and audio.dtype == np.float32
    assert np.all(audio == 0) and not np.any(np.signbit(audio))   # +0.0, not −0.0
    np.testing.assert_array_equal(out["present"].numpy(), np.array([1, 0, 1], np.float32))
    assert out["present"].dtype == tf.float32
    np.testing.assert_array_equal(out["video"].numpy(), ex["video"].numpy())
    np.testing.assert_array_equal(out["aux"].numpy(), ex["aux"].numpy())
    assert int(out["label"]) == 1


def test_present_marks_exactly_the_zeroed_modalities():
  got, clean = draws("drop_modalities(0.5)", n=400)
  assert got["present"].shape == (400, 3)
  for i, key in enumerate(MODALITIES):
    x = got[key].reshape(400, -1)
    dropped = got["present"][:, i] == 0
    assert np.all(x[dropped] == 0)
    np.testing.assert_array_equal(x[~dropped], np.broadcast_to(clean[key].reshape(-1),
                                                               x[~dropped].shape))
  assert set(np.unique(got["present"])) == {0.0, 1.0}


@pytest.mark.parametrize("probs", [(0.2, 0.5, 0.9), (0.05, 0.0, 1.0)])
def test_drop_frequency_is_within_a_binomial_tolerance_of_p(probs):
  spec = "drop_modalities(keep_one=False, {})".format(
      ", ".join(f"{k}={p}" for k, p in zip(MODALITIES, probs)))
  dropped = draws(spec)[0]["present"] == 0
  for i, p in enumerate(probs):
    assert within_binomial(dropped[:, i].sum(), N, p), (MODALITIES[i], dropped[:, i].mean(), p)
  # Independent draws: every modality at once as often as Π p.
  assert within_binomial(dropped.all(1).sum(), N, float(np.prod(probs)))


def test_keep_one_never_drops_every_modality_and_spares_one_at_random():
  probs = (0.5, 0.6, 0.7)
  spec = "drop_modalities(video=0.5, audio=0.6, aux=0.7)"
  dropped = draws(spec)[0]["present"] == 0
  assert not dropped.all(1).any()
  # Hand-worked: all three drawn with probability Π p = 0.21; then one of the three (uniformly)
  # is kept, so each is dropped with probability p_m − 0.21 / 3 = p_m − 0.07.
  for i, p in enumerate(probs):
    assert within_binomial(dropped[:, i].sum(), N, p - 0.07), (MODALITIES[i], dropped[:, i].mean())


def test_keep_one_is_moot_when_a_modality_is_never_dropped():
  dropped = draws("drop_modalities(video=0.5, audio=0.5)")[0]["present"] == 0
  assert within_binomial(dropped[:, 0].sum(), N, 0.5) and within_binomial(dropped[:, 1].sum(), N, 0.5)
  assert not dropped[:, 2].any()


def test_a_seed_gives_the_same_draws_twice_and_another_seed_other_draws():
  spec = "drop_modalities(0.5)|noise(audio, max=1.0, p=0.5)|occlude(video, max=0.5, p=0.5)"
  first, _ = draws(spec, n=64, seed=7)
  again, _ = draws(spec, n=64, seed=7)
  other, _ = draws(spec, n=64, seed=8)
  for key in ("present",) + MODALITIES:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["present"], other["present"])
  assert not np.array_equal(first["audio"], other["audio"])
  # A modality's drop draws are keyed by its name: other modalities' settings leave them alone.
  alone, _ = draws("drop_modalities(video=0.5, keep_one=False)", n=64, seed=7)
  both, _ = draws("drop_modalities(video=0.5, aux=0.9, keep_one=False)", n=64, seed=7)
  np.testing.assert_array_equal(alone["present"][:, 0], both["present"][:, 0])


def test_uint8_frames_are_dropped_to_the_grey_the_device_normalises_to_zero():
  got, _ = draws("drop_modalities(video=1.0)", n=2, dtype=np.uint8)
  frames = got["video"]
  assert frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, np.broadcast_to(np.array([124, 116, 104], np.uint8),
                                                        frames.shape))
  normalised = (frames / 255.0 - MEAN) / STD        # numpy reference of the device's normalisation
  assert np.abs(normalised).max() < 0.0082
  from iib_jax.models.multimodal import normalize_frames
  assert np.abs(np.asarray(normalize_frames(frames))).max() < 0.0082


def test_damage_spec_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown modality 'visual'.*'video', 'audio', 'aux'"):
    preprocess.parse_damage("drop_modalities(visual=0.2)", MODALITIES)
  with pytest.raises(ValueError, match="unknown modality 'speech'"):
    preprocess.parse_damage("noise(speech)", MODALITIES)
  with pytest.raises(ValueError, match="unknown damage op 'blur'"):
    preprocess.parse_damage("blur(video)", MODALITIES)
  with pytest.raises(ValueError, match="probability in"):
    preprocess.parse_damage("drop_modalities(audio=1.5)", MODALITIES)
  with pytest.raises(ValueError, match="drop_modalities is given twice"):
    preprocess.parse_damage("drop_modalities(audio=0.1)|drop_modalities(video=0.1)", MODALITIES)
  with pytest.raises(ValueError, match="noise is given twice for modality 'audio'"):
    preprocess.parse_damage("noise(audio)|noise(audio, max=2.0)", MODALITIES)
  with pytest.raises(ValueError, match="min <= max"):
    preprocess.parse_damage("occlude(video, min=0.6, max=0.5)", MODALITIES)
  with pytest.raises(ValueError, match="damage op"):
    preprocess.parse_ops("decode_frames|noise(audio)")
  with pytest.raises(ValueError, match="'audio' must be frames"):
    draws("occlude(audio)", n=1)
  assert preprocess.parse_damage("", MODALITIES) == []
  # Quoted and bare keys are the same op.
  ops = preprocess.parse_damage("noise('audio', max=0.5)|occlude(video)", MODALITIES)
  assert [(op.op_name, op.keys) for op in ops] == [("noise", ("audio",)), ("occlude", ("video",))]


# ---------------------------------------------------------------------------------------------
# noise and occlude


def test_noise_has_the_configured_strength_and_probability():
  got, clean = draws("noise(audio, min=0.5, max=0.5, p=1.0, scale=2.0)", n=200)
  residual = got["audio"] - clean["audio"]
  # std 0.5 · 2 = 1 over 200 · 20 values: the sample std is within a few percent of 1.
  assert abs(residual.std() - 1.0) < 0.05 and abs(residual.mean()) < 0.05
  np.testing.assert_array_equal(got["video"], np.broadcast_to(clean["video"], got["video"].shape))
  assert "present" not in got                       # no drop op, no 'present'
  got, clean = draws("noise(aux, max=2.0, p=0.3)")
  per_example = (got["aux"] - clean["aux"]).reshape(N, -1)
  noised = np.any(per_example != 0, axis=1)
  assert within_binomial(noised.sum(), N, 0.3)
  # Strength uniform in [0, 2]: the per-example std (of 12 values) averages near 1 and stays
  # well under the largest strength.
  stds = per_example[noised].std(1)
  assert abs(stds.mean() - 1.0) < 0.1 and stds.max() < 2.0 * 2


def test_noise_on_uint8_frames_is_in_normalised_units_rounded_and_clipped():
  got, clean = draws("noise(video, min=0.02, max=0.02)", n=50, dtype=np.uint8)
  frames = got["video"].astype(np.float64)
  assert got["video"].dtype == np.uint8
  # In the device's normalised units the noise std is 0.02 (one unit = 255 · std_c grey levels);
  # inputs away from 0 and 255 only get the rounding (std 1 / sqrt(12) grey levels) on top.
  inside = (clean["video"] > 20) & (clean["video"] < 235)
  residual = (frames - clean["video"]) / (255.0 * STD)
  expected = np.sqrt(0.02 ** 2 + (1 / np.sqrt(12) / (255 * STD)) ** 2)
  for c in range(3):
    r = residual[..., c][np.broadcast_to(inside[..., c], residual[..., c].shape)]
    assert abs(r.std() - expected[c]) < 0.1 * expected[c]


def test_occluded_square_by_hand_same_on_every_frame():
  # Frames 6 × 8: side round(0.5 · min(6, 8)) = 3, top in {0..3}, left in {0..5}.
  got, clean = draws("occlude(video, min=0.5, max=0.5, p=1.0)", n=300)
  zero = got["video"] == 0                                                  # [n, T, H, W, 3]
  assert np.array_equal(zero[:, 0], zero[:, 1])                             # same square each frame
  assert np.all(zero.all(-1) == zero.any(-1))                               # every channel
  square = zero[:, 0, :, :, 0]                                              # [n, H, W]
  rows, cols = square.any(2), square.any(1)
  assert np.all(rows.sum(1) == 3) and np.all(cols.sum(1) == 3)
  assert np.all(square.sum((1, 2)) == 9)                                    # one 3 × 3 block
  tops, lefts = rows.argmax(1), cols.argmax(1)
  assert set(tops) == set(range(4)) and set(lefts) == set(range(6))         # every place it fits
  kept = ~zero
  np.testing.assert_array_equal(got["video"][kept], np.broadcast_to(clean["video"],
                                                                    got["video"].shape)[kept])


def test_occlusion_probability_and_side_range():
  got, _ = draws("occlude(video, min=0.0, max=1.0, p=0.4)")
  square = got["video"][:, 0, :, :, 0] == 0
  sides = square.any(2).sum(1)                                              # rows of the square
  # side = round(f · 6), f uniform in [0, 1]: 0 with probability 1/12 (f < 1/12), else 1..6.
  occluded = square.any((1, 2))
  assert within_binomial(occluded.sum(), N, 0.4 * (1 - 1 / 12))
  assert set(sides[occluded]) == {1, 2, 3, 4, 5, 6}
  assert within_binomial((sides == 6).sum(), N, 0.4 / 12)                   # f ≥ 11/12


def test_occlusion_of_uint8_frames_uses_the_grey_of_zero_and_drop_runs_last():
  got, clean = draws("occlude(video, min=0.5, max=0.5)", n=20, dtype=np.uint8)
  changed = np.any(got["video"] != clean["video"], -1)
  assert np.all(got["video"][changed] == np.array([124, 116, 104], np.uint8))
  # Listed first, the drop still runs after the noise: a dropped input stays exactly zero.
  got, _ = draws("drop_modalities(audio=0.5)|noise(audio, min=1.0, max=1.0)", n=200)
  dropped = got["present"][:, 1] == 0
  assert dropped.any() and np.all(got["audio"][dropped] == 0)
  assert np.all(got["audio"][~dropped].reshape((~dropped).sum(), -1).std(1) > 0.3)


# ---------------------------------------------------------------------------------------------
# Through make_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return ensure_synthetic(str(tmp_path_factory.mktemp("synthetic")), num_classes=3,
                          clips_per_class=8, duration=1.0, fps=4, size=32, clips_per_shard=2,
                          workers=0)


KEYS = {"video": "video", "audio": "audio", "aux": "audio"}   # M = 3: two keys read the audio
SPEC = "drop_modalities(video=0.5, audio=0.5, aux=0.5)|noise(aux, max=1.0, p=0.5)"


def epoch(data_dir, train=True, damage="", split="train", **kwargs):
  batches = data.make_dataset(data_dir, split, batch_size=4, train=train, num_frames=2,
                              audio_frames=20, modalities=KEYS, damage=damage, seed=3, epoch=1,
                              process_index=0, process_count=1, **kwargs)
  return list(batches)


def test_training_batches_are_damaged_and_marked_with_m_3(data_dir):
  clean, damaged = epoch(data_dir), epoch(data_dir, damage=SPEC)
  assert len(damaged) == len(clean) == 3
  for c, d in zip(clean, damaged):
    np.testing.assert_array_equal(c["clip_id"], d["clip_id"])   # the order is unchanged
    assert d["present"].shape == (4, 3) and d["present"].dtype == np.float32
    assert "present" not in c
    for i, key in enumerate(KEYS):
      dropped = d["present"][:, i] == 0
      assert np.all(d[key][dropped] == 0)
      if key != "aux":   # the other ops' draws (crops, flips) are those of the clean epoch
        np.testing.assert_array_equal(d[key][~dropped], c[key][~dropped])
  present = np.concatenate([d["present"] for d in damaged])
  assert (present == 0).any() and (present == 1).any() and np.all(present.sum(1) >= 1)
  # Same seed, same damage (other seeds: test_a_seed_gives_the_same_draws_twice_...).
  again = epoch(data_dir, damage=SPEC)
  for a, d in zip(again, damaged):
    for key in ("present", "video", "audio", "aux"):
      np.testing.assert_array_equal(a[key], d[key])
  # A resumed epoch has the damage of the uninterrupted one.
  resumed = epoch(data_dir, damage=SPEC, start_batch=1)
  np.testing.assert_array_equal(resumed[0]["present"], damaged[1]["present"])
  np.testing.assert_array_equal(resumed[0]["aux"], damaged[1]["aux"])


def test_evaluation_is_never_damaged(data_dir):
  spec = "drop_modalities(1.0, keep_one=False)|noise(audio, min=1.0, max=1.0)|occlude(video)"
  for split in ("test", "train"):
    clean = epoch(data_dir, train=False, split=split)
    damaged = epoch(data_dir, train=False, split=split, damage=spec)
    assert len(clean) == len(damaged)
    for c, d in zip(clean, damaged):
      assert set(d) == set(c) and "present" not in d
      for key in c:
        np.testing.assert_array_equal(c[key], d[key])
  with pytest.raises(ValueError, match="unknown modality 'visual'"):   # still checked
    epoch(data_dir, train=False, split="test", damage="drop_modalities(visual=0.5)")


def test_frames_dtype_uint8_pipeline_drops_to_the_zero_grey(data_dir):
  batches = epoch(data_dir, damage="drop_modalities(video=0.5)", frames_dtype="uint8")
  frames = np.concatenate([b["video"] for b in batches])
  present = np.concatenate([b["present"] for b in batches])
  assert frames.dtype == np.uint8
  dropped = present[:, 0] == 0
  assert dropped.any() and (~dropped).any()
  np.testing.assert_array_equal(frames[dropped], np.broadcast_to(
      np.array([124, 116, 104], np.uint8), frames[dropped].shape))
  assert np.all(present[:, 1:] == 1)


# ---------------------------------------------------------------------------------------------
# The experiments' key: config.data.train_damage, read by experiments.build.Data.


def smoke_config(data_dir, damage=""):
  from experiments.configs import common
  config = common.apply_preset(common.base_config(), "smoke")
  config.data.name = "synthetic"
  config.data.dir = data_dir
  config.data.train_damage = damage
  return config


def test_config_train_damage_reaches_the_training_batches_and_never_evaluation(data_dir):
  from experiments import build
  from experiments.configs import common
  assert common.base_config().data.train_damage == ""
  devices = build.Devices()
  config = smoke_config(data_dir, "drop_modalities(video=0.5)|noise(audio, max=1.0, p=0.5)")
  common.validate(config)
  damaged = build.Data(config, data_dir, devices)
  clean = build.Data(smoke_config(data_dir), data_dir, devices)
  batches = list(damaged.host_batches("train", train=True, seed=0, epoch=0))
  present = np.concatenate([b["present"] for b in batches])            # [N, M] in config order
  assert present.shape[1] == 2 and config.modalities == ("audio", "video")
  assert (present[:, 1] == 0).any() and (present[:, 1] == 1).any() and np.all(present[:, 0] == 1)
  video = np.concatenate([b["video"] for b in batches])
  assert not video[present[:, 1] == 0].any()                           # removed: exactly zero
  assert all("present" not in b for b in clean.host_batches("train", train=True, seed=0, epoch=0))
  for split in ("validation", "test"):
    for d, c in zip(damaged.host_batches(split, train=False), clean.host_batches(split, train=False)):
      assert "present" not in d
      for key in ("audio", "video", "label", "mask"):
        np.testing.assert_array_equal(d[key], c[key])


def test_a_bad_train_damage_stops_before_any_compute_naming_the_key(data_dir):
  from experiments import build
  from experiments.configs import common
  config = smoke_config(data_dir, "drop_modalities(visual=0.5)")
  for check in (common.validate, lambda c: build.Data(c, data_dir, build.Devices())):
    with pytest.raises(ValueError, match=r"invalid config: data\.train_damage="
                                         r"'drop_modalities\(visual=0\.5\)'.*unknown modality"):
      check(config)
  config.data.train_damage = "blur(video)"
  with pytest.raises(ValueError, match=r"data\.train_damage=.*unknown damage op 'blur'"):
    common.validate(config)


# ---------------------------------------------------------------------------------------------
# What a method's own terms make of `present` (iib_jax/methods/base.modality_mask).


def test_gblending_unimodal_branches_leave_out_removed_examples_the_fused_branch_keeps_them():
  import jax.numpy as jnp
  from iib_jax import methods
  rng = np.random.default_rng(0)
  spec = methods.MethodSpec(("audio", "video", "aux"), 4, 6, 10, 2)
  method = methods.get_method("gblending", {}, spec)
  logits = rng.normal(size=(3, 6, 4)).astype(np.float32)
  fused = rng.normal(size=(6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  present = np.ones((6, 3), np.float32)
  present[[0, 4], 1] = 0.0
  batch = {"label": jnp.asarray(labels), "present": jnp.asarray(present)}
  _, aux = method.loss({"logits": logits, "fused_logits": fused}, batch, method.init_state(),
                       jnp.int32(0))

  def ce(z, y):   # numpy reference
    z = z - z.max(-1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(y)), y]

  want = [ce(logits[m][present[:, m] > 0], labels[present[:, m] > 0]).mean() for m in range(3)]
  want.append(ce(fused, labels).mean())
  np.testing.assert_allclose(aux["metrics"]["ce_branch"], want, rtol=1e-5)
