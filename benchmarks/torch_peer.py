"""The field's standard model in PyTorch, timed in the same run as the iib-jax step.

  python -m benchmarks.torch_peer --out=bench/torch_peer.json                 # GPU, batch 32, 128
  python -m benchmarks.torch_peer --size=tiny                                 # CPU, seconds
  python -m benchmarks.torch_peer --dtypes=bfloat16 --batch_sizes=32 --channels_last

The PyTorch side is written the way the PyTorch toolkits of this field write it (OGM-GE, PMR,
AGM, MMPareto share one `AVClassifier`): a torchvision-topology ResNet-18 over the frames (the
[B, 3, T, H, W] clip permuted and folded into B·T images, features pooled over T, h, w), a
1-channel ResNet-18 over the [B, 1, 257, 188] spectrogram, concatenation, one Linear layer,
cross-entropy, SGD with momentum (or Adam); the step is `zero_grad`, forward, loss, `backward`,
`step`. It runs eagerly in float32, eagerly under `torch.autocast(dtype=torch.bfloat16)`
(optionally with channels_last tensors), and as `torch.compile` of the whole step function in
both dtypes. The iib-jax side is the `joint` and the `iibalance` step of the same encoders and
inputs (`benchmarks.train_step`), with the same optimiser. Every variant is timed alike: warmup,
then the median of synchronised steps. The ratios printed are PyTorch time / iib-jax time (> 1:
iib-jax is faster).

PyTorch is optional (`pip install -e ".[torch]"`); without it the command says so, writes a JSON
that records the skip, and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from typing import Any, Sequence

# JAX preallocates most of the GPU by default; PyTorch runs in the same process here.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

from benchmarks import common  # noqa: E402

CONFIG = "standard"
LEARNING_RATES = {"sgd": 1e-3, "adam": 1e-4}
COLUMNS = (("framework", "framework"), ("variant", "variant"), ("batch_size", "batch"),
           ("dtype", "dtype"), ("ms_median", "ms/step"), ("samples_per_s", "samples/s"),
           ("first_steps_s", "compile+warmup s"), ("load_1min", "load"))
RATIO_COLUMNS = (("batch_size", "batch"), ("dtype", "dtype"), ("torch_variant", "PyTorch"),
                 ("torch_ms", "PyTorch ms"), ("jax_method", "iib-jax"), ("jax_ms", "iib-jax ms"),
                 ("speedup", "PyTorch time / iib-jax time"), ("target", "target (H100)"))
# The targets for iibalance in bf16 on one H100, by (torch variant, batch).
TARGETS = {("eager_amp", 32): 2.0, ("compile", 32): 1.5, ("compile", 128): 1.3}


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def define_model(torch):
  """The PyTorch toolkits' audio-visual classifier (ResNet-18 × 2, concat fusion)."""
  nn = torch.nn
  F = torch.nn.functional

  class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != planes:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes))

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = F.relu(self.bn1(self.conv1(x)), inplace=True)
      out = self.bn2(self.conv2(out))
      return F.relu(out + identity, inplace=True)

  class ResNet(nn.Module):
    def __init__(self, in_channels, width=64, stage_sizes=(2, 2, 2, 2)):
      super().__init__()
      self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      layers, inplanes = [], width
      for stage, blocks in enumerate(stage_sizes):
        planes = width * 2 ** stage
        for block in range(blocks):
          layers.append(BasicBlock(inplanes, planes, 2 if stage > 0 and block == 0 else 1))
          inplanes = planes
      self.layers = nn.Sequential(*layers)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
      x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
      return self.layers(x)

  class AVClassifier(nn.Module):
    def __init__(self, num_classes, width=64, stage_sizes=(2, 2, 2, 2), channels_last=False):
      super().__init__()
      self.audio_net = ResNet(1, width, stage_sizes)
      self.visual_net = ResNet(3, width, stage_sizes)
      self.fusion = nn.Linear(2 * 8 * width, num_classes)
      self.channels_last = channels_last

    def forward(self, audio, visual):
      # audio [B, 1, H, W]; visual [B, 3, T, H, W] as the toolkits' datasets deliver it.
      b, c, t, h, w = visual.shape
      visual = visual.permute(0, 2, 1, 3, 4).contiguous().view(b * t, c, h, w)
      if self.channels_last:
        visual = visual.contiguous(memory_format=torch.channels_last)
        audio = audio.contiguous(memory_format=torch.channels_last)
      a = self.audio_net(audio)
      v = self.visual_net(visual)
      _, c, h, w = v.shape
      v = v.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
      a = torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)
      v = torch.flatten(F.adaptive_avg_pool3d(v, 1), 1)
      return self.fusion(torch.cat((a, v), 1))

  return AVClassifier


