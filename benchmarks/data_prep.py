"""Clips/s of data_prep (raw videos → TFRecords) per worker, and its scaling with workers.

  python -m benchmarks.data_prep --out=bench/data_prep.json      # 224×224 frames, 1 and all cores
  python -m benchmarks.data_prep --size=tiny                         # 32×32, seconds
  python -m benchmarks.data_prep --workers=1,2,4,8,16

Times `data_prep.tfrecords.prepare` end to end, as `python -m data_prep.kinetics_sounds` runs it:
listing, decoding every clip with PyAV (frames resampled to `--fps`, resized, JPEG-encoded; audio
to 16 kHz mono), the log-Mel features (the `iibalance` preset), serialisation and the sharded,
atomic TFRecord writes, into a fresh output directory each time. With 1 worker the clips are
decoded in the writing process; with W > 1, W spawned processes decode and the parent writes
(their start-up is part of the time, as it is of a real run). TensorFlow and tensorflow-datasets
are imported before the clock starts. The raw dataset is the synthetic one (`data_prep.synthetic`:
80 clips of 3 s at 8 fps with 224×224 frames, or 12 tiny ones), generated once into
`--cache_dir`.

A per-stage split of one worker's time (audio decode, video decode + JPEG encode, features) is
measured on a few clips beside it. Needs the data extra (TensorFlow, librosa, PyAV).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

from benchmarks import common

SIZES = {
    "paper": dict(image_size=224, num_classes=10, clips_per_class=8, duration=3.0, fps=8.0,
                  stage_clips=5),
    "tiny": dict(image_size=32, num_classes=3, clips_per_class=4, duration=1.0, fps=4.0,
                 stage_clips=2),
}
COLUMNS = (("workers", "workers"), ("clips", "clips"), ("seconds", "s"),
           ("clips_per_s", "clips/s"), ("clips_per_s_per_worker", "clips/s per worker"),
           ("speedup_vs_1", "speedup vs 1 worker"), ("load_1min", "load"))


def raw_dataset(cache_dir: str, size: str) -> str:
  """The synthetic raw dataset (videos + split files), generated once."""
  import json

  from data_prep import synthetic

  s = SIZES[size]
  raw = os.path.join(cache_dir, f"data_prep_{size}", "raw")
  args = dict(num_classes=s["num_classes"], clips_per_class=s["clips_per_class"],
              duration=s["duration"], fps=s["fps"], size=s["image_size"])
  info = os.path.join(raw, "synthetic.json")
  if os.path.exists(info):
    with open(info) as f:
      have = json.load(f)
    if all(have.get(k) == v for k, v in args.items()):
      return raw
    shutil.rmtree(raw)
  synthetic.generate(raw, **args, workers=common.usable_cores())
  return raw


def prepare_config(size: str):
  from data_prep import features
  from data_prep.examples import PrepareConfig

  s = SIZES[size]
  return PrepareConfig(audio=features.resolve_preset("iibalance"), fps=s["fps"],
                       image_size=(s["image_size"], s["image_size"]),
                       audio_frames=int(round(s["duration"] * 100)), clips_per_shard=16)


def time_prepare(raw: str, size: str, workers: int) -> dict[str, Any]:
  """One full preparation into a fresh directory; wall seconds and clips/s."""
  from data_prep import kinetics_sounds
  from data_prep.tfrecords import _import_tf, prepare

  # Importing the writer's libraries (TensorFlow, tensorflow-datasets for the metadata) is a
  # one-off cost of the process, not work per clip.
  _import_tf()
  import tensorflow_datasets  # noqa: F401
  listing = kinetics_sounds.list_clips(raw, val_fraction=0.1, seed=0, name="synthetic")
  clips = sum(len(c) for c in listing.splits.values())
  with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    prepare(listing, out, prepare_config(size), workers=workers, max_skip_fraction=0.0,
            progress=False, log=lambda *a: None)
    seconds = time.perf_counter() - start
  load = common.load_avg()
  return {"workers": workers, "clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
          "clips_per_s_per_worker": clips / seconds / workers, "load_avg": load,
          "load_1min": load[0] if load else None}


def time_stages(raw: str, size: str, clips: int) -> dict[str, float]:
  """Milliseconds per clip of each stage of one worker's work, over the first `clips` clips."""
  from data_prep import features, kinetics_sounds, media

  config = prepare_config(size)
  listing = kinetics_sounds.list_clips(raw, val_fraction=0.1, seed=0, name="synthetic")
  chosen = sorted((c for cs in listing.splits.values() for c in cs),
                  key=lambda c: c.clip_id)[:clips]
  totals = {"audio_decode": 0.0, "video_decode_resize_jpeg": 0.0, "features": 0.0}
  media.decode_audio(chosen[0].video_path, sample_rate=16000)      # librosa's first import
  for clip in chosen:
    t0 = time.perf_counter()
    wave = media.decode_audio(clip.video_path, sample_rate=int(config.audio["sample_rate"]))
    t1 = time.perf_counter()
    media.decode_video(clip.video_path, fps=config.fps, size=config.image_size,
                       jpeg_quality=config.jpeg_quality)
    t2 = time.perf_counter()
    features.compute_features(wave, config.audio)
    t3 = time.perf_counter()
    totals["audio_decode"] += t1 - t0
    totals["video_decode_resize_jpeg"] += t2 - t1
    totals["features"] += t3 - t2
  return {k: 1e3 * v / len(chosen) for k, v in totals.items()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.data_prep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--workers", type=common.int_list, default=None,
                 help="worker counts (default: 1 and every usable core)")
  p.add_argument("--cache_dir", default=os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "iib_jax_bench"))
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.workers is None:
    args.workers = sorted({1, common.usable_cores()})
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  env = common.environment(with_jax=False)
  print(f"data_prep benchmark on {common.describe(env)}", flush=True)
  start = time.perf_counter()
  raw = raw_dataset(args.cache_dir, args.size)
  print(f"raw dataset ready in {time.perf_counter() - start:.0f} s: {raw}", flush=True)
  rows = []
  for workers in args.workers:
    print(f"  prepare with {workers} worker(s) ...", flush=True)
    rows.append(time_prepare(raw, args.size, workers))
  one = next((r for r in rows if r["workers"] == 1), None)
  for r in rows:
    r["speedup_vs_1"] = r["clips_per_s"] / one["clips_per_s"] if one else None
  stages = time_stages(raw, args.size, SIZES[args.size]["stage_clips"])
  record = {"benchmark": "data_prep", "environment": env, "args": vars(args), "raw_dir": raw,
            "dataset": dict(SIZES[args.size], preset="iibalance"), "results": rows,
            "stages_ms_per_clip": stages}
  common.finish(record, args.out)
  print()
  print(common.table(rows, COLUMNS))
  print("\nOne worker's time per clip: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()))
  print(f"\n{common.describe(env)}; load at end "
        f"{'/'.join(str(x) for x in env['load_avg_end'])}")
  if args.out:
    print(f"wrote {args.out}")
  return record


if __name__ == "__main__":
  main()
