"""(b) Robustness: test accuracy with one modality removed (its input zeroed) and under corruption
of increasing strength — Gaussian noise on audio features and on frames (std = level × the
modality's clean input std), occlusion of frames by a zeroed square (side = level × frame side,
one random place per clip) — with the mean fusion weights at each level when the model fuses with
weights, and the means of the three terms of log α behind them (`decomposition`); the area under
each curve (`area_under_curve`). The split is the test split unless asked otherwise (a selection
among variants reads validation)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import build
from iib_jax import fusion, loop
from iib_jax.models.multimodal import normalize_frames

# The terms of log α_m = log β_m − u_m + log σ(G_m) (Eq. 9), by their short names.
TERMS = tuple(key[len("log_alpha_"):] for key in fusion.LOG_ALPHA_TERMS)   # prior, uncertainty, gate


def corrupt(batch, modalities: Sequence[str], kinds: Mapping[str, str], keep, noise, occlusion,
            scale, key):
  """The batch with each modality removed, noised and (frames) occluded.

  Args:
    batch: device batch.
    modalities: names in M-axis order.
    kinds: modality -> "audio" or "video" (its encoder's input layout).
    keep: [M] 1 to keep a modality, 0 to zero its input.
    noise: [M] Gaussian noise std in units of `scale`.
    occlusion: [M] side of the zeroed square as a fraction of the frame side (frames only).
    scale: [M] the clean input std of each modality.
    key: PRNG key of this batch.
  """
  out = dict(batch)
  for i, m in enumerate(modalities):
    x = batch[m]
    if x.dtype == jnp.uint8:   # frames normalised on the device: corrupt the normalised frames
      x = normalize_frames(x)
    k_noise, k_y, k_x = jax.random.split(jax.random.fold_in(key, i), 3)
    x = x + (noise[i] * scale[i] * jax.random.normal(k_noise, x.shape)).astype(x.dtype)
    if kinds[m] == "video":                             # [B, T, H, W, 3]
      height, width = x.shape[2], x.shape[3]
      side = jnp.round(occlusion[i] * min(height, width))
      top = jnp.floor(jax.random.uniform(k_y, x.shape[:1]) * (height - side + 1))
      left = jnp.floor(jax.random.uniform(k_x, x.shape[:1]) * (width - side + 1))
      rows, cols = jnp.arange(height), jnp.arange(width)
      in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)            # [B, H]
      in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)          # [B, W]
      square = in_rows[:, :, None] & in_cols[:, None, :]                          # [B, H, W]
      x = jnp.where(square[:, None, :, :, None], jnp.zeros_like(x), x)
    out[m] = x * keep[i].astype(x.dtype)
  return out


def _corrupted_eval(run: build.TrainedRun):
  @jax.jit
  def step(state, batch, keep, noise, occlusion, scale, key):
    return run.eval_step(state, corrupt(batch, run.modalities, run.kinds, keep, noise, occlusion,
                                        scale, key))

  return step


def _input_scale(run: build.TrainedRun, split: str = "test") -> np.ndarray:
  """[M] std of each modality's clean inputs of `split` (first batch, real examples only)."""
  batch = jax.device_get(next(iter(run.data.eval(split))))
  real = np.asarray(batch["mask"]) > 0
  inputs = {m: np.asarray(normalize_frames(batch[m]) if batch[m].dtype == np.uint8 else batch[m])
            for m in run.modalities}
  return np.array([float(np.std(inputs[m][real])) for m in run.modalities], np.float32)


def _evaluate_under(run: build.TrainedRun, step, keep, noise, occlusion, scale,
                    seed: int, split: str = "test") -> dict[str, Any]:
  key = jax.random.key(seed)
  counter = iter(range(1 << 30))

  def eval_step(state, batch):
    return step(state, batch, keep, noise, occlusion, scale,
                jax.random.fold_in(key, next(counter)))

  return loop.summarize(loop.collect(eval_step, run.state, run.data.eval(split)), run.modalities)


def robustness(run: build.TrainedRun, noise_levels: Sequence[float],
               occlusion_levels: Sequence[float], seed: int = 0,
               split: str = "test") -> dict[str, Any]:
  """Summaries of `split` (clean, each modality removed, curves over corruption strength), each
  from `loop.summarize`: accuracies, and for a weighted fusion the mean weights and the means of
  the three terms of log α (`log_alpha_<term>_<modality>`)."""
  num = len(run.modalities)
  step = _corrupted_eval(run)
  scale = _input_scale(run, split)
  ones, zeros = np.ones(num, np.float32), np.zeros(num, np.float32)

  def under(keep=ones, noise=zeros, occlusion=zeros):
    return _evaluate_under(run, step, jnp.asarray(keep), jnp.asarray(noise),
                           jnp.asarray(occlusion), jnp.asarray(scale), seed, split)

  clean = under()
  missing = {}
  for i, m in enumerate(run.modalities):
    keep = ones.copy()
    keep[i] = 0
    missing[m] = under(keep=keep)
  curves = {}
  for i, m in enumerate(run.modalities):
    kinds = [("noise", noise_levels)]
    if run.kinds[m] == "video":
      kinds.append(("occlusion", occlusion_levels))
    for kind, levels in kinds:
      points = []
      for level in levels:
        values = zeros.copy()
        values[i] = level
        points.append(clean if level == 0 else
                      under(**{"noise" if kind == "noise" else "occlusion": values}))
      curves[f"{kind}:{m}"] = {"levels": list(map(float, levels)), "summaries": points}
  return {"clean": clean, "missing": missing, "curves": curves,
          "input_scale": dict(zip(run.modalities, map(float, scale)))}


def area_under_curve(levels: Sequence[float], values: Sequence[float]) -> float | None:
  """The mean of a curve over its range of strengths: the trapezoid integral of `values` over
  `levels` (sorted first), divided by max(levels) − min(levels).

  With levels 0 … L that is the accuracy averaged over strengths uniformly in [0, L] (linear
  between the measured points): a flat curve's area is its value. One level: that value. None
  when a value is missing.
  """
  if any(v is None for v in values) or not len(values):
    return None
  order = np.argsort(np.asarray(levels, np.float64), kind="stable")
  x = np.asarray(levels, np.float64)[order]
  y = np.asarray(values, np.float64)[order]
  span = x[-1] - x[0]
  if span == 0:
    return float(y.mean())
  return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / span)