def torch_variants(dtype: str, modes: Sequence[str], channels_last: bool) -> list[dict]:
  """The PyTorch variants to time at one dtype."""
  amp = dtype == "bfloat16"
  out = []
  if "eager" in modes:
    out.append({"variant": "eager_amp" if amp else "eager", "compile": False,
                "channels_last": False})
    if channels_last:
      out.append({"variant": ("eager_amp" if amp else "eager") + "_channels_last",
                  "compile": False, "channels_last": True})
  if "compile" in modes:
    out.append({"variant": "compile", "compile": True, "channels_last": False})
    if channels_last:
      out.append({"variant": "compile_channels_last", "compile": True, "channels_last": True})
  return out


def time_torch(variant: dict, *, batch_size: int, dtype: str, size: str, optimizer: str,
               warmup: int, steps: int, seed: int = 0) -> dict[str, Any]:
  """Builds the PyTorch model and step for one variant and times it."""
  import torch

  # A fresh compiler cache per variant: each new optimiser instance would otherwise add a
  # recompilation of its step, and past torch._dynamo's recompile limit the step runs eagerly.
  torch._dynamo.reset()
  torch.manual_seed(seed)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = common.CONFIGS[CONFIG]
  shapes = config.input_shapes(size)
  tiny = size == "tiny"
  model = define_model(torch)(config.num_classes, width=8 if tiny else 64,
                              stage_sizes=(1, 1, 1, 1) if tiny else (2, 2, 2, 2),
                              channels_last=variant["channels_last"]).to(device)
  if variant["channels_last"]:
    model = model.to(memory_format=torch.channels_last)
  model.train()
  if optimizer == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATES["sgd"], momentum=0.9)
  else:
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATES["adam"])
  loss_fn = torch.nn.CrossEntropyLoss()
  t, h, w, c = shapes["video"]
  g = torch.Generator(device="cpu").manual_seed(seed)
  audio = torch.randn((batch_size, 1) + tuple(shapes["audio"]), generator=g).to(device)
  visual = torch.randn((batch_size, c, t, h, w), generator=g).to(device)
  label = torch.randint(0, config.num_classes, (batch_size,), generator=g).to(device)
  amp = dtype == "bfloat16"

  def step(audio, visual, label):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
      loss = loss_fn(model(audio, visual), label)
    loss.backward()
    opt.step()
    return loss

  fn = torch.compile(step) if variant["compile"] else step

  def run():
    loss = fn(audio, visual, label)
    if device == "cuda":
      torch.cuda.synchronize()
    return loss

  start = time.perf_counter()
  for _ in range(1 + warmup):
    loss = run()
  first = time.perf_counter() - start
  times = common.timed(run, steps)
  loss = float(run().detach())
  return {"first_steps_s": first, **common.summarize_times(times), "loss": loss,
          "torch_device": device}


def _release_torch_memory() -> None:
  """Returns the finished variant's GPU memory, so the next one (or JAX) can have it."""
  import gc

  import torch

  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def time_jax(method: str, *, batch_size: int, dtype: str, size: str, optimizer: str,
             warmup: int, steps: int) -> dict[str, Any]:
  from benchmarks import train_step

  start = time.perf_counter()
  bench = train_step.Bench(common.CONFIGS[CONFIG], method, size=size, batch_size=batch_size,
                           dtype=dtype, optimizer=optimizer)
  for _ in range(1 + warmup):
    bench.run()
  first = time.perf_counter() - start
  times = common.timed(bench.run, steps)
  loss = bench.loss()
  del bench
  return {"first_steps_s": first, **common.summarize_times(times), "loss": loss}


