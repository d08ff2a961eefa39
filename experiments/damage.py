"""Train-time modality damage: the methods of `sweeps.DAMAGE_METHODS` (the studied method, joint
training and two baselines), trained without and with it, over seeds.

  python -m experiments.damage --seeds=3 --root=runs/damage

On the synthetic dataset (or --config.data.dir=...). The damage (`experiments/configs/sweeps.py:
damage_spec`) removes modalities, adds Gaussian noise and occludes frames; its noise is in units
of each modality's clean input std, measured here on the first batch of the training split
(evaluation transforms, real clips), the unit of `experiments.evaluate`'s noise levels.
`--damage=...` replaces the whole string. Layout: `<root>/none/seed<s>/<method>` and
`<root>/damage/seed<s>/<method>`, each setting with its own unimodal phase
(`<root>/<setting>/seed<s>/iib`). Writes `<root>/damage.md` (test accuracy of every run and the
evaluation command that gives the robustness table) and `<root>/damage.json`.
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
  flags.DEFINE_string("root", "runs/damage", "sweep directory")
  from experiments.configs import sweeps
  flags.DEFINE_list("methods", list(sweeps.DAMAGE_METHODS),
                    "the methods trained without and with damage")
  flags.DEFINE_string("damage", None, "the data.train_damage string (default: sweeps.damage_spec "
                      "with the measured input scales)")


def input_scales(config) -> dict[str, float]:
  """{modality: std of its clean model input} on the first batch of the training split
  (evaluation transforms, real clips only; uint8 frames normalised as on the device)."""
  import numpy as np

  from experiments import build
  from iib_jax.models.multimodal import normalize_frames
  data = build.Data(config, config.data.dir, build.Devices())
  batch = next(iter(data.host_batches("train", train=False)))
  real = np.asarray(batch["mask"]) > 0
  out = {}
  for m in config.modalities:
    x = batch[m]
    x = np.asarray(normalize_frames(x)) if x.dtype == np.uint8 else np.asarray(x)
    out[m] = float(np.std(x[real]))
  return out


def evaluate_command(root: str, settings: Sequence[str], methods: Sequence[str],
                     seeds: Sequence[int], reference: str = "joint") -> str:
  """The `experiments.evaluate` command over every run of the measurement (paired to
  `reference` when it is one of the methods; each damaged run is paired to its undamaged twin
  in any case)."""
  workdirs = " ".join(f"--workdir={os.path.join(root, s, f'seed{i}', m)}"
                      for s in settings for i in seeds for m in methods)
  flag = f"--reference={reference} " if reference in methods else ""
  return (f"python -m experiments.evaluate {flag}{workdirs} "
          f"--out={os.path.join(root, 'evaluation')}")


def markdown(results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
             modalities: Sequence[str], specs: Mapping[str, str], command: str) -> str:
  from experiments import sweep
  lines = []
  for setting, by_method in results.items():
    spec = specs[setting]
    lines += [f"## Training {'without damage' if not spec else 'with damage'}: test accuracy (%)",
              "", f"`data.train_damage`: `{spec}`" if spec else "`data.train_damage`: none", "",
              sweep.markdown_table(by_method, modalities, label="Method")]
  lines += ["The robustness table (clean, modality removed, areas under the corruption curves; "
            "paired by seed to joint training and to the same method trained without damage):",
            "", f"    {command}", ""]
  return "\n".join(lines)


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from experiments import build, cli, report, run as runner, sweep
  from experiments.configs import common, sweeps
  cli.initialize_distributed()
  config = flags.FLAGS.config
  config.compare_with = ()
  methods = list(flags.FLAGS.methods)
  seeds = list(range(flags.FLAGS.seeds))
  root = flags.FLAGS.root
  t0 = time.time()
  with cli.stops_on_bad_input():
    if not config.data.dir:
      config = runner.synthetic_demo(config)
    spec = flags.FLAGS.damage
    if spec is None:
      spec = sweeps.damage_spec(build.modality_kinds(config), input_scales(config))
    plan = sweeps.damage(spec, methods)
    results, specs = {}, {}
    for setting, (base, sweep_plan) in plan.items():
      setting_config = common.override(config, {**base, "method": sweep_plan.method})
      specs[setting] = setting_config.data.train_damage
      common.validate(setting_config)
      runner.log(f"=== {setting}: data.train_damage={specs[setting]!r}")
      results[setting] = sweep.run_variants(setting_config, sweep_plan.variants, seeds,
                                            os.path.join(root, setting))
  command = evaluate_command(root, list(plan), methods, seeds)
  text = (markdown(results, config.modalities, specs, command) + "\n"
          + report.footer("python -m experiments.damage", time.time() - t0))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "damage.md"), "w") as f:
    f.write(text)
  with open(os.path.join(root, "damage.json"), "w") as f:
    json.dump({"train_damage": specs, "evaluate": command,
               "test": {s: {m: sweep.aggregate(r, config.modalities) for m, r in by.items()}
                        for s, by in results.items()}}, f, indent=2)
  print(text)


if __name__ == "__main__":
  import sys
  from experiments import cli
  cli.check_config_flags(sys.argv[1:], os.path.join(_HERE, "configs", "synthetic.py"))
  _define_flags()
  cli.define_distributed_flags()
  app.run(main)