def areas(record: Mapping[str, Any], key: str = "acc_fused") -> dict[str, float | None]:
  """{curve: area under its `key` curve} of a robustness record (`area_under_curve`)."""
  return {curve: area_under_curve(data["levels"], [s.get(key) for s in data["summaries"]])
          for curve, data in record["curves"].items()}


def decomposition(record: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any] | None:
  """The means of the three terms of log α (Eq. 9) per modality at every point of a robustness
  record, or None when the model has no weighted fusion (its summaries carry no terms).

  Returns:
    {"terms": ("prior", "uncertainty", "gate"),
     "clean": {term: {modality: mean}},
     "missing": {removed modality: {term: {modality: mean}}},
     "curves": {curve: {"levels": [...], term: {modality: [mean at each level]}}}}
    where term "prior" is log β_m, "uncertainty" −u_m and "gate" log σ(G_m); their sum's
    softmax over modalities is the fusion weight (a fixed rule puts log w in the prior term).
  """
  clean = record["clean"]
  if f"log_alpha_{TERMS[0]}_{modalities[0]}" not in clean:
    return None

  def point(summary):
    return {t: {m: summary.get(f"log_alpha_{t}_{m}") for m in modalities} for t in TERMS}

  curves = {}
  for curve, data in record["curves"].items():
    entry = {"levels": list(data["levels"])}
    for t in TERMS:
      entry[t] = {m: [s.get(f"log_alpha_{t}_{m}") for s in data["summaries"]]
                  for m in modalities}
    curves[curve] = entry
  return {"terms": list(TERMS), "clean": point(clean),
          "missing": {m: point(s) for m, s in record["missing"].items()}, "curves": curves}
