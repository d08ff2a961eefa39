"""Reports of evaluations: markdown tables, the robustness, decomposition and probe figures,
means over seeds, the robustness table."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import plots, report as provenance
from experiments.evaluate import table as table_lib
from experiments.evaluate.robustness import TERMS
from iib_jax import estimate

# What each term of log α is (Eq. 9).
TERM_NAMES = {"prior": "log β_m", "uncertainty": "−u_m", "gate": "log σ(G_m)"}


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
  """Per group (`table.group_of`: the method, or a sweep's variant, + damage; in order of first
  appearance): the mean and the sample std over its runs of every number of the evaluation
  records, and a label 'group (n runs)'."""
  groups = table_lib.groups(evaluations)
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
  split = evaluations[0].get("split", "test")
  stds = stds or [None] * len(evaluations)

  def at(std, *path):
    for key in path:
      if std is None:
        return None
      std = std[key]
    return std

  lines = [f"## Linear probes on frozen encoder features ({split} accuracy, %)", "",
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
  lines += ["", f"## One modality removed (input zeroed): {split} accuracy of the fused "
            "prediction (%)",
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
    lines += ["", f"## {modality}: {what} — fused {split} accuracy (%) [mean fusion weights]", "",
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


def _terms_text(values: Sequence[float | None]) -> str:
  return ", ".join("–" if v is None else f"{v:.2f}".replace("-", "\u2212") for v in values)


def decomposition_markdown(evaluations: Sequence[Mapping[str, Any]],
                           labels: Sequence[str]) -> str:
  """Tables of the mean terms of log α per modality: modality removed, and along each curve
  ("" when no run fuses with weights)."""
  rows = [(e, label) for e, label in zip(evaluations, labels) if "decomposition" in e]
  if not rows:
    return ""
  modalities = rows[0][0]["modalities"]
  names = ", ".join(f"{t} = {TERM_NAMES[t]}" for t in TERMS)
  lines = ["", f"## Decomposition of log α (Eq. 9): mean of each term per modality "
           f"({', '.join(modalities)})", "",
           f"{names}; the softmax over modalities of their sum is the fusion weight, so only "
           "differences between modalities move it (a fixed rule puts log w in the prior).", "",
           "### One modality removed", "",
           "| Run | term | all | " + " | ".join(f"without {m}" for m in modalities) + " |",
           "|" + "---|" * (3 + len(modalities))]
  for e, label in rows:
    d = e["decomposition"]
    for t in TERMS:
      cells = [_terms_text([d["clean"][t][m] for m in modalities])]
      cells += [_terms_text([d["missing"][r][t][m] for m in modalities]) for r in modalities]
      lines.append(f"| {label} | {t} | " + " | ".join(cells) + " |")
  for curve, first in rows[0][0]["decomposition"]["curves"].items():
    kind, modality = curve.split(":")
    levels = first["levels"]
    lines += ["", f"### {kind} on {modality} (strength " + ", ".join(f"{v:g}" for v in levels)
              + ")", "", "| Run | term | " + " | ".join(f"{v:g}" for v in levels) + " |",
              "|" + "---|" * (2 + len(levels))]
    for e, label in rows:
      c = e["decomposition"]["curves"].get(curve)
      if c is None:
        continue
      for t in TERMS:
        cells = [_terms_text([c[t][m][i] for m in modalities]) for i in range(len(levels))]
        lines.append(f"| {label} | {t} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def decomposition_figure(evaluations, labels, path: str) -> str | None:
  """The mean of each term of log α (rows: prior, uncertainty, gate) per modality against
  corruption strength (a column per curve) and with each modality removed (last column); a colour
  per run, a line style per modality. None (nothing written) when no run fuses with weights."""
  rows = [(e, label) for e, label in zip(evaluations, labels) if "decomposition" in e]
  if not rows:
    return None
  plt = plots.pyplot()
  modalities = rows[0][0]["modalities"]
  curves = list(rows[0][0]["decomposition"]["curves"])
  cols = len(curves) + 1
  fig, axes = plt.subplots(len(TERMS), cols, figsize=(3.8 * cols, 2.6 * len(TERMS)),
                           squeeze=False, sharey="row")
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["-", "--", ":", "-."]
  for r, (e, label) in enumerate(rows):
    d, color = e["decomposition"], colors[r % len(colors)]
    for row, t in enumerate(TERMS):
      for j, m in enumerate(modalities):
        style = styles[j % len(styles)]
        for col, curve in enumerate(curves):
          c = d["curves"].get(curve)
          if c is None:
            continue
          y = [np.nan if v is None else v for v in c[t][m]]
          axes[row, col].plot(c["levels"], y, style, marker="o", ms=3, color=color,
                              label=f"{label}: {m}")
        removed = [d["clean"][t][m]] + [d["missing"][k][t][m] for k in modalities]
        axes[row, -1].plot(range(len(removed)), [np.nan if v is None else v for v in removed],
                           style, marker="o", ms=3, color=color, label=f"{label}: {m}")
  for row, t in enumerate(TERMS):
    axes[row, 0].set_ylabel(f"{t}: {TERM_NAMES[t]}")
    for col in range(cols):
      axes[row, col].grid(alpha=0.3)
  for col, curve in enumerate(curves):
    kind, modality = curve.split(":")
    axes[0, col].set_title(f"{kind} on {modality}")
    axes[-1, col].set_xlabel("noise std (× clean std)" if kind == "noise"
                             else "occluded square side")
  axes[0, -1].set_title("one modality removed")
  for row in range(len(TERMS)):
    axes[row, -1].set_xticks(range(len(modalities) + 1),
                             ["all"] + [f"without {m}" for m in modalities])
  axes[0, 0].legend(fontsize=6)
  fig.suptitle("mean terms of log α (Eq. 9) per modality", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


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
    axes[0, col].set_ylabel(f"fused {evaluations[0].get('split', 'test')} accuracy (%)")
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
  split = evaluations[0].get("split", "test")
  axes[0].set_ylabel(f"{split} accuracy (%)")
  axes[0].set_title("frozen encoder features: linear probe")
  axes[1].set_xticks(np.arange(len(modalities) + 1),
                     ["all"] + [f"without {m}" for m in modalities])
  axes[1].set_ylabel(f"fused {split} accuracy (%)")
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
  """A label per run: its group (`table.group_of`), with its seed (and directory) when several
  runs share a group."""
  specs = table_lib.damage_specs(evaluations)
  names = [table_lib.group_of(e, specs) for e in evaluations]
  if len(set(names)) == len(names):
    return names
  names = [f"{n} (seed {e['seed']})" for n, e in zip(names, evaluations)]
  if len(set(names)) == len(names):
    return names
  return [f"{n[:-1]}, {os.path.basename(e['workdir'].rstrip('/'))})"
          for n, e in zip(names, evaluations)]


def suffix_of(split: str) -> str:
  """File-name suffix of an evaluation of `split`: "" for test, "_validation" otherwise, so a
  validation pass never replaces a run's test evaluation."""
  return "" if split == "test" else f"_{split}"


