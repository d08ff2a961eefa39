"""Encoders: shapes, dtypes, torchvision parameter counts, frame folding, numpy references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax.models.audio_cnn import AudioCNN1D
from iib_jax.models.encoders import ENCODER_INPUT, ENCODERS, make_encoder
from iib_jax.models.mobilenet import MobileNetV2
from iib_jax.models.recurrent import RecurrentAudioEncoder
from iib_jax.models.resnet import ResNet, SpectrogramResNet, VideoResNet

BATCH = 2
INPUT_SHAPES = {"video": (BATCH, 2, 32, 32, 3), "audio": (BATCH, 40, 16), "vector": (BATCH, 32)}
TINY_FEATURES = {"resnet18": 64, "resnet18_spec": 64, "audio_cnn": 64, "mobilenet_v2": 64,
                 "gru": 16, "lstm": 16, "mlp": 8}


def _input(name, seed=0):
  shape = INPUT_SHAPES[ENCODER_INPUT[name]]
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x, **kwargs):
  """Variables of `model` for input `x`, initialised under jit.

  The key is an RBG key: its initialisers compile several times faster on CPU than threefry's,
  and nothing here depends on the particular random stream.
  """
  init = jax.jit(lambda key, x: model.init(key, x, train=False, **kwargs))
  return init(jax.random.key(0, impl="rbg"), x)


def _num_params(model, shape):
  """Parameter count from shapes only (no compute, so full-size models cost nothing)."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


MICRO_FEATURES = {"resnet18": 8, "resnet18_spec": 8, "audio_cnn": 8, "mobilenet_v2": 32,
                  "gru": 16, "lstm": 16, "mlp": 8}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_micro_encoder_is_the_same_kind_with_fewer_parameters(name):
  """The smoke preset's size: the encoder's input and pooled output, fewer layers than tiny."""
  shape = INPUT_SHAPES[ENCODER_INPUT[name]]
  micro, tiny = make_encoder(name, size="micro"), make_encoder(name, size="tiny")
  assert type(micro) is type(tiny)
  out = jax.eval_shape(lambda: micro.apply(
      micro.init(jax.random.key(0), jnp.zeros(shape), train=False), jnp.zeros(shape),
      train=False))
  assert out.shape == (BATCH, MICRO_FEATURES[name])
  assert _num_params(micro, shape) <= _num_params(tiny, shape)


