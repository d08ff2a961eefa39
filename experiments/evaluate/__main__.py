"""`python -m experiments.evaluate --workdir W [--workdir W2 ... --out DIR] [--split validation]
[--reference joint]`: see the package."""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from experiments import build, cli  # noqa: E402
from experiments.evaluate import evaluate_run, markdown, table, variant_of, write  # noqa: E402
from experiments.evaluate.report import suffix_of  # noqa: E402
from iib_jax import estimate  # noqa: E402

flags.DEFINE_multi_string("workdir", None, "a trained run directory (repeatable)")
flags.DEFINE_string("out", None, "where the combined files of several runs go (required then)")
flags.DEFINE_string("data_dir", None, "the prepared dataset, if not the one in config.json")
flags.DEFINE_list("noise_levels", ["0", "0.5", "1", "2", "4"],
                  "Gaussian noise std, in units of the modality's clean input std")
flags.DEFINE_list("occlusion_levels", ["0", "0.25", "0.5", "0.75", "1"],
                  "side of the zeroed square, as a fraction of the frame side")
flags.DEFINE_integer("probe_steps", 500, "full-batch Adam steps of each linear probe")
flags.DEFINE_float("probe_l2", 1e-4, "L2 penalty of the linear probes")
flags.DEFINE_integer("seed", 0, "seed of the corruption noise and occlusion positions")
cli.define_distributed_flags()
flags.DEFINE_enum("split", "test", ["test", "validation"],
                  "the split measured (validation for comparisons that select among variants)")
flags.DEFINE_string("reference", None, "a run label (method, or a sweep's variant) to pair every "
                    "other with, by seed, in the robustness table (e.g. joint)")


def _planned(workdir: str) -> dict:
  """What a run's label is made of, from its directory alone (no restore)."""
  config = build.run_config(workdir)
  method = config.method
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      method = json.load(f).get("method", method)
  return {"method": method, "variant": variant_of(workdir, method),
          "train_damage": config.data.get("train_damage", "") or ""}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("give at least one --workdir")
  if len(args.workdir) > 1 and not args.out:
    raise app.UsageError("several --workdir need --out for the combined files")
  if args.reference is not None:   # a label no run has would only fail after every evaluation
    planned = [_planned(w) for w in args.workdir]
    specs = table.damage_specs(planned)
    labels = sorted({table.group_of(p, specs) for p in planned})
    if args.reference not in labels:
      raise app.UsageError(f"--reference={args.reference!r} is not among the runs' labels: "
                           f"{labels}")
  t0 = time.time()
  devices = build.Devices()
  noise = [float(v) for v in args.noise_levels]
  occlusion = [float(v) for v in args.occlusion_levels]
  evaluations = []
  for workdir in args.workdir:
    run = build.restore_run(workdir, devices, args.data_dir)
    build.log(f"[evaluate] {run.name} in {workdir}")
    evaluation = evaluate_run(run, noise, occlusion, args.probe_steps, args.probe_l2, args.seed,
                              args.split)
    evaluations.append(evaluation)
    if len(args.workdir) > 1:
      # Each run keeps its own record beside the combined one.
      tail = suffix_of(args.split)
      estimate.write_json(os.path.join(workdir, f"evaluation{tail}.json"), evaluation)
      with open(os.path.join(workdir, f"evaluation{tail}.md"), "w") as f:
        f.write(f"# Evaluation: {run.name}\n\n" + markdown([evaluation], [run.name]))
  paths = write(evaluations, args.out or args.workdir[0], time.time() - t0, args.reference)
  with open(paths["markdown"]) as f:
    print(f.read(), flush=True)


if __name__ == "__main__":
  app.run(main)
