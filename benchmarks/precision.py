"""bfloat16 against float32: test accuracy on the synthetic data over seeds.

  python -m benchmarks.precision --seeds=3 --root=bench/precision     # the issue's check
  python -m benchmarks.precision --seeds=3 --epochs=5 --iib_epochs=5   # shorter, on a CPU

Runs the synthetic experiment (`experiments/configs/synthetic.py`, IIBalance by default) twice per
seed through `experiments.sweep.run_variants`: `--config.model.dtype=float32` and
`--config.model.dtype=bfloat16`. Both variants of a seed share its unimodal (IIB) phase, which
runs in float32, so the budgets, β and the warm start are identical and only the multimodal
training's compute dtype differs. Writes `<root>/precision.md` (mean ± std over seeds, the
paired difference) and `<root>/precision.json`; an interrupted sweep resumes.

Verdict: bf16 matches float32 "within seed noise" when the mean of the per-seed differences of
Acc_m (bf16 − float32, same seed, same data order) lies within two standard errors of zero.

The default epochs are the synthetic config's (15 for the unimodal phase, 15 for training, both
with early stopping on validation); `--epochs` and `--iib_epochs` shorten the run. BENCHMARKS.md
gives the wall time measured on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Mapping, Sequence

from benchmarks import common

VARIANTS = {"float32": {"model.dtype": "float32"}, "bfloat16": {"model.dtype": "bfloat16"}}


def compare(results: Mapping[str, Sequence[Mapping[str, Any]]],
            metric: str = "acc_fused") -> dict[str, Any]:
  """Paired per-seed difference bf16 − float32 of a test metric (in percent) and the verdict."""
  by_seed = {name: {r["seed"]: 100 * r["test_best"][metric] for r in runs}
             for name, runs in results.items()}
  seeds = sorted(set(by_seed["float32"]) & set(by_seed["bfloat16"]))
  diffs = [by_seed["bfloat16"][s] - by_seed["float32"][s] for s in seeds]
  n = len(diffs)
  mean = sum(diffs) / n if n else float("nan")
  std = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan"))
  stderr = std / math.sqrt(n) if n > 1 else float("nan")
  if n < 2:
    verdict = "not decided (needs at least 2 seeds)"
  elif abs(mean) <= 2 * stderr:
    verdict = "within seed noise"
  else:
    verdict = "outside seed noise"
  return {"metric": metric, "seeds": seeds, "differences": diffs, "mean_difference": mean,
          "std_difference": std, "stderr": stderr, "verdict": verdict}


def report(results, modalities, comparison, wall) -> str:
  from experiments import sweep

  lines = ["## bfloat16 vs float32 on the synthetic data (test accuracy %, epoch chosen on "
           "validation)", "", sweep.markdown_table(results, modalities, label="dtype"),
           f"Paired difference of Acc_m (bf16 − float32) over seeds {comparison['seeds']}: "
           f"{comparison['mean_difference']:+.2f} ± {comparison['std_difference']:.2f} "
           f"(standard error {comparison['stderr']:.2f}) → **{comparison['verdict']}**.", "",
           "Wall time per run (s): " + ", ".join(
               f"{name} {sum(w) / len(w):.0f}" for name, w in wall.items() if w) + "."]
  return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
  p.add_argument("--method", default="iibalance")
  p.add_argument("--epochs", type=int, default=None, help="multimodal epochs (default: config)")
  p.add_argument("--iib_epochs", type=int, default=None, help="unimodal phase epochs")
  p.add_argument("--preset", default="", help="synthetic config preset ('' or smoke)")
  p.add_argument("--data_dir", default="", help="a prepared dataset (default: synthetic demo)")
  p.add_argument("--root", default=os.path.join("runs", "precision"),
                 help="sweep directory (resumable)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  from experiments import sweep
  from experiments.configs import synthetic

  config = synthetic.get_config(args.preset or None)
  config.method = args.method
  config.compare_with = ()
  config.progress = False
  if args.epochs:
    config.optim.epochs = args.epochs
  if args.iib_epochs:
    config.iib.epochs = args.iib_epochs
  if args.data_dir:
    config.data.dir = args.data_dir
  env = common.environment()
  start = time.perf_counter()
  results = sweep.run_variants(config, VARIANTS, list(range(args.seeds)), args.root)
  wall = {name: [r.get("wall_s", 0.0) for r in runs] for name, runs in results.items()}
  comparison = compare(results)
  markdown = report(results, config.modalities, comparison, wall)
  markdown += f"\n{common.describe(env)}; {time.perf_counter() - start:.0f} s in all.\n"
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "precision.md"), "w") as f:
    f.write(markdown)
  record = {"benchmark": "precision", "environment": env, "args": vars(args),
            "comparison": comparison, "wall_s": wall,
            "summary": {name: sweep.aggregate(runs, config.modalities)
                        for name, runs in results.items()}}
  common.finish(record, os.path.join(args.root, "precision.json"))
  print(markdown)
  return record


if __name__ == "__main__":
  main()
