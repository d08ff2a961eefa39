"""The mp4 synthetic dataset's information budgets at a dial: the unimodal phase, as the runner
runs it, with library pieces only.

  python -m benchmarks.synthetic_budgets --dial 1.0 --seeds 0,1,2 [--cache DIR] [--out f.json]

Generates and prepares the dataset (`data_prep.synthetic.ensure_synthetic`, data seed 0; `--dial
none` for the published one), then for each seed trains audio and video alone with the synthetic
configuration's settings (experiments/configs/synthetic.py: width-8 1-D CNN and ResNet-18,
feature size 64, 3 frames of 64×64, 300 log-Mel frames, Adam 1e-3, batch 32, up to 15 epochs,
patience 4, best epoch per modality on validation; initial state and order from seed + 1, as the
runner) and reports B_m on the training split, β = softmax(B / 0.07), and the unimodal validation
and test accuracies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from benchmarks import common
from iib_jax import estimate, loop, methods, sharding, state as state_lib, train
from iib_jax.models import build_model

MODALITIES = ("audio", "video")
ENCODERS = {"audio": "audio_cnn", "video": "resnet18"}
DATA_OPTIONS = dict(modalities={"audio": "audio", "video": "video"}, num_frames=3, image_size=64,
                    audio_frames=300, audio_norm="none", frames_dtype="float32")


def _device(batches):
  for batch in batches:
    yield sharding.split_host_data(batch)[0]


def measure(data_dir: str, seed: int, *, epochs: int = 15, patience: int = 4,
            batch_size: int = 32, eval_batch_size: int = 64, learning_rate: float = 1e-3):
  from iib_jax import data as data_lib                # TensorFlow

  info = data_lib.load_info(data_dir)
  num_classes = int(info["num_classes"])
  steps = int(info["splits"]["train"]) // batch_size
  spec = methods.MethodSpec(MODALITIES, num_classes, 64, steps, epochs)
  method = methods.get_method("unimodal", {}, spec)
  model = build_model(MODALITIES, ENCODERS, num_classes, feature_dim=64, encoder_size="tiny",
                      **method.model)
  tx = train.make_optimizer("adam", learning_rate)

  def batches(split, train_mode, epoch=0):
    return _device(data_lib.make_dataset(
        data_dir, split, batch_size=batch_size if train_mode else eval_batch_size,
        train=train_mode, seed=seed + 1, epoch=epoch, **DATA_OPTIONS))

  example = next(iter(data_lib.make_dataset(data_dir, "validation", batch_size=2, train=False,
                                            **DATA_OPTIONS)))
  state = state_lib.create_train_state(model, tx, method, jax.random.key(seed + 1), example)
  train_step = train.make_train_step(model, tx, method)
  eval_step = train.make_eval_step(model, method)
  t0 = time.perf_counter()
  state, summary, _ = estimate.train_unimodal(
      train_step, eval_step, state, train_batches=lambda e: batches("train", True, e),
      val_batches=lambda: batches("validation", False), modalities=MODALITIES, epochs=epochs,
      patience=patience, log_every=10 ** 6, steps_per_epoch=steps, show_progress=False)
  record = estimate.estimate_budgets(eval_step, state, batches("train", False), MODALITIES)
  test = loop.evaluate(eval_step, state, batches("test", False), MODALITIES)
  return {"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
          "budgets": dict(zip(MODALITIES, np.round(record["budgets"], 4).tolist())),
          "beta": dict(zip(MODALITIES, np.round(record["beta"], 4).tolist())),
          "anchor": record["anchor"],
          "val_acc": {m: round(summary[m]["val_acc"], 4) for m in MODALITIES},
          "best_epoch": {m: summary[m]["best_epoch"] for m in MODALITIES},
          "test_acc": {m: round(test[f"acc_{m}"], 4) for m in MODALITIES},
          "load_avg": common.load_avg()}


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic_budgets", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dial", default="1.0", help="a dial in [0, 1], or 'none' (published data)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "iib_jax"))
  p.add_argument("--epochs", type=int, default=15)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  from data_prep import synthetic

  dial = None if args.dial.lower() == "none" else float(args.dial)
  t0 = time.perf_counter()
  data_dir = synthetic.ensure_synthetic(args.cache, dial=dial)
  print(f"data: {data_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
  rows = []
  for seed in common.int_list(args.seeds):
    rows.append(measure(data_dir, seed, epochs=args.epochs))
    print(json.dumps(rows[-1]), flush=True)
  beta = np.array([r["beta"]["audio"] for r in rows])
  spread = beta.std(ddof=1) if len(beta) > 1 else 0.0
  print(f"dial {args.dial}: β_audio {beta.mean():.3f} ± {spread:.3f} over {len(rows)} seeds "
        f"(min {beta.min():.3f})")
  if args.out:
    common.finish({"environment": common.environment(), "dial": dial, "data_dir": data_dir,
                   "rows": rows}, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
