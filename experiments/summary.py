"""Mean ± std over seeds of finished main-job run directories.

  for s in 0 1 2; do python -m experiments.synthetic --config.seed=$s --workdir runs/synth/seed$s; done
  python -m experiments.summary runs/synth/seed0 runs/synth/seed1 runs/synth/seed2

Rows: each modality trained alone (the IIB phase, test accuracy of its best validation epoch),
then every method of the runs (`results_all.json`). Prints markdown.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np


def _fmt(values: Sequence[float]) -> str:
  values = 100 * np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.2f} ± {std:.2f}"


def summarize(workdirs: Sequence[str]) -> str:
  runs = []
  for w in workdirs:
    with open(os.path.join(w, "results_all.json")) as f:
      runs.append(json.load(f))
  modalities = runs[0]["runs"][0]["modalities"]
  head = ["Method", "Acc_m"] + [f"Acc_{m}" for m in modalities] + ["Avg"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  if runs[0]["budgets"]:
    alone = [_fmt([r["budgets"]["unimodal"][m]["test_acc"] for r in runs]) for m in modalities]
    lines.append("| each modality alone | – | " + " | ".join(alone) + " | – |")
  for i, row in enumerate(runs[0]["runs"]):
    per_seed = [r["runs"][i]["test_best"] for r in runs]
    cells = [row["method"], _fmt([t["acc_fused"] for t in per_seed])]
    cells += [_fmt([t[f"acc_{m}"] for t in per_seed]) for m in modalities]
    cells.append(_fmt([t["acc_avg"] for t in per_seed]))
    lines.append("| " + " | ".join(cells) + " |")
  extra = []
  if runs[0]["budgets"]:
    for m in modalities:
      b = [r["budgets"]["budgets"][modalities.index(m)] for r in runs]
      beta = [r["budgets"]["beta"][modalities.index(m)] for r in runs]
      extra.append(f"{m}: B = {np.mean(b):.3f} ± {np.std(b, ddof=1) if len(b) > 1 else 0:.3f}, "
                   f"β = {np.mean(beta):.3f} ± {np.std(beta, ddof=1) if len(b) > 1 else 0:.3f}")
    anchors = [r["budgets"]["anchor"] for r in runs]
    extra.append("anchor per seed: " + ", ".join(anchors))
  for i, row in enumerate(runs[0]["runs"]):
    w = [[r["runs"][i]["test_best"].get(f"weight_{m}") for m in modalities] for r in runs]
    if None not in w[0]:
      w = np.asarray(w)
      extra.append(f"mean fusion weights of {row['method']} on test: " + ", ".join(
          f"{m} {w[:, j].mean():.3f}" for j, m in enumerate(modalities)))
  return ("\n".join(lines) + f"\n\n{len(runs)} seeds, test accuracy (%) of the epoch chosen on "
          "validation, mean ± std.\n\n" + "\n".join(f"- {e}" for e in extra) + "\n")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python -m experiments.summary WORKDIR [WORKDIR ...]")
  print(summarize(sys.argv[1:]))
