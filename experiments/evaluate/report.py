"""Reports of evaluations: markdown tables, the robustness and probe figures, means over seeds."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import plots, report as provenance
from iib_jax import estimate


def _pct(x, std=None) -> str:
  if x is None:
    return "–"
  return f"{100 * x:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _combine(values: Sequence[Any], fn) -> Any:
  """`fn` over the numbers at the same place of same-shaped records; other leaves: the first."""
  first = values[0]
  if isinstance(first, Mapping):
    return {k: _combine([v[k] for v in values], fn) for k in first
            if all(isinstance(v, Mapping) and k in v for v in values)}
  if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first)
                                     for v in values):
    return [_combine([v[i] for v in values], fn) for i in range(len(first))]
  if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
      isinstance(v, (int, float)) and v is not None for v in values):
    return float(fn(np.asarray(values, np.float64)))
  return first


def over_seeds(evaluations: Sequence[Mapping[str, Any]]
               ) -> tuple[list[dict], list[dict], list[str]]:
  """Per method (in order of first appearance): the mean and the sample std over its runs of
  every number of the evaluation records, and a label 'method (n runs)'."""
  groups: dict[str, list] = {}
  for e in evaluations:
    groups.setdefault(e["method"], []).append(e)
  means = [_combine(g, np.mean) for g in groups.values()]
  # The sample std (ddof = 1), as the tables of experiments.sweep and experiments.table1.
  stds = [_combine(g, lambda x: np.std(x, ddof=1) if len(x) > 1 else 0.0)
          for g in groups.values()]
  labels = [f"{m} ({len(g)} run{'s' * (len(g) > 1)})" for m, g in groups.items()]
  return means, stds, labels


def markdown(evaluations: Sequence[Mapping[str, Any]], labels: Sequence[str],
             stds: Sequence[Mapping[str, Any]] | None = None) -> str:
  """Tables of probes, missing modalities and corruption curves for one or several runs
  (with `stds`, from `over_seeds`: 'mean ± std' cells)."""
  modalities = evaluations[0]["modalities"]
  stds = stds or [None] * len(evaluations)

  def at(std, *path):
    for key in path:
      if std is None:
        return None
      std = std[key]
    return std

  lines = ["## Linear probes on frozen encoder features (test accuracy, %)", "",
           "| Run | " + " | ".join(f"probe {m} | readout {m}" for m in modalities) + " |",
           "|" + "---|" * (1 + 2 * len(modalities))]
  for e, label, sd in zip(evaluations, labels, stds):
    cells = [f"{label} ({e['readout']})"]
    for m in modalities:
      cells += [_pct(e["linear_probe"][m]["probe_test_acc"],
                     at(sd, "linear_probe", m, "probe_test_acc")),
                _pct(e["linear_probe"][m]["readout_test_acc"],
                     at(sd, "linear_probe", m, "readout_test_acc"))]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "## One modality removed (input zeroed): test accuracy of the fused prediction (%)",
            "", "| Run | all | " + " | ".join(f"without {m}" for m in modalities) + " |",
            "|" + "---|" * (2 + len(modalities))]
  for e, label, sd in zip(evaluations, labels, stds):
    lines.append(f"| {label} | {_pct(e['clean']['acc_fused'], at(sd, 'clean', 'acc_fused'))} | "
                 + " | ".join(_pct(e["missing"][m]["acc_fused"],
                                   at(sd, "missing", m, "acc_fused")) for m in modalities)
                 + " |")
  for curve in evaluations[0]["curves"]:
    levels = evaluations[0]["curves"][curve]["levels"]
    kind, modality = curve.split(":")
    what = ("Gaussian noise (std, × clean input std)" if kind == "noise"
            else "occlusion (square side, fraction of the frame)")
    lines += ["", f"## {modality}: {what} — fused test accuracy (%) [mean fusion weights]", "",
              "| Run | " + " | ".join(f"{level:g}" for level in levels) + " |",
              "|" + "---|" * (1 + len(levels))]
    for e, label, sd in zip(evaluations, labels, stds):
      cells = []
      for i, s in enumerate(e["curves"][curve]["summaries"]):
        weights = [s.get(f"weight_{m}") for m in modalities]
        extra = ("" if None in weights
                 else " [" + ", ".join(f"{w:.2f}" for w in weights) + "]")
        cells.append(_pct(s.get("acc_fused"),
                          at(sd, "curves", curve, "summaries", i, "acc_fused")) + extra)
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def robustness_figure(evaluations, labels, path: str, stds=None) -> str:
  """Accuracy (top) and mean fusion weights (bottom) against corruption strength, a line per run
  (with `stds`, from `over_seeds`: a line per method and a band of ± one std)."""
  stds = stds or [None] * len(evaluations)
  plt = plots.pyplot()
  curves = list(evaluations[0]["curves"])
  modalities = evaluations[0]["modalities"]
  with_weights = any(f"weight_{modalities[0]}" in e["clean"] for e in evaluations)
  rows = 2 if with_weights else 1
  fig, axes = plt.subplots(rows, len(curves), figsize=(4.2 * len(curves), 3.4 * rows),
                           squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["-", "--", ":", "-."]
  for col, curve in enumerate(curves):
    kind, modality = curve.split(":")
    for r, (e, label, sd) in enumerate(zip(evaluations, labels, stds)):
      data = e["curves"][curve]
      color = colors[r % len(colors)]

      def draw(ax, key, scale, style, line_label):
        mean = np.array([scale * s[key] for s in data["summaries"]])
        ax.plot(data["levels"], mean, style, marker="o", ms=3, color=color, label=line_label)
        if sd is not None:
          spread = np.array([scale * s[key] for s in sd["curves"][curve]["summaries"]])
          ax.fill_between(data["levels"], mean - spread, mean + spread, color=color, alpha=0.15)

      draw(axes[0, col], "acc_fused", 100, "-", label)
      if with_weights and f"weight_{modalities[0]}" in e["clean"]:
        for j, m in enumerate(modalities):
          draw(axes[1, col], f"weight_{m}", 1, styles[j % len(styles)], f"{label}: w_{m}")
    xlabel = ("noise std (× clean std)" if kind == "noise" else "occluded square side")
    axes[0, col].set_title(f"{kind} on {modality}")
    axes[0, col].set_ylabel("fused test accuracy (%)")
    axes[-1, col].set_xlabel(xlabel)
    for row in range(rows):
      axes[row, col].grid(alpha=0.3)
    if with_weights:
      axes[1, col].set_ylabel("mean fusion weight")
      axes[1, col].set_ylim(0, 1)
  axes[0, 0].legend(fontsize=8)
  if with_weights:
    axes[1, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def probes_figure(evaluations, labels, path: str) -> str:
  """Linear-probe vs. the method's own unimodal accuracy, and accuracy with a modality removed."""
  plt = plots.pyplot()
  modalities = evaluations[0]["modalities"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  n = len(evaluations)
  width = 0.8 / max(n, 1)
  x = np.arange(len(modalities))
  for r, (e, label) in enumerate(zip(evaluations, labels)):
    offset = (r - (n - 1) / 2) * width
    probe = [100 * e["linear_probe"][m]["probe_test_acc"] for m in modalities]
    readout = [100 * e["linear_probe"][m]["readout_test_acc"] for m in modalities]
    axes[0].bar(x + offset, probe, width * 0.9, label=f"{label}: linear probe")
    axes[0].scatter(x + offset, readout, marker="_", s=300, color="k", zorder=3,
                    label="the method's own prediction" if r == 0 else None)
    removed = [100 * e["clean"]["acc_fused"]] + [100 * e["missing"][m]["acc_fused"]
                                                 for m in modalities]
    axes[1].bar(np.arange(len(removed)) + offset, removed, width * 0.9, label=label)
  axes[0].set_xticks(x, modalities)
  axes[0].set_ylabel("test accuracy (%)")
  axes[0].set_title("frozen encoder features: linear probe")
  axes[1].set_xticks(np.arange(len(modalities) + 1),
                     ["all"] + [f"without {m}" for m in modalities])
  axes[1].set_ylabel("fused test accuracy (%)")
  axes[1].set_title("one modality removed")
  for ax in axes:
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def labels_of(evaluations) -> list[str]:
  names = [e["method"] for e in evaluations]
  if len(set(names)) == len(names):
    return names
  return [f"{e['method']} ({os.path.basename(e['workdir'].rstrip('/'))}, seed {e['seed']})"
          for e in evaluations]


def write(evaluations, out: str, command_seconds: float | None = None) -> dict[str, str]:
  """evaluation.json, evaluation.md, robustness.png and probes.png in `out`."""
  os.makedirs(out, exist_ok=True)
  labels = labels_of(evaluations)
  paths = {"json": os.path.join(out, "evaluation.json"),
           "markdown": os.path.join(out, "evaluation.md"),
           "robustness": robustness_figure(evaluations, labels,
                                           os.path.join(out, "robustness.png")),
           "probes": probes_figure(evaluations, labels, os.path.join(out, "probes.png"))}
  record = evaluations[0] if len(evaluations) == 1 else {"runs": list(evaluations)}
  estimate.write_json(paths["json"], record)
  text = ("# Evaluation: " + ", ".join(labels) + "\n\n" + markdown(evaluations, labels)
          + f"\nFigures: `{paths['robustness']}`, `{paths['probes']}`.\n")
  means, stds, mean_labels = over_seeds(evaluations)
  if len(means) < len(evaluations):   # several runs of a method: their mean ± std too
    paths["robustness_mean"] = robustness_figure(means, mean_labels,
                                                 os.path.join(out, "robustness_mean.png"), stds)
    text += ("\n# Mean ± std over the runs of each method\n\n"
             + markdown(means, mean_labels, stds)
             + f"\nFigure: `{paths['robustness_mean']}` (bands: ± one std).\n")
  if command_seconds is not None:
    text += "\n" + provenance.footer("python -m experiments.evaluate", command_seconds)
  with open(paths["markdown"], "w") as f:
    f.write(text)
  return paths
