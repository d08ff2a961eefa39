"""`python -m experiments.evaluate --workdir W [--workdir W2 ... --out DIR]`: see the package."""
from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from experiments import build, cli  # noqa: E402
from experiments.evaluate import evaluate_run, markdown, write  # noqa: E402
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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("give at least one --workdir")
  if len(args.workdir) > 1 and not args.out:
    raise app.UsageError("several --workdir need --out for the combined files")
  t0 = time.time()
  devices = build.Devices()
  noise = [float(v) for v in args.noise_levels]
  occlusion = [float(v) for v in args.occlusion_levels]
  evaluations = []
  for workdir in args.workdir:
    run = build.restore_run(workdir, devices, args.data_dir)
    build.log(f"[evaluate] {run.name} in {workdir}")
    evaluation = evaluate_run(run, noise, occlusion, args.probe_steps, args.probe_l2, args.seed)
    evaluations.append(evaluation)
    if len(args.workdir) > 1:
      # Each run keeps its own record beside the combined one.
      estimate.write_json(os.path.join(workdir, "evaluation.json"), evaluation)
      with open(os.path.join(workdir, "evaluation.md"), "w") as f:
        f.write(f"# Evaluation: {run.name}\n\n" + markdown([evaluation], [run.name]))
  paths = write(evaluations, args.out or args.workdir[0], time.time() - t0)
  with open(paths["markdown"]) as f:
    print(f.read(), flush=True)


if __name__ == "__main__":
  app.run(main)
