"""What every benchmark shares: the machine record, peak FLOP/s, configurations, timing, output.

Every JSON a benchmark writes carries `environment` (device, versions, command line, cores, the
load average at start and end) and, per measured row, the load average when it was taken: on a
shared machine a rate means little without the load beside it.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

# Dense (no sparsity) peak tensor-core throughput in TFLOP/s, from NVIDIA's data sheets.
# "tf32" is what float32 matrix work runs at under JAX's default precision on these GPUs (XLA may
# use TF32 for float32 convolutions and dots); "fp32" is the plain CUDA-core rate.
# Matched against `device_kind` in order, first hit wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),       # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """Peak dense TFLOP/s of a device for a compute dtype, or None when unknown (e.g. a CPU).

  Args:
    device_kind: `jax.devices()[0].device_kind`, e.g. "NVIDIA H100 80GB HBM3".
    dtype: "bfloat16" (bf16 tensor cores) or "float32" (TF32 tensor cores: JAX's default
      precision).
  """
  key = {"bfloat16": "bf16", "float32": "tf32"}.get(dtype, dtype)
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return peaks.get(key)
  return None


def load_avg() -> list[float]:
  """1-, 5- and 15-minute load averages (all cores together), rounded."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return []


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def command_line() -> str:
  """How this process was started, as a shell command (`python -m benchmarks.x ...`)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = f"python -m {spec.name}" if spec is not None and spec.name else shlex.join(sys.argv[:1])
  return " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])


def versions(names: Sequence[str]) -> dict[str, str | None]:
  """Installed versions of the named distributions (None when absent); imports nothing."""
  from importlib import metadata

  out = {}
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def environment(argv: Sequence[str] | None = None, *, with_jax: bool = True) -> dict[str, Any]:
  """The machine, software and command of a benchmark run."""
  env: dict[str, Any] = {
      "command": command_line() if argv is None else " ".join(shlex.quote(a) for a in argv),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host_cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "usable_cores": usable_cores(),
      "load_avg_start": load_avg(),
      "python": sys.version.split()[0],
      "versions": versions(["jax", "jaxlib", "flax", "optax", "numpy", "tensorflow",
                            "tensorflow-cpu", "torch", "librosa", "av", "pillow"]),
  }
  if with_jax:
    import jax

    device = jax.devices()[0]
    env.update(device_kind=device.device_kind, platform=device.platform,
               device_count=jax.device_count(),
               default_matmul_precision=str(jax.config.jax_default_matmul_precision))
  return env


def finish(record: dict[str, Any], out: str | None) -> dict[str, Any]:
  """Adds the closing load average and writes the JSON (when `out` is given)."""
  record["environment"]["load_avg_end"] = load_avg()
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1, default=_jsonable)
      f.write("\n")
    os.replace(tmp, out)
  return record


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if dataclasses.is_dataclass(x):
    return dataclasses.asdict(x)
  return str(x)


def describe(env: Mapping[str, Any]) -> str:
  """One line for a table's caption: device, versions, cores, load."""
  v = env["versions"]
  device = (f"{env.get('device_count', 1)} × {env['device_kind']} ({env['platform']})"
            if "device_kind" in env else env["host_cpu"])
  soft = ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "optax", "torch", "tensorflow",
                                            "tensorflow-cpu")
                   if v.get(k))
  return (f"{device}; {env['usable_cores']} usable cores, load average "
          f"{'/'.join(str(x) for x in env['load_avg_start'])} at start; {soft}")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
  """A Markdown table of `rows` with (key, header) columns; floats get 3 significant digits."""

  def cell(x):
    if x is None:
      return "n/a"
    if isinstance(x, float):
      if x == 0 or 0.01 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
      return f"{x:.3g}"
    return str(x)

  lines = ["| " + " | ".join(h for _, h in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
  return "\n".join(lines)


def summarize_times(seconds: Sequence[float]) -> dict[str, float]:
  """Median, min and max of per-step wall times, in milliseconds."""
  ms = [1e3 * s for s in seconds]
  return {"ms_median": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms),
          "timed_steps": len(ms)}


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of `fn` (which must block until its work is done)."""
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def split_list(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
  return [int(t) for t in split_list(text)]


# ------------------------------------------------------------------------------------------------
# Model configurations (shared by train_step and torch_peer)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One model configuration of the benchmarks.

  Attributes:
    name: the configuration's key.
    description: what it is, for tables.
    encoders: encoder name per modality.
    num_classes: C.
    shapes: per-example input shape per modality at the paper's size.
    tiny_shapes: the same at the test size (with tiny encoders).
  """
  name: str
  description: str
  encoders: Mapping[str, str]
  num_classes: int
  shapes: Mapping[str, tuple[int, ...]]
  tiny_shapes: Mapping[str, tuple[int, ...]]

  def input_shapes(self, size: str) -> Mapping[str, tuple[int, ...]]:
    return self.shapes if size == "paper" else self.tiny_shapes


CONFIGS: dict[str, ModelConfig] = {
    "ks": ModelConfig(
        "ks", "Kinetics-Sounds/AVE (paper): ResNet-18 over 3×224² frames + 1D CNN over 1024×128 "
        "log-Mel", {"audio": "audio_cnn", "video": "resnet18"}, 31,
        {"audio": (1024, 128), "video": (3, 224, 224, 3)},
        {"audio": (64, 16), "video": (3, 32, 32, 3)}),
    "crema_d": ModelConfig(
        "crema_d", "CREMA-D (paper): MobileNetV2 over 2×224² frames + GRU over 300×128 log-Mel",
        {"audio": "gru", "video": "mobilenet_v2"}, 6,
        {"audio": (300, 128), "video": (2, 224, 224, 3)},
        {"audio": (20, 16), "video": (2, 32, 32, 3)}),
    "standard": ModelConfig(
        "standard", "field standard: ResNet-18 over 3×224² frames + ResNet-18 over a 1×257×188 "
        "spectrogram", {"audio": "resnet18_spec", "video": "resnet18"}, 31,
        {"audio": (257, 188), "video": (3, 224, 224, 3)},
        {"audio": (33, 24), "video": (3, 32, 32, 3)}),
}

# Batch sizes and step counts per size.
SIZES = {
    "paper": {"batch_sizes": (32, 128), "warmup": 3, "steps": 20, "feature_dim": 512,
              "encoder_size": "full"},
    "tiny": {"batch_sizes": (4, 8), "warmup": 1, "steps": 3, "feature_dim": 64,
             "encoder_size": "tiny"},
}

# The GPU step rate the input pipeline must sustain, by default: the anchor of 2,373
# samples/s for the train step at batch 32 in bfloat16. Quoted from the issue, not measured here.
ANCHOR_STEP_RATE = 2373.0
