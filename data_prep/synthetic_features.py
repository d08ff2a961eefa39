"""The controlled-imbalance benchmark: a synthetic family of vector datasets with a dial.

  python -m data_prep.synthetic_features --out_dir /tmp/feat_d1 --dial 1.0 [--modalities a,b,c]

or, from Python, `generate(out_dir, dial=...)` (writes) / `make_splits(dial=...)` (in memory);
`ensure_features(cache_dir, ...)` writes once and returns the directory. The files are those of
`iib_jax.arrays` (read by `iib_jax.arrays.ArrayData`, no TensorFlow).

Generative model (docs/DATA.md, "Feature-level benchmark"). C classes, M ≥ 2 modalities, the first
of which is the dominant one; every example has a class y (the classes are balanced) and one
vector x_m ∈ R^D per modality:

  x_m = μ_m[y, k_m] + σ_m ε_m,     k_m ~ U{0..K−1},  ε_m ~ N(0, I_D),  all independent given y

* Cluster centres. Each modality has its own K centres per class (K = `clusters_per_class`, so a
  class is not a linearly separable blob and the encoder has something to learn). The C·K
  centres are orthonormal directions of R^D (rows of a random orthogonal matrix, drawn per
  modality) when C·K ≤ D, else random unit vectors.
* Blind pairs: what each modality lacks. Modality m cannot tell apart `blind_pairs` pairs of
  classes: for j < blind_pairs, classes a = (2·b·m + 2j) mod C and a + 1 share their centres in
  modality m (b = blind_pairs). Different modalities are blind to different pairs, and every
  pair of classes is told apart by some modality, so each modality carries class information the
  others lack and fusion beats the best single modality. With the defaults (C = 10, b = 2) each
  modality confuses 4 classes in 2 pairs: at most 80 % is readable from it alone.
* The dial d ∈ [0, 1] sets the noise: σ_dominant = `noise` always, σ_m = noise · (1 + g·d) for
  every other modality (g = `weak_noise_gain`). At d = 0 all modalities are exchangeable (same
  noise; blind pairs that are a relabelling of one another), so their information budgets are
  equal; as d grows the weak modalities carry less class information (still some, on the
  dominant's blind pairs), and the dominant one's budget, then β, pulls ahead.

Because the model is known, the Bayes posteriors p(y | x_m) and p(y | x_1..x_M) are exact
(`oracle`): metadata.json records the oracle accuracies, budgets B_m = E[1 − H(p(y|x_m))] and
β = softmax(B / 0.07) of every written dataset; a trained unimodal model approaches them from
below.

Everything is drawn from numpy generators seeded by (seed, purpose, split, modality): the same
arguments give the same arrays, and adding a modality leaves the others' arrays unchanged.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from iib_jax import arrays

NAME = "synthetic_features"
GENERATOR_VERSION = 1
SPLITS = ("train", "validation", "test")
TAU = 0.07


def noise_levels(modalities: Sequence[str], dial: float, noise: float,
                 weak_noise_gain: float) -> dict[str, float]:
  """σ_m: `noise` for the dominant (first) modality, noise · (1 + gain · dial) for the others."""
  return {m: float(noise if i == 0 else noise * (1.0 + weak_noise_gain * dial))
          for i, m in enumerate(modalities)}


def blind_pairs_of(num_modalities: int, num_classes: int, blind_pairs: int
                   ) -> list[list[tuple[int, int]]]:
  """For each modality m, the class pairs it cannot tell apart: ((2bm + 2j) mod C, that + 1)."""
  out = []
  for m in range(num_modalities):
    pairs = []
    for j in range(blind_pairs):
      a = (2 * blind_pairs * m + 2 * j) % num_classes
      pairs.append((a, (a + 1) % num_classes))
    out.append(pairs)
  return out


def centres(num_classes: int, num_modalities: int, dim: int, clusters_per_class: int,
            blind_pairs: int, seed: int) -> np.ndarray:
  """μ: float64 [M, C, K, D] cluster centres (unit norm), blind pairs sharing theirs."""
  k = clusters_per_class
  out = np.empty((num_modalities, num_classes, k, dim))
  for m, pairs in enumerate(blind_pairs_of(num_modalities, num_classes, blind_pairs)):
    rng = np.random.default_rng([seed, 0, m])
    g = rng.standard_normal((dim, max(dim, num_classes * k)))
    if num_classes * k <= dim:
      q, r = np.linalg.qr(g[:, :dim])
      q = q * np.sign(np.diag(r))                   # a Haar-distributed orthogonal matrix
      dirs = q.T[:num_classes * k]
    else:
      dirs = g.T[:num_classes * k]
      dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    out[m] = dirs.reshape(num_classes, k, dim)
    for a, b in pairs:
      out[m, b] = out[m, a]
  return out


def _check(num_classes, modalities, dim, dial, clusters_per_class, blind_pairs, noise,
           weak_noise_gain, sizes):
  if not 0.0 <= dial <= 1.0:
    raise ValueError(f"dial must lie in [0, 1] (0 balanced, 1 strongly imbalanced), got {dial}")
  if len(modalities) < 2 or len(set(modalities)) != len(modalities):
    raise ValueError(f"need two or more distinct modality names, got {list(modalities)}")
  for m in modalities:
    if m in arrays.RESERVED_KEYS or m == "fusion" or not m:
      raise ValueError(f"{m!r} cannot be a modality name")
  if num_classes < 2 or dim < 1 or clusters_per_class < 1:
    raise ValueError(f"need num_classes >= 2, dim >= 1, clusters_per_class >= 1; got "
                     f"{num_classes}, {dim}, {clusters_per_class}")
  if blind_pairs < 0 or 2 * blind_pairs > num_classes:
    raise ValueError(f"blind_pairs must lie in [0, num_classes / 2], got {blind_pairs}")
  if noise <= 0 or weak_noise_gain < 0:
    raise ValueError(f"need noise > 0 and weak_noise_gain >= 0, got {noise}, {weak_noise_gain}")
  blind = [set(p) for p in blind_pairs_of(len(modalities), num_classes, blind_pairs)]
  for pair in set.intersection(*blind):
    raise ValueError(f"classes {pair} are confused by every modality: use more classes, fewer "
                     "blind pairs or fewer modalities")
  for split, n in sizes.items():
    if n < 0:
      raise ValueError(f"num_{split} must be >= 0, got {n}")


def make_splits(*, num_classes: int = 10, modalities: Sequence[str] = ("audio", "video"),
                dim: int = 32, dial: float = 1.0, num_train: int = 10000,
                num_validation: int = 2000, num_test: int = 4000, clusters_per_class: int = 2,
                blind_pairs: int = 2, noise: float = 0.35, weak_noise_gain: float = 0.5,
                seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
  """Draws the three splits in memory (module docstring).

  Args:
    num_classes: C.
    modalities: names, the dominant one first (M = len(modalities) ≥ 2).
    dim: D, the vector size of every modality.
    dial: 0 (balanced) … 1 (strongly imbalanced).
    num_train, num_validation, num_test: examples per split (classes balanced: counts differ
      by at most one).
    clusters_per_class: K.
    blind_pairs: class pairs each modality confuses.
    noise: σ of the dominant modality (and of every modality at dial 0).
    weak_noise_gain: g; the weak modalities' σ is noise · (1 + g · dial).
    seed: seeds everything.

  Returns:
    ({split: {modality: float32 [N, D], 'label': int32 [N], 'clip_id': bytes [N]}}, the
    metadata: generator arguments, class names, σ and blind pairs per modality).
  """
  modalities = tuple(modalities)
  sizes = {"train": num_train, "validation": num_validation, "test": num_test}
  _check(num_classes, modalities, dim, dial, clusters_per_class, blind_pairs, noise,
         weak_noise_gain, sizes)
  sigma = noise_levels(modalities, dial, noise, weak_noise_gain)
  mu = centres(num_classes, len(modalities), dim, clusters_per_class, blind_pairs, seed)
  splits = {}
  for s, split in enumerate(SPLITS):
    n = sizes[split]
    rng = np.random.default_rng([seed, 1, s])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    out = {"label": labels,
           "clip_id": np.asarray([f"{split}_{i:06d}".encode() for i in range(n)], dtype=bytes)}
    for m, name in enumerate(modalities):
      rng = np.random.default_rng([seed, 2, s, m])
      k = rng.integers(0, clusters_per_class, n)
      eps = rng.standard_normal((n, dim))
      out[name] = (mu[m, labels, k] + sigma[name] * eps).astype(np.float32)
    splits[split] = out
  generator = arguments(num_classes=num_classes, modalities=modalities, dim=dim, dial=dial,
                        num_train=num_train, num_validation=num_validation, num_test=num_test,
                        clusters_per_class=clusters_per_class, blind_pairs=blind_pairs,
                        noise=noise, weak_noise_gain=weak_noise_gain, seed=seed)
  pairs = blind_pairs_of(len(modalities), num_classes, blind_pairs)
  metadata = {
      "name": NAME,
      "num_classes": num_classes,
      "class_names": [f"class_{c:02d}" for c in range(num_classes)],
      "modalities": list(modalities),
      "dominant": modalities[0],
      "generator": generator,
      "sigma": sigma,
      "blind_pairs": {name: [list(p) for p in pairs[m]] for m, name in enumerate(modalities)},
  }
  return splits, metadata


# ------------------------------------------------------------------------------------------------
# The Bayes posteriors of the generative model.


def log_likelihoods(x: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
  """log p(x | y = c) + const, float64 [N, C], for one modality's x [N, D] and centres [C, K, D].

  A mixture of K isotropic Gaussians per class: logsumexp_k −‖x − μ_ck‖² / (2σ²) (the constant,
  the same for every class, is dropped).
  """
  x = np.asarray(x, np.float64)
  # ‖x − μ‖² = ‖x‖² − 2 x·μ + ‖μ‖², without an [N, C, K, D] temporary.
  d2 = ((x * x).sum(-1)[:, None, None] - 2 * np.einsum("nd,ckd->nck", x, mu)
        + (mu * mu).sum(-1)[None])
  logits = -d2 / (2 * sigma ** 2)
  top = logits.max(-1, keepdims=True)
  return (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]


def _normalise(log_lik: np.ndarray) -> np.ndarray:
  z = log_lik - log_lik.max(-1, keepdims=True)
  p = np.exp(z)
  return p / p.sum(-1, keepdims=True)


def _confidence(p: np.ndarray) -> np.ndarray:
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return 1.0 + plogp.sum(-1) / np.log(p.shape[-1])


def oracle(split_arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
           ) -> dict[str, Any]:
  """The Bayes classifiers of one split: accuracy and budget per modality, fused accuracy, β.

  Returns:
    {'acc': {m: accuracy of argmax p(y | x_m)}, 'acc_fused': accuracy of argmax
    p(y | x_1..x_M) (the modalities are independent given y: the log-likelihoods add),
    'budget': {m: mean 1 − H(p(y | x_m))}, 'beta': {m: softmax(budget / 0.07)}}.
  """
  g = metadata["generator"]
  modalities = list(metadata["modalities"])
  mu = centres(g["num_classes"], len(modalities), g["dim"], g["clusters_per_class"],
               g["blind_pairs"], g["seed"])
  labels = split_arrays["label"]
  total = 0.0
  out: dict[str, Any] = {"acc": {}, "budget": {}}
  for m, name in enumerate(modalities):
    ll = log_likelihoods(split_arrays[name], mu[m], metadata["sigma"][name])
    total = total + ll
    p = _normalise(ll)
    out["acc"][name] = float(np.mean(p.argmax(-1) == labels))
    out["budget"][name] = float(np.mean(_confidence(p)))
  out["acc_fused"] = float(np.mean(total.argmax(-1) == labels))
  b = np.array([out["budget"][m] for m in modalities]) / TAU
  beta = np.exp(b - b.max())
  out["beta"] = dict(zip(modalities, (beta / beta.sum()).tolist()))
  return out


# ------------------------------------------------------------------------------------------------
# Writing.


def generate(out_dir: str, **kwargs: Any) -> dict[str, Any]:
  """Writes one dataset of the family (`iib_jax.arrays` layout) and returns its metadata.

  metadata.json holds the generator arguments (`make_splits`), σ and blind pairs per modality,
  and the oracle of the training split ('oracle.train': its budgets and β are what the
  unimodal phase estimates) and of the test split ('oracle.test': the accuracies).

  Args:
    out_dir: the dataset directory (created).
    **kwargs: `make_splits` arguments.
  """
  splits, metadata = make_splits(**kwargs)
  metadata["oracle"] = {split: oracle(splits[split], metadata) for split in ("train", "test")
                        if len(splits[split]["label"])}
  arrays.save(out_dir, splits, metadata)
  return arrays.load_info(out_dir)


@contextlib.contextmanager
def _lock(path: str):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def arguments(**kwargs: Any) -> dict[str, Any]:
  """The full generator arguments (`make_splits`'s defaults filled in), as metadata.json's
  'generator' records them.

  Raises:
    TypeError: naming an unknown argument.
  """
  params = inspect.signature(make_splits).parameters
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    raise TypeError(f"unknown synthetic_features arguments {unknown}; accepted: {sorted(params)}")
  args = {k: kwargs.get(k, p.default) for k, p in params.items()}
  args["modalities"] = list(args["modalities"])
  args["dial"], args["noise"] = float(args["dial"]), float(args["noise"])
  args["weak_noise_gain"] = float(args["weak_noise_gain"])
  return dict(version=GENERATOR_VERSION, **args)


def dataset_name(**kwargs: Any) -> str:
  """A directory name for a dataset: 'm<M>_d<dial>_s<seed>_<hash of all arguments>'."""
  args = arguments(**kwargs)
  digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:8]
  return f"m{len(args['modalities'])}_d{args['dial']:.2f}_s{args['seed']}_{digest}"


def ensure_features(cache_dir: str, **kwargs: Any) -> str:
  """Writes the dataset for `kwargs` (`make_splits` arguments) under `cache_dir` unless it is
  there already, and returns its directory.

  Idempotent and safe to call from several processes at once (a file lock serialises them).
  """
  args = arguments(**kwargs)
  os.makedirs(cache_dir, exist_ok=True)
  out_dir = os.path.join(cache_dir, dataset_name(**kwargs))
  with _lock(os.path.join(cache_dir, ".lock")):
    path = os.path.join(out_dir, arrays.METADATA_FILE)
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f).get("generator") == args:
          return out_dir
    generate(out_dir, **kwargs)
  return out_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_prep.synthetic_features", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True, help="the dataset directory to write")
  p.add_argument("--dial", type=float, default=1.0, help="0 balanced … 1 strongly imbalanced")
  p.add_argument("--modalities", default="audio,video",
                 help="comma-separated names, the dominant one first")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--dim", type=int, default=32)
  p.add_argument("--num_train", type=int, default=10000)
  p.add_argument("--num_validation", type=int, default=2000)
  p.add_argument("--num_test", type=int, default=4000)
  p.add_argument("--clusters_per_class", type=int, default=2)
  p.add_argument("--blind_pairs", type=int, default=2)
  p.add_argument("--noise", type=float, default=0.35)
  p.add_argument("--weak_noise_gain", type=float, default=0.5)
  p.add_argument("--seed", type=int, default=0)
  args = vars(p.parse_args(argv))
  out_dir = args.pop("out_dir")
  args["modalities"] = tuple(m for m in args["modalities"].split(",") if m)
  start = time.time()
  info = generate(out_dir, **args)
  o = info["oracle"]
  print(f"wrote {sum(info['splits'].values())} examples to {out_dir} in "
        f"{time.time() - start:.1f} s; oracle test accuracy "
        + ", ".join(f"{m} {100 * a:.1f}" for m, a in o["test"]["acc"].items())
        + f", fused {100 * o['test']['acc_fused']:.1f}; oracle β "
        + ", ".join(f"{m} {b:.3f}" for m, b in o["train"]["beta"].items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