def test_registry_lists_every_encoder_with_its_input_kind():
  assert set(ENCODERS) == set(ENCODER_INPUT) == set(TINY_FEATURES)
  assert set(ENCODER_INPUT.values()) == {"video", "audio", "vector"}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_tiny_encoder_gives_finite_pooled_features_in_float32_and_bfloat16(name):
  x = _input(name)
  variables = _init(make_encoder(name, size="tiny"), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

  @jax.jit   # one compile: a training and an evaluation pass in each compute dtype
  def run(variables, x):
    outputs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
      model = make_encoder(name, size="tiny", dtype=dtype)
      train_feats, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      eval_feats = model.apply({**variables, **updates}, x, train=False)
      outputs[jnp.dtype(dtype).name] = (updates, train_feats, eval_feats)
    return outputs

  for dtype, (updates, train_feats, eval_feats) in run(variables, x).items():
    for leaf in jax.tree.leaves(updates):        # running statistics stay float32
      assert leaf.dtype == jnp.float32, dtype
    if "batch_stats" in variables:
      # The training pass moved every running statistic away from its initial value.
      moved = jax.tree.map(lambda new, old: bool(jnp.any(new != old)), updates["batch_stats"],
                           variables["batch_stats"])
      assert all(jax.tree.leaves(moved)), dtype
    for feats in (train_feats, eval_feats):
      assert feats.shape == (BATCH, TINY_FEATURES[name]), dtype
      assert np.isfinite(np.asarray(feats, np.float32)).all(), dtype


def test_make_encoder_passes_module_name_and_field_overrides():
  model = make_encoder("audio_cnn", size="tiny", name="encoder", width=4)
  assert model.name == "encoder" and model.width == 4 and model.blocks_per_stage == 1


def test_unknown_encoder_name_raises_with_the_name_and_accepted_names():
  with pytest.raises(ValueError, match="resnet99") as info:
    make_encoder("resnet99")
  assert "audio_cnn" in str(info.value) and "mobilenet_v2" in str(info.value)
  with pytest.raises(ValueError, match="huge"):
    make_encoder("gru", size="huge")


def test_unknown_recurrent_cell_raises():
  with pytest.raises(ValueError, match="rnn_tanh"):
    jax.eval_shape(lambda: RecurrentAudioEncoder(cell="rnn_tanh", hidden=4, num_layers=1).init(
        jax.random.key(0), jnp.zeros((1, 3, 2)), train=False))


# Torchvision counts without the classifier: resnet18 11,689,512 - fc 513,000;
# mobilenet_v2 3,504,872 - classifier 1,281,000. A 1-channel stem has 7·7·(3 - 1)·64 fewer weights.
@pytest.mark.parametrize("model, shape, expected", [
    (ResNet(), (1, 224, 224, 3), 11_176_512),
    (VideoResNet(), (1, 3, 224, 224, 3), 11_176_512),
    (SpectrogramResNet(), (1, 257, 188), 11_170_240),
    (MobileNetV2(), (1, 224, 224, 3), 2_223_872),
    (make_encoder("mobilenet_v2"), (1, 3, 224, 224, 3), 2_223_872),
], ids=["resnet18", "video_resnet18", "resnet18_spec", "mobilenet_v2", "video_mobilenet_v2"])
def test_full_size_parameter_counts_match_torchvision(model, shape, expected):
  assert _num_params(model, shape) == expected


def test_full_size_audio_encoder_parameter_counts():
  # Not torchvision models: the counts are worked out by hand for 128 mel bins.
  w = 64
  widths = [w, w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w]     # stem + 2 convs per stage
  conv = 7 * 128 * w + sum(3 * a * b for a, b in zip(widths[:-1], widths[1:]))
  bn = 2 * sum(widths)
  counts = {"audio_cnn": _num_params(AudioCNN1D(), (1, 1024, 128))}
  assert counts["audio_cnn"] == conv + bn
  h = 256
  def gru_direction(inputs):   # flax GRUCell: biased input kernels, one recurrent bias (on n)
    return 3 * (inputs * h + h) + 3 * h * h + h
  def lstm_direction(inputs):  # flax OptimizedLSTMCell: one bias per gate
    return 4 * (inputs * h + h) + 4 * h * h
  counts["gru"] = _num_params(make_encoder("gru"), (1, 100, 128))
  counts["lstm"] = _num_params(make_encoder("lstm"), (1, 100, 128))
  assert counts["gru"] == 2 * (gru_direction(128) + gru_direction(2 * h))
  assert counts["lstm"] == 2 * (lstm_direction(128) + lstm_direction(2 * h))
  print("full-size parameter counts (128 mel bins):", counts)


def _intermediate_shapes(model, shape):
  """Output shape of every submodule's __call__ (shapes only, no compute)."""
  x = jnp.zeros(shape)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  _, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                            mutable=["intermediates"]), variables)
  return state["intermediates"]


def test_feature_map_sizes_follow_torchvision():
  inter = _intermediate_shapes(MobileNetV2(), (1, 224, 224, 3))
  assert inter["stem"]["__call__"][0].shape == (1, 112, 112, 32)
  assert inter["head"]["__call__"][0].shape == (1, 7, 7, 1280)
  # ResNet-18: 224 -> 112 (conv) -> 56 (pool) -> 56, 28, 14, 7.
  inter = _intermediate_shapes(ResNet(), (1, 224, 224, 3))
  assert inter["conv_init"]["__call__"][0].shape == (1, 112, 112, 64)
  for stage, size in zip(range(1, 5), (56, 28, 14, 7)):
    width = 64 * 2**(stage - 1)
    assert inter[f"stage{stage}_block2"]["__call__"][0].shape == (1, size, size, width)


def ref_conv2d(x, kernel, stride, pad):
  """Cross-correlation with symmetric zero padding, as torch.nn.Conv2d.

  Args:
    x: [H, W, C].
    kernel: [kh, kw, C, O].
    stride: both spatial strides.
    pad: zeros added on every side.

  Returns:
    [H', W', O].
  """
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[0] - kh) // stride + 1
  out_w = (x.shape[1] - kw) // stride + 1
  out = np.zeros((out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[i, j] = np.einsum("hwc,hwco->o", patch, kernel)
  return out


def test_resnet_stem_pads_symmetrically_like_torchvision():
  # On an even input "SAME" would pad (2, 3); torchvision pads (3, 3), which shifts every output.
  model = ResNet(stage_sizes=(1, 1, 1, 1), width=8)
  x = np.random.default_rng(1).normal(size=(1, 10, 10, 3)).astype(np.float32)
  variables = _init(model, x)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                              mutable=["intermediates"]))(variables, x)
  got = np.asarray(state["intermediates"]["conv_init"]["__call__"][0][0])
  kernel = np.asarray(variables["params"]["conv_init"]["kernel"], np.float64)
  np.testing.assert_allclose(got, ref_conv2d(x[0].astype(np.float64), kernel, 2, 3),
                             rtol=1e-5, atol=1e-5)


