"""(c) The robustness table over runs: per method (or sweep variant), the clean fused accuracy,
the fused accuracy with each modality removed and the area under each corruption curve, as
mean ± std over its runs (seeds), and paired by seed against a reference method and, for runs
trained with train-time damage, against the same method trained without it (`iib_jax.stats`:
mean difference, 95% t interval, wins / seeds).

Areas (`robustness.area_under_curve`): the trapezoid integral of the fused accuracy over the
curve's strengths, divided by the strength range: the accuracy averaged over strengths, in the
same units as an accuracy (the tables show points).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from experiments.evaluate.robustness import areas
from iib_jax import stats

DAMAGE = " + damage"


def damage_specs(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
  """The distinct non-empty `data.train_damage` strings of the runs, in order of appearance."""
  specs: list[str] = []
  for e in evaluations:
    spec = e.get("train_damage") or ""
    if spec and spec not in specs:
      specs.append(spec)
  return specs


def group_of(evaluation: Mapping[str, Any], specs: Sequence[str] = ()) -> str:
  """A run's group label: its variant (the run directory's name in a sweep, else the method),
  with " + damage" when it was trained with train-time damage (" + damage k", the k-th of
  `specs`, when the runs used several damage strings)."""
  label = evaluation.get("variant") or evaluation["method"]
  spec = evaluation.get("train_damage") or ""
  if spec:
    label += DAMAGE + (f" {list(specs).index(spec) + 1}" if len(specs) > 1 else "")
  return label


def groups(evaluations: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  """{group label: its runs}, in order of first appearance."""
  specs = damage_specs(evaluations)
  out: dict[str, list] = {}
  for e in evaluations:
    out.setdefault(group_of(e, specs), []).append(e)
  return out


def columns(evaluation: Mapping[str, Any]) -> list[tuple[str, str]]:
  """(key, header) of the table's columns for runs like `evaluation`."""
  cols = [("clean", "clean")]
  cols += [(f"without:{m}", f"without {m}") for m in evaluation["modalities"]]
  for curve in evaluation["curves"]:
    kind, modality = curve.split(":")
    cols.append((f"area:{curve}", f"area: {kind} on {modality}"))
  return cols


def cell_values(evaluation: Mapping[str, Any]) -> dict[str, float | None]:
  """{column key: value} of one run: accuracies and areas as fractions."""
  auc = evaluation.get("auc") or areas(evaluation)
  values = {"clean": evaluation["clean"].get("acc_fused")}
  for m in evaluation["modalities"]:
    values[f"without:{m}"] = evaluation["missing"][m].get("acc_fused")
  for curve in evaluation["curves"]:
    values[f"area:{curve}"] = auc.get(curve)
  return values


def _by_seed(runs: Sequence[Mapping[str, Any]], label: str) -> dict[int, dict[str, Any]]:
  out: dict[int, dict[str, Any]] = {}
  for e in runs:
    seed = int(e["seed"])
    if seed in out:
      raise ValueError(f"two runs of {label!r} with seed {seed}: {out[seed]['workdir']} and "
                       f"{e['workdir']}; give each seed of a method once")
    out[seed] = {"workdir": e.get("workdir"), **cell_values(e)}
  return dict(sorted(out.items()))


def _paired(a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]],
            keys: Sequence[str]) -> dict[str, Any]:
  """Paired differences a − b over the seeds both have, per column."""
  seeds = sorted(set(a) & set(b))
  out: dict[str, Any] = {"seeds": seeds}
  for key in keys:
    pairs = [(a[s][key], b[s][key]) for s in seeds
             if a[s][key] is not None and b[s][key] is not None]
    d = stats.paired_difference([x for x, _ in pairs], [y for _, y in pairs])
    out[key] = {"mean": d.mean, "std": d.std, "n": d.n, "low": d.low, "high": d.high,
                "wins": d.wins, "ties": d.ties, "losses": d.losses, "verdict": d.verdict}
  return out


