"""The feature-level benchmark's cost and its budgets: one unimodal and one joint training per
(dial, seed), timed, with the trained and the oracle β.

  python -m benchmarks.feature_bench --dials 0,0.5,1 --seeds 0,1 [--size tiny] [--out f.json]

Each (dial, seed) generates its dataset (`data_prep.synthetic_features`), trains the unimodal
phase (every modality alone, in one model; the best epoch per modality on validation, as
`iib_jax.estimate.train_unimodal`) and measures B_m on the training split, then trains joint
training for the same epochs. Reported per row: compile and training seconds, B and β of the
trained models, β of the Bayes posteriors (the oracle), accuracies (joint training's unimodal
accuracies come from its heads on its frozen encoders). Compiled steps are built once
per process and reused across dials and seeds (they depend on shapes only), so the first row
carries the compile time and the rest show the steady cost of one training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np

from benchmarks import common
from data_prep import synthetic_features
from iib_jax import arrays, estimate, loop, methods, sharding, state as state_lib, train
from iib_jax.models import build_model


def _device(batches):
  for batch in batches:
    yield sharding.split_host_data(batch)[0]


class Trainer:
  """A method's compiled steps for one dataset shape, reused across datasets of that shape."""

  def __init__(self, name: str, modalities: Sequence[str], num_classes: int, steps: int,
               epochs: int, size: str, feature_dim: int, learning_rate: float):
    spec = methods.MethodSpec(tuple(modalities), num_classes, feature_dim, steps, epochs)
    self.method = methods.get_method(name, {}, spec)
    self.model = build_model(modalities, {m: "mlp" for m in modalities}, num_classes,
                             feature_dim=feature_dim, encoder_size=size, **self.method.model)
    self.tx = train.make_optimizer("adam", learning_rate)
    self.init = state_lib.make_state_init(self.model, self.tx, self.method)
    self.train_step = train.make_train_step(self.model, self.tx, self.method)
    self.eval_step = train.make_eval_step(self.model, self.method)


def run_one(trainers: dict[str, Trainer], data: arrays.ArrayData, seed: int, epochs: int,
            patience: int | None) -> dict[str, Any]:
  modalities = data.modalities
  row: dict[str, Any] = {}
  t0 = time.perf_counter()
  uni = trainers["unimodal"]
  state = uni.init(jax.random.key(seed), data.example())
  state, summary, _ = estimate.train_unimodal(
      uni.train_step, uni.eval_step, state, train_batches=lambda e: _device(data.train(e, seed)),
      val_batches=lambda: _device(data.eval("validation")), modalities=modalities, epochs=epochs,
      patience=patience, log_every=10 ** 6, show_progress=False)
  record = estimate.estimate_budgets(uni.eval_step, state, _device(data.eval("train")),
                                     modalities)
  test = loop.evaluate(uni.eval_step, state, _device(data.eval("test")), modalities)
  row["unimodal_s"] = round(time.perf_counter() - t0, 2)
  row["budgets"] = dict(zip(modalities, np.round(record["budgets"], 4).tolist()))
  row["beta"] = dict(zip(modalities, np.round(record["beta"], 4).tolist()))
  row["best_epoch"] = {m: summary[m]["best_epoch"] for m in modalities}
  row["unimodal_acc"] = {m: round(test[f"acc_{m}"], 4) for m in modalities}
  if "joint" in trainers:
    t0 = time.perf_counter()
    joint = trainers["joint"]
    state = joint.init(jax.random.key(seed), data.example())
    state, history = loop.fit(joint.train_step, joint.eval_step, state,
                              train_batches=lambda e: _device(data.train(e, seed)),
                              val_batches=lambda: _device(data.eval("validation")),
                              modalities=modalities, epochs=epochs, log_every=10 ** 6,
                              show_progress=False)
    test = loop.evaluate(joint.eval_step, state, _device(data.eval("test")), modalities)
    row["joint_s"] = round(time.perf_counter() - t0, 2)
    row["joint_acc_fused"] = round(test["acc_fused"], 4)
    # Joint training's unimodal heads read its encoders without shaping them: how much each
    # encoder learnt under the fused loss, against the same encoder trained alone.
    row["joint_acc"] = {m: round(test[f"acc_{m}"], 4) for m in modalities}
  return row


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.feature_bench", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dials", default="0,0.5,1")
  p.add_argument("--seeds", default="0")
  p.add_argument("--modalities", default="audio,video")
  p.add_argument("--size", default="full", choices=("tiny", "full"))
  p.add_argument("--feature_dim", type=int, default=64)
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--patience", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--learning_rate", type=float, default=2e-3)
  p.add_argument("--num_train", type=int, default=10000)
  p.add_argument("--no_joint", action="store_true")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  modalities = tuple(args.modalities.split(","))
  env = common.environment()
  rows = []
  trainers: dict[str, Trainer] = {}
  with tempfile.TemporaryDirectory() as tmp:
    for dial in [float(d) for d in args.dials.split(",")]:
      for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        out = synthetic_features.generate(os.path.join(tmp, f"d{dial}_s{seed}"), dial=dial,
                                          seed=seed, modalities=modalities,
                                          num_train=args.num_train)
        data = arrays.ArrayData(out["data_dir"], batch_size=args.batch_size,
                                eval_batch_size=500)
        gen_s = time.perf_counter() - t0
        if not trainers:
          for name in ("unimodal",) + (() if args.no_joint else ("joint",)):
            trainers[name] = Trainer(name, modalities, data.num_classes, data.steps_per_epoch(),
                                     args.epochs, args.size, args.feature_dim,
                                     args.learning_rate)
        row = {"dial": dial, "seed": seed, "generate_s": round(gen_s, 2),
               **run_one(trainers, data, seed, args.epochs, args.patience),
               "oracle_beta": {m: round(b, 4) for m, b in out["oracle"]["train"]["beta"].items()},
               "oracle_budgets": {m: round(b, 4)
                                  for m, b in out["oracle"]["train"]["budget"].items()},
               "oracle_test_acc": {**{m: round(a, 4) for m, a in
                                      out["oracle"]["test"]["acc"].items()},
                                   "fused": round(out["oracle"]["test"]["acc_fused"], 4)},
               "load_avg": common.load_avg()}
        rows.append(row)
        print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"environment": env, "args": vars(args), "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