def ratios(rows: Sequence[dict]) -> list[dict]:
  """PyTorch time / iib-jax time for every pair at the same batch and dtype."""
  out = []
  for jax_row in rows:
    if jax_row["framework"] != "iib-jax" or "error" in jax_row:
      continue
    for torch_row in rows:
      if (torch_row["framework"] != "pytorch" or "error" in torch_row
          or (torch_row["batch_size"], torch_row["dtype"]) != (jax_row["batch_size"],
                                                                 jax_row["dtype"])):
        continue
      target = None
      if jax_row["variant"] == "iibalance" and jax_row["dtype"] == "bfloat16":
        kind = "compile" if torch_row["variant"].startswith("compile") else torch_row["variant"]
        target = TARGETS.get((kind, jax_row["batch_size"]))
      out.append({"batch_size": jax_row["batch_size"], "dtype": jax_row["dtype"],
                  "torch_variant": torch_row["variant"], "torch_ms": torch_row["ms_median"],
                  "jax_method": jax_row["variant"], "jax_ms": jax_row["ms_median"],
                  "speedup": torch_row["ms_median"] / jax_row["ms_median"],
                  "target": f"≥ {target}×" if target else "",
                  "target_value": target})
  return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.torch_peer", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(common.SIZES), default="paper")
  p.add_argument("--batch_sizes", type=common.int_list, default=None)
  p.add_argument("--dtypes", type=common.split_list, default=["float32", "bfloat16"])
  p.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="sgd",
                 help="sgd (momentum 0.9) is the toolkits' default; adam the paper's")
  p.add_argument("--torch_modes", type=common.split_list, default=["eager", "compile"],
                 help="eager and/or compile")
  p.add_argument("--channels_last", action="store_true",
                 help="also time eager and compile with channels_last tensors")
  p.add_argument("--jax_methods", type=common.split_list, default=["joint", "iibalance"])
  p.add_argument("--warmup", type=int, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  sizes = common.SIZES[args.size]
  args.batch_sizes = args.batch_sizes or list(sizes["batch_sizes"])
  # torch.compile settles over its first calls (it may recompile once): warm up longer.
  args.warmup = max(3, sizes["warmup"]) if args.warmup is None else args.warmup
  args.steps = sizes["steps"] if args.steps is None else args.steps
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if not torch_available():
    message = ("PyTorch is not installed: the PyTorch peer is skipped. Install it with "
               "pip install -e \".[torch]\" to compare (iib-jax alone: python -m "
               "benchmarks.train_step --configs=standard).")
    print(message)
    record = {"benchmark": "torch_peer", "skipped": message,
              "environment": common.environment(with_jax=False), "args": vars(args),
              "results": [], "ratios": []}
    return common.finish(record, args.out)

  import torch

  env = common.environment()
  env["torch_cuda"] = torch.version.cuda
  env["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                         else "cpu")
  env["torch_threads"] = torch.get_num_threads()
  print(f"PyTorch peer on {common.describe(env)}; PyTorch on {env['torch_device']}", flush=True)
  rows = []
  for batch_size in args.batch_sizes:
    for dtype in args.dtypes:
      jobs = [("iib-jax", {"variant": m}) for m in args.jax_methods]
      jobs += [("pytorch", v) for v in torch_variants(dtype, args.torch_modes,
                                                       args.channels_last)]
      for framework, variant in jobs:
        print(f"  {framework} {variant['variant']} batch {batch_size} {dtype} ...", flush=True)
        common_args = dict(batch_size=batch_size, dtype=dtype, size=args.size,
                           optimizer=args.optimizer, warmup=args.warmup, steps=args.steps)
        row = {"framework": framework, **variant, "batch_size": batch_size, "dtype": dtype,
               "optimizer": args.optimizer, "size": args.size}
        try:
          if framework == "iib-jax":
            row.update(time_jax(variant["variant"], **common_args))
          else:
            row.update(time_torch(variant, **common_args))
            _release_torch_memory()
          row["samples_per_s"] = batch_size / (row["ms_median"] / 1e3)
        except Exception as e:     # a compile failure or out of memory: record and go on
          row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
          print(f"    failed: {row['error'][:200]}", flush=True)
        load = common.load_avg()
        row.update(load_avg=load, load_1min=load[0] if load else None)
        rows.append(row)
  pairs = ratios(rows)
  record = {"benchmark": "torch_peer", "environment": env, "args": vars(args),
            "config": {"name": CONFIG, "description": common.CONFIGS[CONFIG].description,
                       "input_shapes": {m: list(s) for m, s in
                                        common.CONFIGS[CONFIG].input_shapes(args.size).items()}},
            "results": rows, "ratios": pairs}
  common.finish(record, args.out)
  print()
  print(common.table([r for r in rows if "error" not in r], COLUMNS))
  for r in rows:
    if "error" in r:
      print(f"failed: {r['framework']} {r['variant']} batch {r['batch_size']} {r['dtype']}: "
            f"{r['error']}")
  print("\nRatios (> 1: iib-jax faster):")
  print(common.table(pairs, RATIO_COLUMNS))
  print(f"\n{common.describe(env)}; load at end "
        f"{'/'.join(str(x) for x in env['load_avg_end'])}")
  if args.out:
    print(f"wrote {args.out}")
  return record


if __name__ == "__main__":
  main()
