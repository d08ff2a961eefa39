"""Measures the readings of the gated fusion (Eqs. 8–9, 11) on validation.

  python -m experiments.gate --seeds=3 --root=runs/gate

On the synthetic dataset (or --config.data.dir=...), for the method `sweeps.gate()` names:
today's default against one change each (`experiments/configs/sweeps.py: gate`): Pool = channel
mean in Eq. 8 (`model.gate_pool=mean`), a gate that reads only the uncertainties
(`model.gate_input=uncertainty`), no gradient from the gate into the encoders
(`model.detach_gate_features=True`), no gradient into w through Eq. 11's auxiliary term (the
method's `detach_weights_in_aux=True`); each variant over several seeds, sharing each seed's
unimodal phase. The winner is the variant with the highest mean validation
Acc_m (the best epoch's, chosen on validation); the test accuracies are reported beside it, never
used. Writes `<root>/gate.md` and `<root>/gate.json`.

The same runs under corruption, on validation (`python -m experiments.evaluate`; the command is
also written into gate.md):

  python -m experiments.evaluate --split=validation --reference=default \
      $(for s in 0 1 2; do for v in default gate_pool=mean gate_input=uncertainty \
        detach_gate_features detach_weights_in_aux; do echo --workdir=runs/gate/seed$s/$v; done; \
        done) --out=runs/gate/evaluation
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags() -> None:
  """The command's flags (defined when it runs, so its functions import without them)."""
  config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "synthetic.py"),
                                  "base experiment config", lock_config=False)
  flags.DEFINE_integer("seeds", 3, "number of seeds (0 .. seeds-1)")
  flags.DEFINE_string("root", "runs/gate", "sweep directory")
  flags.DEFINE_list("variants", None,
                    "a subset of the variants of sweeps.gate() (default: all)")


REFERENCE = "default"


def selection(results: Mapping[str, Sequence[Mapping[str, Any]]], modalities: Sequence[str],
              reference: str = REFERENCE) -> dict[str, Any]:
  """Per variant: mean ± std of validation and test accuracies, the paired difference of its
  validation Acc_m to `reference` by seed, and the winner by mean validation Acc_m.

  Args:
    results: {variant: results.json of each seed (with "seed")}, from `sweep.run_variants`.
    modalities: names in M-axis order.
    reference: the variant the others are paired with.

  Returns:
    {"variants": {name: {"val": {metric: [mean, std]}, "test": {...}, "val_acc_fused_by_seed",
    "paired_val_acc_fused": {mean, low, high, n, wins, verdict}}}, "winner", "reference"}; the
    accuracies in percent. Ties in the mean go to the earlier variant (the default first).
  """
  from experiments import sweep
  from iib_jax import stats
  out: dict[str, Any] = {"variants": {}, "reference": reference}
  by_seed = {name: {int(r["seed"]): r["val_best"]["acc_fused"] for r in runs}
             for name, runs in results.items()}
  for name, runs in results.items():
    entry = {"val": {k: list(v) for k, v in sweep.aggregate(runs, modalities, "val_best").items()},
             "test": {k: list(v) for k, v in sweep.aggregate(runs, modalities).items()},
             "val_acc_fused_by_seed": {str(s): v for s, v in sorted(by_seed[name].items())}}
    if reference in by_seed and name != reference:
      seeds = sorted(set(by_seed[name]) & set(by_seed[reference]))
      d = stats.paired_difference([by_seed[name][s] for s in seeds],
                                  [by_seed[reference][s] for s in seeds])
      interval = d.n >= 2
      entry["paired_val_acc_fused"] = {
          "mean": d.mean if d.n else None, "low": d.low if interval else None,
          "high": d.high if interval else None, "n": d.n, "wins": d.wins, "verdict": d.verdict,
          "text": stats.format_paired(d, scale=100)}
    out["variants"][name] = entry
  out["winner"] = max(out["variants"], key=lambda n: (out["variants"][n]["val"]["acc_fused"][0],
                                                      -list(out["variants"]).index(n)))
  return out


def markdown(chosen: Mapping[str, Any], modalities: Sequence[str], root: str) -> str:
  """The validation table (with the paired difference to the reference and the winner), then the
  test table (reported only), then the evaluation command for the corruption curves."""
  metrics = ["acc_fused"] + [f"acc_{m}" for m in modalities] + ["acc_avg"]
  heads = ["Acc_m"] + [f"Acc_{m}" for m in modalities] + ["Avg"]
  ref = chosen["reference"]

  def cell(pair):
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"

  lines = ["## Gated fusion readings: validation accuracy (%) of the best epoch, mean ± std", "",
           "| Variant | " + " | ".join(heads) + f" | Acc_m − {ref} (paired, 95% CI, wins) | seeds |",
           "|" + "---|" * (len(heads) + 3)]
  for name, v in chosen["variants"].items():
    paired = v.get("paired_val_acc_fused", {}).get("text", "–")
    mark = " (winner)" if name == chosen["winner"] else ""
    lines.append(f"| {name}{mark} | " + " | ".join(cell(v["val"][k]) for k in metrics)
                 + f" | {paired} | {len(v['val_acc_fused_by_seed'])} |")
  lines += ["", f"Winner by mean validation Acc_m: **{chosen['winner']}**.", "",
            "## The same runs on test (reported, not used for the choice)", "",
            "| Variant | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
  for name, v in chosen["variants"].items():
    lines.append(f"| {name} | " + " | ".join(cell(v["test"][k]) for k in metrics) + " |")
  workdirs = " ".join(f"--workdir={os.path.join(root, 'seed' + s, name)}"
                      for name, v in chosen["variants"].items()
                      for s in v["val_acc_fused_by_seed"])
  lines += ["", "Corruption curves and the decomposition of log α on validation:", "",
            f"    python -m experiments.evaluate --split=validation --reference={ref} {workdirs} "
            f"--out={os.path.join(root, 'evaluation')}"]
  return "\n".join(lines) + "\n"


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from experiments import cli, report, sweep
  from experiments.configs import sweeps
  cli.initialize_distributed()
  plan = sweeps.gate()
  variants = dict(plan.variants)
  if flags.FLAGS.variants:
    unknown = [v for v in flags.FLAGS.variants if v not in variants]
    if unknown:
      raise app.UsageError(f"unknown variants {unknown}; the variants: {list(variants)}")
    variants = {v: variants[v] for v in variants if v in flags.FLAGS.variants}
  config = flags.FLAGS.config
  config.method = plan.method
  config.compare_with = ()
  t0 = time.time()
  root = flags.FLAGS.root
  with cli.stops_on_bad_input():
    results = sweep.run_variants(config, variants, range(flags.FLAGS.seeds), root)
  chosen = selection(results, config.modalities)
  text = (markdown(chosen, config.modalities, root) + "\n"
          + report.footer("python -m experiments.gate", time.time() - t0))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "gate.md"), "w") as f:
    f.write(text)
  with open(os.path.join(root, "gate.json"), "w") as f:
    json.dump(chosen, f, indent=2)
  print(text)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "synthetic.py"))
  _define_flags()
  cli.define_distributed_flags()
  app.run(main)