def write(evaluations, out: str, command_seconds: float | None = None,
          reference: str | None = None) -> dict[str, str]:
  """evaluation.json, evaluation.md, robustness.png, robustness_table.png, probes.png and (for a
  weighted fusion) decomposition.png in `out` (names with `suffix_of(split)`); with several runs
  of a method, the `*_mean.png` figures over them too. `reference`: the group every other is
  paired with."""
  os.makedirs(out, exist_ok=True)
  labels = labels_of(evaluations)
  split = evaluations[0].get("split", "test")
  tail = suffix_of(split)

  def at(name):
    stem, ext = os.path.splitext(name)
    return os.path.join(out, f"{stem}{tail}{ext}")

  table = table_lib.robustness_table(evaluations, reference)
  paths = {"json": at("evaluation.json"), "markdown": at("evaluation.md"),
           "robustness": robustness_figure(evaluations, labels, at("robustness.png")),
           "robustness_table": table_lib.figure(table, at("robustness_table.png"), split),
           "probes": probes_figure(evaluations, labels, at("probes.png"))}
  decomposition = decomposition_figure(evaluations, labels, at("decomposition.png"))
  if decomposition is not None:
    paths["decomposition"] = decomposition
  record = dict(evaluations[0]) if len(evaluations) == 1 else {"runs": list(evaluations)}
  record["robustness_table"] = table
  estimate.write_json(paths["json"], record)
  figures = [paths[k] for k in ("robustness", "robustness_table", "decomposition", "probes")
             if k in paths]
  text = ("# Evaluation: " + ", ".join(labels) + f"\n\nSplit: {split}.\n\n"
          + table_lib.markdown(table, split) + "\n" + markdown(evaluations, labels)
          + decomposition_markdown(evaluations, labels)
          + "\nFigures: " + ", ".join(f"`{p}`" for p in figures) + ".\n")
  means, stds, mean_labels = over_seeds(evaluations)
  if len(means) < len(evaluations):   # several runs of a method: their mean ± std too
    paths["robustness_mean"] = robustness_figure(means, mean_labels, at("robustness_mean.png"),
                                                 stds)
    mean_figures = [paths["robustness_mean"]]
    decomposition = decomposition_figure(means, mean_labels, at("decomposition_mean.png"))
    if decomposition is not None:
      paths["decomposition_mean"] = decomposition
      mean_figures.append(decomposition)
    text += ("\n# Mean ± std over the runs of each method\n\n"
             + markdown(means, mean_labels, stds)
             + decomposition_markdown(means, mean_labels)
             + "\nFigures: " + ", ".join(f"`{p}`" for p in mean_figures)
             + " (bands: ± one std; the decomposition shows the means).\n")
  if command_seconds is not None:
    text += "\n" + provenance.footer("python -m experiments.evaluate", command_seconds)
  with open(paths["markdown"], "w") as f:
    f.write(text)
  return paths
