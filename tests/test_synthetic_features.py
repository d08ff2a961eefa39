"""The controlled-imbalance feature benchmark: determinism, the generative model's pieces
(blind pairs, noise levels, balance), the Bayes oracle against a direct computation, the files."""
import json
import os

import numpy as np
import pytest

from data_prep import synthetic_features as sf
from iib_jax import arrays

SMALL = dict(num_train=600, num_validation=100, num_test=400)


def test_same_arguments_give_the_same_arrays_and_a_new_seed_others():
  a, meta_a = sf.make_splits(dial=0.5, seed=3, **SMALL)
  b, meta_b = sf.make_splits(dial=0.5, seed=3, **SMALL)
  c, _ = sf.make_splits(dial=0.5, seed=4, **SMALL)
  assert meta_a == meta_b
  for split in sf.SPLITS:
    for key in ("audio", "video", "label", "clip_id"):
      np.testing.assert_array_equal(a[split][key], b[split][key])
  assert not np.array_equal(a["train"]["audio"], c["train"]["audio"])


def test_splits_shapes_dtypes_and_balanced_classes():
  splits, meta = sf.make_splits(dial=1.0, num_classes=10, dim=32, **SMALL)
  for split, n in (("train", 600), ("validation", 100), ("test", 400)):
    s = splits[split]
    assert s["audio"].shape == s["video"].shape == (n, 32) and s["audio"].dtype == np.float32
    assert s["label"].dtype == np.int32
    np.testing.assert_array_equal(np.bincount(s["label"], minlength=10), np.full(10, n // 10))
    assert len(set(s["clip_id"].tolist())) == n
  assert meta["dominant"] == "audio" and meta["modalities"] == ["audio", "video"]
  # A test example is at most 0.25 points: 400 examples.
  assert 100 / SMALL["num_test"] <= 0.25


def test_noise_follows_the_dial_and_matches_the_samples():
  # σ_dominant = 0.35; σ_weak = 0.35 · (1 + 0.5 d): 0.35 at d = 0, 0.4375 at 0.5, 0.525 at 1.
  for dial, weak in ((0.0, 0.35), (0.5, 0.4375), (1.0, 0.525)):
    sigma = sf.noise_levels(("a", "v", "x"), dial, 0.35, 0.5)
    assert sigma == pytest.approx({"a": 0.35, "v": weak, "x": weak})
  # With one cluster per class, x − (the class mean) is σ ε: its std estimates σ.
  splits, meta = sf.make_splits(dial=1.0, clusters_per_class=1, num_train=5000, num_validation=0,
                                num_test=0)
  s = splits["train"]
  for m, expected in (("audio", 0.35), ("video", 0.525)):
    means = np.stack([s[m][s["label"] == c].mean(0) for c in range(10)])
    residual = s[m] - means[s["label"]]
    assert residual.std() == pytest.approx(expected, rel=0.02), m
    assert meta["sigma"][m] == pytest.approx(expected)


def test_blind_pairs_are_indistinguishable_in_their_modality_only():
  assert sf.blind_pairs_of(3, 10, 2) == [[(0, 1), (2, 3)], [(4, 5), (6, 7)], [(8, 9), (0, 1)]]
  splits, meta = sf.make_splits(dial=0.0, modalities=("a", "b", "c"), clusters_per_class=1,
                                num_train=6000, num_validation=0, num_test=0)
  s = splits["train"]
  assert meta["blind_pairs"]["b"] == [[4, 5], [6, 7]]

  def gap(m, c1, c2):            # distance between two classes' empirical means in modality m
    return np.linalg.norm(s[m][s["label"] == c1].mean(0) - s[m][s["label"] == c2].mean(0))

  # Unit-norm orthogonal centres are √2 apart; a shared centre leaves only the sampling error
  # (σ √(2 D / 600) ≈ 0.11 for 600 examples per class).
  assert gap("a", 0, 1) < 0.2 and gap("a", 2, 3) < 0.2 and gap("a", 4, 5) > 1.2
  assert gap("b", 4, 5) < 0.2 and gap("b", 0, 1) > 1.2
  assert gap("c", 8, 9) < 0.2 and gap("c", 0, 1) < 0.2 and gap("c", 2, 3) > 1.2
  # Distinct classes' centres are orthonormal when C · K ≤ D.
  mu = sf.centres(10, 3, 32, 2, 2, seed=0)
  flat = mu[0].reshape(20, 32)
  distinct = [i for i in range(20) if i // 2 not in (1, 3)]      # classes 1, 3 copy 0, 2
  gram = flat[distinct] @ flat[distinct].T
  np.testing.assert_allclose(gram, np.eye(len(distinct)), atol=1e-12)


def test_adding_a_modality_leaves_the_others_unchanged():
  two, _ = sf.make_splits(dial=0.7, modalities=("a", "b"), **SMALL)
  three, _ = sf.make_splits(dial=0.7, modalities=("a", "b", "c"), **SMALL)
  for key in ("a", "b", "label"):
    np.testing.assert_array_equal(two["test"][key], three["test"][key])


def ref_log_posterior(x, mu, sigma):
  """log p(y | x) by the textbook formula: log Σ_k N(x; μ_ck, σ² I) / K, normalised over c."""
  x = np.asarray(x, np.float64)
  d = x.shape[1]
  dens = np.exp(-((x[:, None, None, :] - mu[None]) ** 2).sum(-1) / (2 * sigma ** 2))
  dens = dens / (2 * np.pi * sigma ** 2) ** (d / 2)
  lik = dens.mean(-1)                                        # [N, C]
  return np.log(lik / lik.sum(-1, keepdims=True))


def test_log_likelihoods_match_the_textbook_posterior():
  splits, meta = sf.make_splits(dial=1.0, num_classes=4, dim=6, blind_pairs=1, num_train=50,
                                num_validation=0, num_test=0, noise=0.8)
  mu = sf.centres(4, 2, 6, 2, 1, seed=0)
  for m, name in enumerate(("audio", "video")):
    ll = sf.log_likelihoods(splits["train"][name], mu[m], meta["sigma"][name])
    post = ll - np.log(np.exp(ll - ll.max(1, keepdims=True)).sum(1, keepdims=True)) - ll.max(
        1, keepdims=True)
    np.testing.assert_allclose(post, ref_log_posterior(splits["train"][name], mu[m],
                                                       meta["sigma"][name]), atol=1e-9)


@pytest.mark.parametrize("modalities", [("audio", "video"), ("a", "b", "c")])
def test_oracle_fusion_beats_every_single_modality_at_every_dial(modalities):
  previous = None
  for dial in (0.0, 0.25, 0.5, 1.0):
    splits, meta = sf.make_splits(dial=dial, modalities=modalities, num_train=4000,
                                  num_validation=0, num_test=2000)
    test = sf.oracle(splits["test"], meta)
    best = max(test["acc"].values())
    assert test["acc_fused"] > best + 0.1, (dial, test)
    # Blind pairs cap every modality at 80 %: 4 of 10 classes are read at best as a coin flip.
    assert best < 0.8 + 0.02
    beta = sf.oracle(splits["train"], meta)["beta"][modalities[0]]
    if previous is not None:
      assert beta > previous                   # the dominant's β grows with the dial
    previous = beta
    if dial == 0.0:
      assert abs(beta - 1 / len(modalities)) < 0.05
    if dial == 1.0:
      assert beta > 0.9


def test_invalid_arguments_name_the_problem():
  with pytest.raises(ValueError, match=r"dial must lie in \[0, 1\]"):
    sf.make_splits(dial=1.5)
  with pytest.raises(ValueError, match="two or more distinct"):
    sf.make_splits(modalities=("a", "a"))
  with pytest.raises(ValueError, match="cannot be a modality name"):
    sf.make_splits(modalities=("audio", "mask"))
  with pytest.raises(ValueError, match=r"classes \(0, 1\) are confused by every modality"):
    sf.make_splits(num_classes=4, blind_pairs=2)
  with pytest.raises(TypeError, match="unknown synthetic_features arguments"):
    sf.arguments(dail=0.5)


def test_generate_writes_an_array_dataset_and_ensure_reuses_it(tmp_path):
  info = sf.generate(str(tmp_path / "one"), dial=0.25, modalities=("a", "b", "c"), **SMALL)
  assert info["format"] == "arrays" and info["splits"] == {"train": 600, "validation": 100,
                                                            "test": 400}
  assert info["generator"]["dial"] == 0.25 and info["dims"] == {"a": 32, "b": 32, "c": 32}
  assert set(info["oracle"]) == {"train", "test"}
  loaded = arrays.load_split(str(tmp_path / "one"), "test")
  splits, _ = sf.make_splits(dial=0.25, modalities=("a", "b", "c"), **SMALL)
  np.testing.assert_array_equal(loaded["b"], splits["test"]["b"])

  cache = str(tmp_path / "cache")
  first = sf.ensure_features(cache, dial=0.5, **SMALL)
  assert os.path.basename(first).startswith("m2_d0.50_s0_")
  stamp = os.path.getmtime(os.path.join(first, "train.npz"))
  assert sf.ensure_features(cache, dial=0.5, **SMALL) == first
  assert os.path.getmtime(os.path.join(first, "train.npz")) == stamp
  assert sf.ensure_features(cache, dial=0.5, seed=1, **SMALL) != first
  with open(os.path.join(first, "metadata.json")) as f:
    assert json.load(f)["generator"] == sf.arguments(dial=0.5, **SMALL)


def test_command_line_writes_the_dataset(tmp_path, capsys):
  assert sf.main(["--out_dir", str(tmp_path / "cli"), "--dial", "0", "--modalities", "x,y",
                  "--num_train", "100", "--num_validation", "20", "--num_test", "400"]) == 0
  assert "oracle β x" in capsys.readouterr().out
  assert arrays.load_info(str(tmp_path / "cli"))["modalities"] == ["x", "y"]
