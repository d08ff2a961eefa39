"""Speed of the jit-compiled train step: ms per step, samples/s, FLOPs per sample, fraction of peak.

  python -m benchmarks.train_step --out=bench/train_step.json            # paper sizes (GPU)
  python -m benchmarks.train_step --size=tiny                            # seconds on a CPU
  python -m benchmarks.train_step --configs=standard --dtypes=bfloat16 --batch_sizes=32,128,256 \\
      --method_overhead --out=bench/overhead.json
  python -m benchmarks.train_step --methods=all --isolate --out=bench/all_methods.json

Configurations (`--configs`, see `benchmarks.common.CONFIGS`): `ks` (the paper's Kinetics-Sounds and
AVE model: ResNet-18 over T = 3 frames of 224×224 + the 1D CNN over 1024×128 log-Mel), `crema_d`
(MobileNetV2 over T = 2 frames + the GRU over 300×128) and `standard` (the field's standard model:
ResNet-18 over 3 frames + ResNet-18 over a 1×257×188 spectrogram). `--size=tiny` swaps in the
width-8 encoders, 32×32 frames and short audio, so every configuration runs on a CPU in seconds.

Each row: the step is built exactly as training builds it (`make_state_init`, `make_train_step`,
state donated and threaded through), run once (compile), `--warmup` more times, then timed
`--steps` times, each step synchronised with `jax.block_until_ready`; the median is reported. A
second figure times the same number of steps dispatched back to back (one synchronisation at
the end), as the training loop runs them. FLOPs per sample are counted analytically
(`benchmarks.flops`); the fraction of peak uses 3 × forward FLOPs and the device's dense peak for
the compute dtype (bf16, or TF32 for float32), "n/a" where the peak is unknown (CPU).

`--method_overhead` adds the comparison the issue asks for: `iibalance` against `joint` on the
same model, batch and dtype, in the same process, their steps alternated one by one so that a
change of machine load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, flops as flops_lib
from iib_jax import methods as methods_lib, schema
from iib_jax.models import build_model
from iib_jax.models.encoders import ENCODER_INPUT
from iib_jax.state import count_params, make_state_init
from iib_jax.train import make_optimizer, make_train_step

MODALITIES = ("audio", "video")
# Budgets for the methods that need them (IIBalance's β, anchor and λ come from these); any
# distinct values do: the step's cost does not depend on them.
BUDGETS = (0.62, 0.41)
DEFAULT_METHODS = ("joint", "iibalance")
# Learning rates only matter for finiteness over a few steps.
LEARNING_RATES = {"adam": 1e-4, "adamw": 1e-4, "sgd": 1e-3}

COLUMNS = (("config", "config"), ("method", "method"), ("batch_size", "batch"),
           ("dtype", "dtype"), ("ms_median", "ms/step"), ("ms_pipelined", "ms/step pipelined"),
           ("samples_per_s", "samples/s"), ("vs_joint", "× joint time"),
           ("train_gflops_per_sample", "GFLOP/sample (3× fwd)"),
           ("achieved_tflops", "TFLOP/s"), ("peak_fraction", "of peak"),
           ("first_step_s", "compile+1st step s"), ("load_1min", "load"))
OVERHEAD_COLUMNS = (("config", "config"), ("batch_size", "batch"), ("dtype", "dtype"),
                    ("joint_ms", "joint ms"), ("iibalance_ms", "iibalance ms"),
                    ("overhead_pct", "overhead %"), ("target", "target"),
                    ("load_1min", "load"))


def method_spec(config: common.ModelConfig, size: str) -> methods_lib.MethodSpec:
  return methods_lib.MethodSpec(MODALITIES, config.num_classes, common.SIZES[size]["feature_dim"],
                                steps_per_epoch=100, total_epochs=50, budgets=BUDGETS)


def make_batch(config: common.ModelConfig, size: str, batch_size: int, seed: int = 0,
               frames_dtype: str = "float32") -> dict[str, np.ndarray]:
  """A batch of the configuration's shapes, labels and an all-ones mask: float32 inputs, or with
  frames_dtype='uint8' uint8 frames (normalised on the device, `iib_jax.data`'s option)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for m, shape in config.input_shapes(size).items():
    shape = (batch_size,) + tuple(shape)
    if frames_dtype == "uint8" and ENCODER_INPUT[config.encoders[m]] == "video":
      batch[m] = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
      batch[m] = rng.standard_normal(shape, dtype=np.float32)
  batch["label"] = rng.integers(0, config.num_classes, batch_size).astype(np.int32)
  batch["mask"] = np.ones(batch_size, np.float32)
  return batch


class Bench:
  """One compiled train step with its state and batch, ready to time.

  Attributes:
    step: the jitted, donating train step.
    state: the current train state (replaced after every step).
    batch: device arrays.
    model, method: what the step was built from.
  """

  def __init__(self, config: common.ModelConfig, method_name: str, *, size: str, batch_size: int,
               dtype: str, optimizer: str, seed: int = 0, frames_dtype: str = "float32"):
    spec = method_spec(config, size)
    self.method = methods_lib.get_method(method_name, {}, spec)
    sizes = common.SIZES[size]
    self.model = build_model(MODALITIES, dict(config.encoders), config.num_classes,
                             feature_dim=sizes["feature_dim"], encoder_size=sizes["encoder_size"],
                             dtype=dtype, **self.method.model)
    tx = make_optimizer(optimizer, LEARNING_RATES[optimizer])
    host = make_batch(config, size, batch_size, seed, frames_dtype)
    self.batch = jax.device_put(host)
    self.state = make_state_init(self.model, tx, self.method)(jax.random.key(seed), self.batch)
    self.step = make_train_step(self.model, tx, self.method)
    self.metrics = None

  def run(self) -> None:
    """One synchronised step."""
    self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))

  def run_pipelined(self, steps: int) -> float:
    """Seconds per step of `steps` steps dispatched back to back, synchronised once at the end."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))
    return (time.perf_counter() - start) / steps

  def loss(self) -> float:
    return float(jax.device_get(self.metrics["loss"]))

  def flops(self, config: common.ModelConfig, size: str) -> flops_lib.FlopCount:
    return _model_flops(config.name, size, tuple(sorted(self.method.model.items())), self)


_FLOPS_CACHE: dict = {}


def _model_flops(config_name, size, model_fields, bench: Bench) -> flops_lib.FlopCount:
  # The count depends on the architecture only (not on batch, dtype or optimiser).
  key = (config_name, size, model_fields)
  if key not in _FLOPS_CACHE:
    kwargs = bench.method.forward_kwargs(bench.method.init_state())
    _FLOPS_CACHE[key] = flops_lib.model_flops(bench.model.clone(dtype=jnp.float32),
                                              bench.batch, **kwargs)
  return _FLOPS_CACHE[key]


def measure(bench: Bench, warmup: int, steps: int) -> dict[str, Any]:
  """Compile + first step, warmup, then `steps` synchronised steps and `steps` pipelined ones."""
  start = time.perf_counter()
  bench.run()
  first = time.perf_counter() - start
  for _ in range(warmup):
    bench.run()
  times = common.timed(bench.run, steps)
  pipelined = bench.run_pipelined(steps)
  loss = bench.loss()
  return {"first_step_s": first, **common.summarize_times(times), "ms_pipelined": 1e3 * pipelined,
          "loss": loss, "finite": math.isfinite(loss)}


def row_for(config: common.ModelConfig, method: str, batch_size: int, dtype: str, optimizer: str,
            size: str, timing: Mapping[str, Any], count: flops_lib.FlopCount,
            params: int, device_kind: str) -> dict[str, Any]:
  samples_per_s = batch_size / (timing["ms_median"] / 1e3)
  achieved = count.train_flops * samples_per_s / 1e12
  peak = common.peak_tflops(device_kind, dtype)
  load = common.load_avg()
  return {
      "config": config.name, "method": method, "batch_size": batch_size, "dtype": dtype,
      "optimizer": optimizer, "size": size, **timing,
      "samples_per_s": samples_per_s,
      "samples_per_s_pipelined": batch_size / (timing["ms_pipelined"] / 1e3),
      "forward_gflops_per_sample": count.forward_flops / 1e9,
      "train_gflops_per_sample": count.train_flops / 1e9,
      "autodiff_gflops_per_sample": count.autodiff_flops / 1e9,
      "gflops_per_sample_by_module": {k: 2 * v / 1e9 for k, v in count.by_module.items()},
      "achieved_tflops": achieved, "peak_tflops": peak,
      "peak_fraction": achieved / peak if peak else None,
      "params": params, "load_avg": load, "load_1min": load[0] if load else None,
  }


def flops_table(args: argparse.Namespace) -> list[dict]:
  """Analytic FLOPs per sample of every (configuration, method), without compiling anything."""
  rows = []
  for name in args.configs:
    config = common.CONFIGS[name]
    for method_name in args.methods:
      method = methods_lib.get_method(method_name, {}, method_spec(config, args.size))
      sizes = common.SIZES[args.size]
      model = build_model(MODALITIES, dict(config.encoders), config.num_classes,
                          feature_dim=sizes["feature_dim"], encoder_size=sizes["encoder_size"],
                          **method.model)
      example = {m: jax.ShapeDtypeStruct((1,) + tuple(s), np.float32)
                 for m, s in config.input_shapes(args.size).items()}
      count = flops_lib.model_flops(model, example,
                                    **method.forward_kwargs(method.init_state()))
      rows.append({"config": name, "method": method_name,
                   "forward_gflops_per_sample": count.forward_flops / 1e9,
                   "train_gflops_per_sample": count.train_flops / 1e9,
                   "autodiff_gflops_per_sample": count.autodiff_flops / 1e9,
                   "gflops_per_sample_by_module": {k: 2 * v / 1e9
                                                   for k, v in count.by_module.items()}})
  return rows


FLOPS_COLUMNS = (("config", "config"), ("method", "method"),
                 ("forward_gflops_per_sample", "forward GFLOP"),
                 ("train_gflops_per_sample", "train GFLOP (3× fwd)"),
                 ("autodiff_gflops_per_sample", "train GFLOP (no input grad)"))


def interleaved_overhead(a: Bench, b: Bench, steps: int) -> tuple[list[float], list[float]]:
  """Per-step seconds of two steps timed alternately (a, b, a, b, ...)."""
  times_a, times_b = [], []
  for _ in range(steps):
    times_a += common.timed(a.run, 1)
    times_b += common.timed(b.run, 1)
  return times_a, times_b


def run_group(config: common.ModelConfig, batch_size: int, dtype: str, args: argparse.Namespace,
              device_kind: str) -> tuple[list[dict], list[dict]]:
  """Every method at one (configuration, batch, dtype); the overhead row when asked for."""
  rows, overhead = [], []
  kept: dict[str, Bench] = {}
  for method in args.methods:
    print(f"  {config.name} {method} batch {batch_size} {dtype} ...", flush=True)
    try:
      bench = Bench(config, method, size=args.size, batch_size=batch_size, dtype=dtype,
                    optimizer=args.optimizer, frames_dtype=args.frames_dtype)
      timing = measure(bench, args.warmup, args.steps)
      count = bench.flops(config, args.size)
      row = row_for(config, method, batch_size, dtype, args.optimizer, args.size, timing, count,
                    count_params(bench.state.params)["total"], device_kind)
    except Exception as e:     # e.g. out of memory at a large batch: record it and go on
      rows.append({"config": config.name, "method": method, "batch_size": batch_size,
                   "dtype": dtype, "optimizer": args.optimizer, "size": args.size,
                   "error": f"{type(e).__name__}: {str(e)[:500]}", "load_avg": common.load_avg()})
      print(f"    failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
      continue
    row["frames_dtype"] = args.frames_dtype
    rows.append(row)
    if args.method_overhead and method in ("joint", "iibalance"):
      kept[method] = bench
    else:
      del bench
  joint = next((r for r in rows if r["method"] == "joint" and "error" not in r), None)
  for r in rows:
    if joint is not None and "error" not in r:
      r["vs_joint"] = r["ms_median"] / joint["ms_median"]
  if args.method_overhead and len(kept) == 2:
    times_j, times_i = interleaved_overhead(kept["joint"], kept["iibalance"], args.steps)
    j, i = common.summarize_times(times_j), common.summarize_times(times_i)
    load = common.load_avg()
    overhead.append({
        "config": config.name, "batch_size": batch_size, "dtype": dtype,
        "optimizer": args.optimizer, "size": args.size,
        "joint_ms": j["ms_median"], "iibalance_ms": i["ms_median"],
        "joint_ms_min": j["ms_min"], "iibalance_ms_min": i["ms_min"],
        "overhead_pct": 100 * (i["ms_median"] / j["ms_median"] - 1), "timed_steps": args.steps,
        "target": "≤ 5% (GPU)", "load_avg": load, "load_1min": load[0] if load else None})
  kept.clear()
  return rows, overhead


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(common.SIZES), default="paper",
                 help="paper: full encoders at the paper's input sizes; tiny: CPU-sized")
  p.add_argument("--configs", type=common.split_list, default=list(common.CONFIGS),
                 help=f"comma-separated, from {sorted(common.CONFIGS)}")
  p.add_argument("--methods", type=common.split_list, default=list(DEFAULT_METHODS),
                 help="comma-separated method names, or 'all' (every registered method)")
  p.add_argument("--batch_sizes", type=common.int_list, default=None,
                 help="comma-separated (default: 32,128 at paper size, 4,8 tiny)")
  p.add_argument("--dtypes", type=common.split_list, default=["float32", "bfloat16"])
  p.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="adam",
                 help="adam is the paper's; sgd (momentum 0.9) is most baselines' own")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first")
  p.add_argument("--steps", type=int, default=None, help="timed steps (the median is reported)")
  p.add_argument("--method_overhead", action="store_true",
                 help="also time iibalance against joint alternately (adds both methods)")
  p.add_argument("--isolate", action="store_true",
                 help="each (config, batch, dtype) in its own process")
  p.add_argument("--flops_only", action="store_true",
                 help="only count the FLOPs per sample (no compilation, no timing)")
  p.add_argument("--frames_dtype", choices=schema.FRAMES_DTYPES, default="float32",
                 help="frames as the input pipeline ships them: normalised float32, or uint8 "
                 "normalised inside the step (iib_jax.data's frames_dtype)")
  p.add_argument("--out", default=None, help="write the JSON here")
  args = p.parse_args(argv)
  sizes = common.SIZES[args.size]
  args.batch_sizes = args.batch_sizes or list(sizes["batch_sizes"])
  args.warmup = sizes["warmup"] if args.warmup is None else args.warmup
  args.steps = sizes["steps"] if args.steps is None else args.steps
  if args.methods == ["all"]:
    args.methods = list(methods_lib.METHODS)
  if args.method_overhead:
    args.methods = list(dict.fromkeys(["joint", "iibalance"] + args.methods))
  for name in args.methods:
    if name not in methods_lib.METHODS:
      p.error(f"unknown method {name!r}; accepted: {sorted(methods_lib.METHODS)} or all")
  for name in args.configs:
    if name not in common.CONFIGS:
      p.error(f"unknown config {name!r}; accepted: {sorted(common.CONFIGS)}")
  for dtype in args.dtypes:
    if dtype not in ("float32", "bfloat16"):
      p.error(f"--dtypes accepts float32 and bfloat16, got {dtype!r}")
  return args


def child_argv(argv: Sequence[str]) -> list[str]:
  """`argv` without the flags that `--isolate` sets per child (and without `--isolate`)."""
  drop = ("--out", "--configs", "--batch_sizes", "--dtypes")
  base, skip = [], False
  for a in argv:
    if skip:
      skip = False
      continue
    name = a.split("=", 1)[0]
    if name == "--isolate":
      continue
    if name in drop:
      skip = "=" not in a               # "--out x.json": drop the value too
      continue
    base.append(a)
  return base


def _isolated(args: argparse.Namespace, argv: Sequence[str]) -> tuple[list[dict], list[dict]]:
  """Runs every (config, batch, dtype) in a child process; returns their rows."""
  base = child_argv(argv)
  rows, overhead = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for config in args.configs:
      for batch_size in args.batch_sizes:
        for dtype in args.dtypes:
          out = os.path.join(tmp, f"{config}_{batch_size}_{dtype}.json")
          cmd = [sys.executable, "-m", "benchmarks.train_step", *base, f"--configs={config}",
                 f"--batch_sizes={batch_size}", f"--dtypes={dtype}", f"--out={out}"]
          proc = subprocess.run(cmd)
          if proc.returncode != 0 or not os.path.exists(out):
            rows.append({"config": config, "batch_size": batch_size, "dtype": dtype,
                         "error": f"child process exited with {proc.returncode}"})
            continue
          with open(out) as f:
            record = json.load(f)
          rows += record["results"]
          overhead += record["method_overhead"]
  return rows, overhead


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  env = common.environment()
  device_kind = env["device_kind"]
  if args.flops_only:
    rows = flops_table(args)
    record = common.finish({"benchmark": "train_step_flops", "environment": env,
                            "args": vars(args), "results": rows}, args.out)
    print(common.table(rows, FLOPS_COLUMNS))
    return record
  print(f"train step benchmark on {common.describe(env)}", flush=True)
  if args.isolate:
    rows, overhead = _isolated(args, argv)
  else:
    rows, overhead = [], []
    for name in args.configs:
      for batch_size in args.batch_sizes:
        for dtype in args.dtypes:
          r, o = run_group(common.CONFIGS[name], batch_size, dtype, args, device_kind)
          rows += r
          overhead += o
  record = {"benchmark": "train_step", "environment": env,
            "args": {k: v for k, v in vars(args).items()},
            "configs": {n: {"description": common.CONFIGS[n].description,
                            "encoders": dict(common.CONFIGS[n].encoders),
                            "input_shapes": {m: list(s) for m, s in
                                             common.CONFIGS[n].input_shapes(args.size).items()}}
                        for n in args.configs},
            "results": rows, "method_overhead": overhead}
  common.finish(record, args.out)
  print()
  print(common.table([r for r in rows if "error" not in r], COLUMNS))
  for r in rows:
    if "error" in r:
      print(f"failed: {r['config']} {r.get('method', '')} batch {r['batch_size']} "
            f"{r['dtype']}: {r['error']}")
  if overhead:
    print("\nMethod overhead (iibalance vs joint, alternated steps):")
    print(common.table(overhead, OVERHEAD_COLUMNS))
  print(f"\n{common.describe(record['environment'])}; load at end "
        f"{'/'.join(str(x) for x in record['environment']['load_avg_end'])}")
  if args.out:
    print(f"wrote {args.out}")
  return record


if __name__ == "__main__":
  main()