def test_video_resnet_equals_mean_of_per_frame_resnet_features():
  video_model = VideoResNet(stage_sizes=(1, 1, 1, 1), width=8)
  frame_model = ResNet(stage_sizes=(1, 1, 1, 1), width=8)
  video = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 16, 16, 3)), jnp.float32)
  variables = _init(video_model, video)

  @jax.jit
  def run(variables, video):
    # One training pass gives non-trivial running statistics for the evaluation-mode comparison.
    _, updates = video_model.apply(variables, video, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}
    frame_variables = {col: tree["frame_encoder"] for col, tree in variables.items()}
    per_frame = [frame_model.apply(frame_variables, video[:, t], train=False)
                 for t in range(video.shape[1])]
    return video_model.apply(variables, video, train=False), per_frame

  got, per_frame = run(variables, video)
  np.testing.assert_allclose(got, np.mean(per_frame, axis=0), rtol=1e-5, atol=1e-6)


def ref_audio_cnn(x, params, stats, blocks_per_stage, eps=1e-5):
  """AudioCNN1D in evaluation mode, in float64 numpy. x [T, F]."""
  def conv_bn_relu(h, name):
    kernel = np.asarray(params[f"{name}_conv"]["kernel"], np.float64)     # [k, C_in, C_out]
    k = kernel.shape[0]
    padded = np.pad(h, ((k // 2, k // 2), (0, 0)))
    y = sum(padded[i:i + h.shape[0]] @ kernel[i] for i in range(k))
    bn, st = params[f"{name}_bn"], stats[f"{name}_bn"]
    y = (y - st["mean"]) / np.sqrt(np.asarray(st["var"], np.float64) + eps)
    return np.maximum(y * bn["scale"] + bn["bias"], 0.0)
  h = conv_bn_relu(np.asarray(x, np.float64), "stem")
  for stage in range(4):
    if stage > 0:                          # non-overlapping max-pool; an odd last frame is dropped
      n = h.shape[0] // 2
      h = h[:2 * n].reshape(n, 2, -1).max(axis=1)
    for block in range(blocks_per_stage):
      h = conv_bn_relu(h, f"stage{stage + 1}_block{block + 1}")
  return h.mean(axis=0)


def test_audio_cnn_matches_numpy_reference():
  model = AudioCNN1D(width=4, blocks_per_stage=2)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 42, 5)).astype(np.float32)     # 42 -> 21 -> 10 -> 5 frames
  variables = _init(model, x)
  # Random running statistics and BN affine parameters, so every term of the reference matters.
  uniform = lambda a, low: jnp.asarray(rng.uniform(low, 1.5, a.shape), jnp.float32)
  params = {name: jax.tree.map(lambda a: uniform(a, -0.5), p) if name.endswith("_bn") else p
            for name, p in variables["params"].items()}
  stats = jax.tree.map(lambda a: uniform(a, 0.1), variables["batch_stats"])
  variables = {"params": params, "batch_stats": stats}
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  params = jax.tree.map(np.asarray, variables["params"])
  stats = jax.tree.map(np.asarray, variables["batch_stats"])
  want = np.stack([ref_audio_cnn(xi, params, stats, 2) for xi in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_recurrent_encoder_unidirectional_with_projection():
  model = RecurrentAudioEncoder(cell="lstm", hidden=4, num_layers=2, bidirectional=False,
                                input_proj=6)
  x = jnp.ones((2, 5, 3))
  variables = _init(model, x)
  assert set(variables["params"]) == {"input_proj", "layer1", "layer2"}
  assert model.apply(variables, x, train=False).shape == (2, 4)


def ref_gru_direction(x, p, reverse):
  """One GRU direction in float64 numpy with flax's GRUCell equations. x [T, F] -> [T, H]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  h = np.zeros(p["hr"]["kernel"].shape[0])
  outputs = []
  for x_t in (x[::-1] if reverse else x):
    r = sigmoid(x_t @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
    z = sigmoid(x_t @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
    n = np.tanh(x_t @ p["in"]["kernel"] + p["in"]["bias"]
                + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
    h = (1 - z) * n + z * h
    outputs.append(h)
  outputs = np.stack(outputs)
  return outputs[::-1] if reverse else outputs     # output t belongs to input frame t


def test_bidirectional_gru_matches_numpy_reference():
  model = RecurrentAudioEncoder(cell="gru", hidden=3, num_layers=2)
  x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype(np.float32)
  variables = _init(model, x)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  want = []
  for h in x.astype(np.float64):
    for layer in ("layer1", "layer2"):           # layer 2 reads both directions of layer 1
      p = variables["params"][layer]
      h = np.concatenate([ref_gru_direction(h, p["forward_rnn"]["cell"], reverse=False),
                          ref_gru_direction(h, p["backward_rnn"]["cell"], reverse=True)], -1)
    want.append(h.mean(axis=0))
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


def test_uint8_frames_are_normalised_on_the_device_like_the_host_pipeline():
  from iib_jax.models import build_model
  model = build_model(("audio", "video"), {"audio": "audio_cnn", "video": "resnet18"}, 3,
                      feature_dim=16, encoder_size="tiny")
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 2, 16, 16, 3)).astype(np.uint8)
  audio = rng.normal(size=(2, 32, 16)).astype(np.float32)
  # numpy reference of the host's normalize_frames: (x / 255 - mean) / std.
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  normalised = ((frames / 255.0 - mean) / std).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), {"audio": audio, "video": normalised}, train=False)
  on_device = model.apply(variables, {"audio": audio, "video": jnp.asarray(frames)}, train=False)
  on_host = model.apply(variables, {"audio": audio, "video": normalised}, train=False)
  np.testing.assert_allclose(on_device["fused_logits"], on_host["fused_logits"], atol=1e-5)
  np.testing.assert_allclose(on_device["features"], on_host["features"], atol=1e-5)
  assert not np.allclose(  # the raw grey levels would give other features
      model.apply(variables, {"audio": audio, "video": frames.astype(np.float32)},
                  train=False)["features"], on_host["features"], atol=1e-3)


def test_present_makes_a_removed_modality_exactly_the_zero_input_for_uint8_frames_too():
  # Train-time damage (docs/DATA.md) marks a removed modality 0 in `present` [B, M]; the pipeline
  # can only give uint8 frames the grey nearest the ImageNet mean (124, 116, 104), 0.008 from the
  # normalised 0.0. The model multiplies each normalised input by its column of `present`.
  from iib_jax.models import build_model
  from tests import helpers
  model = build_model(helpers.MODALITIES, helpers.ENCODERS, 3, feature_dim=16,
                      encoder_size="tiny")
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (4, 2, 16, 16, 3)).astype(np.uint8)
  frames[1] = np.array([124, 116, 104], np.uint8)            # video removed from example 1
  audio = rng.normal(size=(4, 40, 16)).astype(np.float32)
  aux = rng.normal(size=(4, 40, 16)).astype(np.float32)
  aux[2] = 0.0                                               # aux removed from example 2
  present = np.ones((4, 3), np.float32)
  present[1, 1] = present[2, 2] = 0.0                        # columns: audio, video, aux
  # numpy reference: the normalised frames with example 1 exactly zero, no `present`.
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  normalised = ((frames / 255.0 - mean) / std).astype(np.float32)
  normalised[1] = 0.0
  reference = {"audio": audio, "video": normalised, "aux": aux}
  variables = model.init(jax.random.PRNGKey(0), reference, train=False)
  damaged = {"audio": audio, "video": jnp.asarray(frames), "aux": aux, "present": present}
  got = model.apply(variables, damaged, train=False)
  want = model.apply(variables, reference, train=False)
  np.testing.assert_allclose(got["features"], want["features"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-5)
  # Without `present`, the grey of example 1 is not the zero input.
  grey = model.apply(variables, {k: v for k, v in damaged.items() if k != "present"},
                     train=False)
  assert np.abs(np.asarray(grey["features"][1, 1]) - np.asarray(want["features"][1, 1])).max() > 0
  np.testing.assert_allclose(grey["features"][1, 0], want["features"][1, 0], rtol=0, atol=1e-5)