def robustness_table(evaluations: Sequence[Mapping[str, Any]],
                     reference: str | None = None) -> dict[str, Any]:
  """The robustness table of the runs (module docstring), JSON-ready.

  Args:
    evaluations: `evaluate_run` records (one per run; several seeds per method are grouped).
    reference: a group label to pair every other group with, by seed (e.g. "joint"); None: no
      such comparison.

  Returns:
    {"columns": [[key, header], ...], "groups": {label: {"seeds", "values": {seed: {key: v}},
    "mean": {key: v}, "std": {key: v}}}, "reference", "paired": {label: {"seeds", key:
    {mean, std, n, low, high, wins, ties, losses, verdict}}}, "damage": {label: {"against":
    undamaged label, ...as paired}}, "damage_specs": [...]}; values are fractions.

  Raises:
    ValueError: an unknown reference, or two runs of one group with the same seed.
  """
  by_group = groups(evaluations)
  cols = columns(evaluations[0])
  keys = [k for k, _ in cols]
  table: dict[str, Any] = {"columns": [list(c) for c in cols], "groups": {},
                           "reference": reference, "paired": {}, "damage": {},
                           "damage_specs": damage_specs(evaluations)}
  seeded = {label: _by_seed(runs, label) for label, runs in by_group.items()}
  for label, values in seeded.items():
    summary = {"seeds": list(values), "values": {str(s): v for s, v in values.items()},
               "mean": {}, "std": {}}
    for key in keys:
      column = [v[key] for v in values.values() if v[key] is not None]
      mean, std, _ = stats.mean_std(column)
      summary["mean"][key], summary["std"][key] = mean, std
    table["groups"][label] = summary
  if reference is not None:
    if reference not in seeded:
      raise ValueError(f"--reference={reference!r} is not among the runs' labels: "
                       f"{sorted(seeded)}")
    for label, values in seeded.items():
      if label != reference:
        table["paired"][label] = _paired(values, seeded[reference], keys)
  for label, values in seeded.items():
    if DAMAGE in label:
      clean = label.split(DAMAGE)[0]
      if clean in seeded:
        table["damage"][label] = {"against": clean, **_paired(values, seeded[clean], keys)}
  return _no_nan(table)


def _no_nan(tree: Any) -> Any:
  """JSON has no NaN (one seed has no std, no interval): None instead."""
  if isinstance(tree, Mapping):
    return {k: _no_nan(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_no_nan(v) for v in tree]
  if isinstance(tree, float) and tree != tree:
    return None
  return tree


def _nan(x: float | None) -> float:
  return float("nan") if x is None else x


def _paired_cell(d: Mapping[str, Any]) -> str:
  return stats.format_paired(stats.PairedDifference(
      _nan(d["mean"]), _nan(d["std"]), d["n"], _nan(d["low"]), _nan(d["high"]), d["wins"],
      d["ties"], d["losses"]), scale=100)


def markdown(table: Mapping[str, Any], split: str = "test") -> str:
  """The table, its paired differences and the damage comparison as markdown sections."""
  cols = [tuple(c) for c in table["columns"]]
  head = "| Method | runs | " + " | ".join(h for _, h in cols) + " |"
  rule = "|" + "---|" * (2 + len(cols))
  lines = [f"## Robustness table: fused {split} accuracy (%), mean ± std over runs", "",
           "Clean, with each modality removed (input zeroed), and the area under each corruption "
           "curve (trapezoid over the strengths, divided by their range: the accuracy averaged "
           "over the strengths).", "", head, rule]
  for label, g in table["groups"].items():
    cells = []
    for key, _ in cols:
      column = [v[key] for v in g["values"].values() if v[key] is not None]
      cells.append(stats.format_mean_std(column, scale=100))
    lines.append(f"| {label} | {len(g['seeds'])} | " + " | ".join(cells) + " |")

  def paired_section(title, entries, against):
    out = ["", title, "", "Mean difference in points [95% interval] (seeds where it is higher / "
           "paired seeds).", "",
           "| Method | against | " + " | ".join(h for _, h in cols) + " |", rule]
    for label, d in entries.items():
      out.append(f"| {label} | {against(d)} | "
                 + " | ".join(_paired_cell(d[key]) for key, _ in cols) + " |")
    return out

  if table["paired"]:
    lines += paired_section(f"## Paired by seed: each method − {table['reference']}",
                            table["paired"], lambda d: table["reference"])
  if table["damage"]:
    lines += paired_section("## Train-time damage: trained with it − trained without it, "
                            "paired by seed", table["damage"], lambda d: d["against"])
    specs = table.get("damage_specs") or []
    names = [""] if len(specs) == 1 else [f" {i + 1}" for i in range(len(specs))]
    lines += [""] + [f"Damage{n}: `{s}`." for n, s in zip(names, specs)]
  return "\n".join(lines) + "\n"


def figure(table: Mapping[str, Any], path: str, split: str = "test") -> str:
  """Bars per column (clean, each modality removed, each area), one per group, ± one std."""
  import numpy as np

  from experiments import plots
  plt = plots.pyplot()
  cols = [tuple(c) for c in table["columns"]]
  labels = list(table["groups"])
  n = max(len(labels), 1)
  width = 0.8 / n
  x = np.arange(len(cols))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols) + 0.4 * n), 3.8))
  for r, label in enumerate(labels):
    g = table["groups"][label]
    mean = [100 * (g["mean"][k] or 0.0) for k, _ in cols]
    std = [100 * (g["std"][k] or 0.0) for k, _ in cols]
    ax.bar(x + (r - (n - 1) / 2) * width, mean, width * 0.9, yerr=std, capsize=2,
           label=f"{label} ({len(g['seeds'])})")
  ax.set_xticks(x, [h.replace(": ", ":\n") for _, h in cols], fontsize=8)
  ax.set_ylabel(f"fused {split} accuracy (%)")
  ax.set_ylim(0, 105)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7)
  ax.set_title("clean, one modality removed, area under each corruption curve")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
