"""Figures of a run directory (matplotlib, PNG, no display needed)."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def accuracy_curves(records: Sequence[Mapping], modalities: Sequence[str], path: str,
                    title: str = "") -> str:
  """Validation accuracy of the fused and each unimodal prediction per epoch (how imbalance shows).

  Args:
    records: metrics.jsonl records; those with split "val" and phase "multimodal" are drawn, and
      the unimodal phase's per-modality accuracy is drawn dashed for reference when present.
    modalities: modality names.
    path: PNG to write.
  """
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  val = [r for r in records if r.get("split") == "val" and r.get("phase") == "multimodal"]
  if val:
    epochs = [r["epoch"] for r in val]
    ax.plot(epochs, [100 * r["acc_fused"] for r in val], "k-o", ms=3, label="fused (Acc_m)")
    for m in modalities:
      ax.plot(epochs, [100 * r[f"acc_{m}"] for r in val], "-o", ms=3, label=f"{m} head")
  uni = [r for r in records if r.get("split") == "val" and r.get("phase") == "unimodal"]
  for m in modalities:
    if uni:
      ax.plot([r["epoch"] for r in uni], [100 * r[f"acc_{m}"] for r in uni], "--", alpha=0.6,
              label=f"{m} alone (IIB phase)")
  ax.set_xlabel("epoch (0-based, as in metrics.jsonl and the checkpoints)")
  ax.set_ylabel("validation accuracy (%)")
  ax.set_title(title or "Validation accuracy per modality")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def prior_vs_weights(modalities: Sequence[str], beta: Sequence[float],
                     weights: Sequence[float], path: str, title: str = "") -> str:
  """The IIB prior β beside the averaged fusion weights per modality (the paper's Fig. 3)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.0, 3.6))
  x = np.arange(len(modalities))
  ax.bar(x - 0.18, beta, width=0.36, label="IIB prior β")
  ax.bar(x + 0.18, weights, width=0.36, label="mean fusion weight w (test)")
  for xi, (b, w) in enumerate(zip(beta, weights)):
    ax.text(xi - 0.18, b + 0.01, f"{b:.2f}", ha="center", fontsize=8)
    ax.text(xi + 0.18, w + 0.01, f"{w:.2f}", ha="center", fontsize=8)
  ax.set_xticks(x, modalities)
  ax.set_ylim(0, 1.1)
  ax.set_ylabel("weight")
  ax.set_title(title or "IIB prior and learned fusion weights")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def weight_distribution(modalities: Sequence[str], weights: np.ndarray, path: str,
                        title: str = "") -> str:
  """Histogram of the per-sample fusion weights of each modality ([N, M])."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 3.6))
  bins = np.linspace(0, 1, 41)
  for i, m in enumerate(modalities):
    ax.hist(weights[:, i], bins=bins, alpha=0.6, label=f"{m} (mean {weights[:, i].mean():.2f})")
  ax.set_xlabel("per-sample fusion weight w_m")
  ax.set_ylabel("test clips")
  ax.set_title(title or "Distribution of per-sample fusion weights")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def save_all(workdir: str, modalities: Sequence[str],
             results: Mapping | None = None) -> list[str]:
  """Draws every figure that the run directory has the data for; returns the paths written.

  Args:
    workdir: the run directory.
    modalities: names in M-axis order.
    results: the run's results (default: its results.json, when written).
  """
  written = []
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    written.append(accuracy_curves(read_metrics(metrics), modalities,
                                   os.path.join(workdir, "accuracy_curves.png")))
  results_path = os.path.join(workdir, "results.json")
  weights_path = os.path.join(workdir, "test_weights.npy")
  if results is None and os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  if results is not None:
    beta = results.get("beta")
    mean_w = [results["test_best"].get(f"weight_{m}") for m in modalities]
    if beta and None not in mean_w:
      written.append(prior_vs_weights(modalities, beta, mean_w,
                                      os.path.join(workdir, "prior_vs_weights.png")))
  if os.path.exists(weights_path):
    written.append(weight_distribution(modalities, np.load(weights_path),
                                       os.path.join(workdir, "weight_distribution.png")))
  return written
