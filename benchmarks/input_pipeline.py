"""Clips/s per CPU core of the tf.data pipeline, against the PyTorch toolkits' per-item loader.

  python -m benchmarks.input_pipeline --out=bench/input_pipeline.json   # 224×224, 1 and all cores
  python -m benchmarks.input_pipeline --size=tiny                          # 32×32, seconds
  python -m benchmarks.input_pipeline --step_rate=2373 --cores=1,2,4

Both loaders produce the same training batch from the same clips: T = 3 frames, each randomly
resized-cropped to `--image_size` and randomly flipped, ImageNet-normalised, float32, with the
clip's audio as a 257-bin STFT log-magnitude spectrogram (OGM-GE's CREMA-D front-end, 188 × 257).

* tfdata (`iib_jax.data.make_tf_dataset`, train mode): reads the prepared TFRecords, in which
  the frames are stored as JPEGs and the spectrogram was computed once by data_prep; per clip it
  parses the record, samples 3 frames, decodes them, crops, flips and normalises, and crops the
  stored spectrogram. Training decodes only each frame's crop box (and a 2-pixel margin).
* tfdata_uint8: the same with `frames_dtype="uint8"`: the frames leave the pipeline as uint8
  after the crop and the model normalises them on the device (`iib_jax.models`), so the host
  does no float32 normalisation and moves a quarter of the bytes.
* per_item (what `Dataset.__getitem__` of OGM-GE/PMR/AGM does, emulated with numpy, PIL and
  librosa, no torch): per clip it opens 3 JPEG files with PIL, applies torchvision's
  RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, loads the wav with
  `librosa.load(sr=22050)`, tiles it to 3 s, clips it to [-1, 1] and computes
  `log(|librosa.stft(n_fft=512, hop_length=353)| + 1e-7)`; items are stacked into batches as
  `default_collate` does. Its wavs are stored at 22.05 kHz, so nothing is resampled: the
  per-item loader at its cheapest.
* per_item_resample: the same with 16 kHz wavs, which `librosa.load(sr=22050)` resamples on
  every read, as the toolkits' CREMA-D loaders do with CREMA-D's 16 kHz files.

The per-item loaders' JPEG files are the very JPEG bytes stored in the TFRecords (same size, same
quality), and their wavs are decoded from the same source videos. The dataset is the synthetic
one (`data_prep.synthetic`) generated at the frame size, prepared once with the `ogm_ge_stft`
preset into `--cache_dir`.

Each measurement runs in a child process pinned to N cores (`os.sched_setaffinity`, like
`taskset`). tf.data gets a private thread pool of N threads (`threading.private_threadpool_size`)
and an autotune budget of N cores, and is measured at each of `--cores`. The per-item loaders run
on one core: a DataLoader worker is one such process, and N workers are N independent copies
(their throughput adds up, less the cost of moving batches between processes, which this
emulation does not model). Rates are clips/s after one warmup batch. From the 1-core rates the
report derives how many cores each loader needs to feed `--step_rate` samples/s (default: the
issue's anchor of 2,373 samples/s, a GPU step rate quoted from the issue, not measured here),
assuming linear scaling over cores. Needs the data extra (TensorFlow, librosa, PyAV, Pillow).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import common

SIZES = {
    # Source frames at the output size; 3 s clips at 8 fps (24 stored frames per clip).
    "paper": dict(image_size=224, num_classes=10, clips_per_class=16, duration=3.0, fps=8.0,
                  batch_size=32, batches=16),
    "tiny": dict(image_size=32, num_classes=3, clips_per_class=6, duration=1.0, fps=4.0,
                 batch_size=4, batches=4),
}
NUM_FRAMES = 3
SAMPLE_RATE = 22050            # OGM-GE's librosa.load rate
WAV_RATES = (22050, 16000)     # stored wav rates: no resampling, and resampling per read
# tf.data loaders -> the frames dtype they ship; per-item loaders -> their stored wav rate.
TFDATA = {"tfdata": "float32", "tfdata_uint8": "uint8"}
LOADERS = {**TFDATA, "per_item": 22050, "per_item_resample": 16000}
STFT = dict(n_fft=512, hop_length=353)
SECONDS = 3.0
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
COLUMNS = (("loader", "loader"), ("cores", "cores"), ("clips_per_s", "clips/s"),
           ("clips_per_s_per_core", "clips/s per core"), ("ms_per_batch", "ms/batch"),
           ("load_1min", "load"))


# ------------------------------------------------------------------------------------------------
# The dataset, prepared once.


def prepare(cache_dir: str, size: str, workers: int | None = None) -> dict[str, str]:
  """The synthetic dataset as TFRecords and as per-item files (JPEG frames + wavs), cached.

  Returns:
    {"data_dir": prepared TFRecords, "raw_dir": the source videos, "item_dir": the per-item
    loader's files (index.json, frames/<clip>/NNNNN.jpg, audio<rate>/<clip>.wav)}.
  """
  from data_prep import synthetic

  s = SIZES[size]
  root = os.path.join(cache_dir, f"input_pipeline_{size}")
  data_dir = synthetic.ensure_synthetic(
      root, num_classes=s["num_classes"], clips_per_class=s["clips_per_class"],
      duration=s["duration"], fps=s["fps"], size=s["image_size"], preset="ogm_ge_stft",
      clips_per_shard=16, workers=workers)
  # <cache>/prepared/<name> beside <cache>/raw (the dial's cache when the generator has one).
  raw_dir = os.path.join(os.path.dirname(os.path.dirname(data_dir)), "raw")
  item_dir = os.path.join(root, "per_item")
  if not os.path.exists(os.path.join(item_dir, "index.json")):
    _write_per_item(data_dir, raw_dir, item_dir)
  return {"data_dir": data_dir, "raw_dir": raw_dir, "item_dir": item_dir}


def _write_per_item(data_dir: str, raw_dir: str, item_dir: str) -> None:
  """The train split's stored JPEG frames as files, and each clip's audio as wavs at 22.05 kHz
  (read without resampling) and 16 kHz (resampled on every read, as the toolkits' CREMA-D)."""
  import tensorflow as tf

  from data_prep import media, synthetic
  from iib_jax import schema

  info = schema.load_info(data_dir)
  items = []
  for rate in WAV_RATES:
    os.makedirs(os.path.join(item_dir, f"audio{rate}"), exist_ok=True)
  for path in info["files"]["train"]:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ex = tf.train.Example.FromString(record).features.feature
      clip_id = ex[schema.CLIP_ID].bytes_list.value[0].decode()
      label = int(ex[schema.LABEL].int64_list.value[0])
      frames = list(ex[schema.VIDEO_FRAMES].bytes_list.value)
      frame_dir = os.path.join(item_dir, "frames", clip_id)
      os.makedirs(frame_dir, exist_ok=True)
      for i, jpeg in enumerate(frames):
        with open(os.path.join(frame_dir, f"{i:05d}.jpg"), "wb") as f:
          f.write(jpeg)
      video = os.path.join(raw_dir, "videos", clip_id + ".mp4")
      for rate in WAV_RATES:
        wave = media.decode_audio(video, sample_rate=rate)
        synthetic.write_wav(os.path.join(item_dir, f"audio{rate}", clip_id + ".wav"), wave, rate)
      items.append({"clip_id": clip_id, "label": label, "num_frames": len(frames)})
  items.sort(key=lambda x: x["clip_id"])
  tmp = os.path.join(item_dir, "index.json.tmp")
  with open(tmp, "w") as f:
    json.dump(items, f)
  os.replace(tmp, os.path.join(item_dir, "index.json"))


# ------------------------------------------------------------------------------------------------
# The per-item loader of the PyTorch toolkits, without torch.


class PerItemDataset:
  """`__getitem__` as OGM-GE's datasets write it, with numpy/PIL/librosa in place of torch."""

  def __init__(self, item_dir: str, image_size: int, num_frames: int = NUM_FRAMES,
               wav_rate: int = SAMPLE_RATE, seed: int = 0):
    with open(os.path.join(item_dir, "index.json")) as f:
      self.items = json.load(f)
    self.dir = item_dir
    self.size = image_size
    self.num_frames = num_frames
    self.audio_dir = os.path.join(item_dir, f"audio{wav_rate}")
    self.rng = np.random.default_rng(seed)

  def __len__(self) -> int:
    return len(self.items)

  def _random_resized_crop(self, img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params + resized_crop (PIL bilinear)."""
    from PIL import Image

    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
      target = area * self.rng.uniform(*scale)
      aspect = math.exp(self.rng.uniform(*log_ratio))
      w = int(round(math.sqrt(target * aspect)))
      h = int(round(math.sqrt(target / aspect)))
      if 0 < w <= width and 0 < h <= height:
        i = int(self.rng.integers(0, height - h + 1))
        j = int(self.rng.integers(0, width - w + 1))
        break
    else:                                   # centre crop fallback
      w, h = width, height
      i, j = 0, 0
    return img.resize((self.size, self.size), Image.BILINEAR, box=(j, i, j + w, i + h))

  def __getitem__(self, index: int):
    import librosa
    from PIL import Image

    item = self.items[index]
    clip = item["clip_id"]
    n = item["num_frames"]
    chosen = np.sort(self.rng.choice(n, size=min(self.num_frames, n), replace=False))
    frames = []
    for k in chosen:
      img = Image.open(os.path.join(self.dir, "frames", clip, f"{k:05d}.jpg")).convert("RGB")
      img = self._random_resized_crop(img)
      if self.rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
      x = np.asarray(img, np.float32) / 255.0                     # ToTensor
      frames.append(((x - MEAN) / STD).transpose(2, 0, 1))         # Normalize, [3, H, W]
    visual = np.stack(frames, axis=1)                                # [3, T, H, W]
    samples, _ = librosa.load(os.path.join(self.audio_dir, clip + ".wav"), sr=SAMPLE_RATE)
    length = int(SAMPLE_RATE * SECONDS)
    samples = np.tile(samples, int(math.ceil(length / len(samples))))[:length]
    samples = np.clip(samples, -1.0, 1.0)
    spec = librosa.stft(samples, **STFT)
    spec = np.log(np.abs(spec) + 1e-7)                               # [257, 188]
    return spec[None].astype(np.float32), visual, item["label"]


def collate(items) -> dict[str, np.ndarray]:
  audio, visual, label = zip(*items)
  return {"audio": np.stack(audio), "visual": np.stack(visual),
          "label": np.asarray(label, np.int64)}


def per_item_batches(item_dir: str, image_size: int, batch_size: int, wav_rate: int,
                     seed: int = 0):
  """Endless shuffled batches built item by item in this process (one DataLoader worker)."""
  dataset = PerItemDataset(item_dir, image_size, wav_rate=wav_rate, seed=seed)
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(dataset))
    for b in range(len(order) // batch_size):
      yield collate([dataset[i] for i in order[b * batch_size:(b + 1) * batch_size]])


# ------------------------------------------------------------------------------------------------
# Measurement (child processes).


def _pin(cores: int) -> list[int]:
  if hasattr(os, "sched_setaffinity"):
    chosen = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, chosen)
    return chosen
  return []


def _on_cores(ds, cores: int):
  """`ds`, repeated, with a private pool of `cores` threads and an autotune budget of `cores`."""
  import tensorflow as tf

  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  options.autotune.cpu_budget = cores
  return ds.repeat().with_options(options).as_numpy_iterator()


def tfdata_batches(data_dir: str, image_size: int, batch_size: int, cores: int,
                   frames_dtype: str = "float32"):
  from iib_jax import data

  ds = data.make_tf_dataset(data_dir, "train", batch_size=batch_size, train=True,
                            num_frames=NUM_FRAMES, image_size=image_size,
                            modalities={"audio": "audio", "video": "video"},
                            frames_dtype=frames_dtype, process_index=0, process_count=1)
  return _on_cores(ds, cores)


def stage_times(data_dir: str, image_size: int, batch_size: int, batches: int,
                frames_dtype: str) -> list[dict[str, Any]]:
  """ms per clip of the training op list cut after each op (one thread; runs in the child)."""
  from iib_jax import data

  info = data.load_info(data_dir)
  ops = data.default_ops(info, train=True, stored=["audio", "video"], num_frames=NUM_FRAMES,
                         image_size=image_size, frames_dtype=frames_dtype)
  out = []
  for k in range(1, len(ops) + 1):
    ds = data.make_tf_dataset(data_dir, "train", batch_size=batch_size, train=True,
                              ops=ops[:k], modalities={"audio": "audio", "video": "video"},
                              process_index=0, process_count=1)
    it = _on_cores(ds, 1)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    out.append({"up_to": ops[k - 1].op_name,
                "ms_per_clip": 1e3 * (time.perf_counter() - start) / (batches * batch_size)})
  return out


def measure_child(loader: str, cores: int, paths: dict, image_size: int, batch_size: int,
                  batches: int) -> dict[str, Any]:
  """Runs in the pinned child: one warmup batch, then `batches` timed batches."""
  pinned = _pin(cores)
  if loader in TFDATA or loader.startswith("stages:"):
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(1)
  if loader.startswith("stages:"):
    frames_dtype = loader.split(":", 1)[1]
    return {"loader": loader, "cores": 1, "pinned_cpus": pinned, "frames_dtype": frames_dtype,
            "stages": stage_times(paths["data_dir"], image_size, batch_size, batches,
                                  frames_dtype), "load_avg": common.load_avg()}
  if loader in TFDATA:
    it = tfdata_batches(paths["data_dir"], image_size, batch_size, cores, TFDATA[loader])
  else:
    it = per_item_batches(paths["item_dir"], image_size, batch_size, LOADERS[loader])
  first = next(it)
  shapes = {k: list(v.shape) for k, v in first.items() if hasattr(v, "shape")}
  dtypes = {k: str(v.dtype) for k, v in first.items() if hasattr(v, "dtype")}
  start = time.perf_counter()
  clips = 0
  for _ in range(batches):
    clips += len(next(it)["label"])
  seconds = time.perf_counter() - start
  load = common.load_avg()
  return {"loader": loader, "cores": cores, "pinned_cpus": pinned, "clips": clips,
          "seconds": seconds, "clips_per_s": clips / seconds,
          "clips_per_s_per_core": clips / seconds / cores,
          "ms_per_batch": 1e3 * seconds / batches, "batch_shapes": shapes, "batch_dtypes": dtypes,
          "load_avg": load, "load_1min": load[0] if load else None}


def run_child(loader: str, cores: int, paths: dict, image_size: int, batch_size: int,
              batches: int) -> dict[str, Any]:
  env = dict(os.environ)
  for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    env[name] = "1"          # one thread per worker process, as the cores are counted
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  cmd = [sys.executable, "-m", "benchmarks.input_pipeline", "--child", loader,
         f"--child_cores={cores}", f"--child_paths={json.dumps(paths)}",
         f"--image_size={image_size}", f"--batch_size={batch_size}", f"--batches={batches}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    return {"loader": loader, "cores": cores,
            "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
  return json.loads(lines[-1])


def cores_needed(rows: Sequence[dict], step_rate: float) -> list[dict]:
  """Cores each loader needs for `step_rate` samples/s, from its 1-core rate (linear scaling)."""
  out = []
  for loader in LOADERS:
    one = next((r for r in rows if r["loader"] == loader and r["cores"] == 1
                and "error" not in r), None)
    if one is None:
      continue
    out.append({"loader": loader, "clips_per_s_per_core": one["clips_per_s"],
                "step_rate": step_rate, "cores_needed": step_rate / one["clips_per_s"],
                "sustains_with_16_cores": 16 * one["clips_per_s"] >= step_rate})
  return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--cache_dir", default=os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "iib_jax_bench"),
      help="where the dataset is generated and prepared once")
  p.add_argument("--cores", type=common.int_list, default=None,
                 help="core counts for tf.data (default: 1 and every usable core); the per-item "
                 "loaders run on one core (one DataLoader worker)")
  p.add_argument("--loaders", type=common.split_list, default=list(LOADERS),
                 help=f"comma-separated, from {list(LOADERS)}")
  p.add_argument("--image_size", type=int, default=None, help="output frame size")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--batches", type=int, default=None, help="timed batches per measurement")
  p.add_argument("--step_rate", type=float, default=common.ANCHOR_STEP_RATE,
                 help="GPU samples/s to feed (default: the issue's anchor, not measured here)")
  p.add_argument("--stages", action="store_true",
                 help="also time the tf.data op list cut after each op, on one core, for float32 "
                 "and uint8 frames (where the time goes)")
  p.add_argument("--out", default=None)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--child_cores", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--child_paths", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  s = SIZES[args.size]
  args.image_size = args.image_size or s["image_size"]
  args.batch_size = args.batch_size or s["batch_size"]
  args.batches = args.batches or s["batches"]
  if args.cores is None:
    args.cores = sorted({1, common.usable_cores()})
  for loader in args.loaders:
    if loader not in LOADERS:
      p.error(f"--loaders accepts {list(LOADERS)}, got {loader!r}")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.child:
    result = measure_child(args.child, args.child_cores, json.loads(args.child_paths),
                           args.image_size, args.batch_size, args.batches)
    print(json.dumps(result))
    return result
  env = common.environment(with_jax=False)
  print(f"input pipeline benchmark on {common.describe(env)}", flush=True)
  start = time.perf_counter()
  paths = prepare(args.cache_dir, args.size)
  print(f"dataset ready in {time.perf_counter() - start:.0f} s: {paths['data_dir']}", flush=True)
  rows = []
  for loader in args.loaders:
    for cores in (args.cores if loader in TFDATA else [1]):
      print(f"  {loader} on {cores} core(s) ...", flush=True)
      row = run_child(loader, cores, paths, args.image_size, args.batch_size, args.batches)
      if "error" in row:
        print(f"    failed: {row['error'][-300:]}", flush=True)
      rows.append(row)
  stages = []
  if args.stages:
    for frames_dtype in TFDATA.values():
      print(f"  stages of the tf.data op list, {frames_dtype} frames, 1 core ...", flush=True)
      stages.append(run_child(f"stages:{frames_dtype}", 1, paths, args.image_size,
                              args.batch_size, args.batches))
  needed = cores_needed(rows, args.step_rate)
  per_core = {n["loader"]: n["clips_per_s_per_core"] for n in needed}
  # {tf.data loader: {per-item loader: ratio of clips/s per core}}
  ratios = {fast: {name: per_core[fast] / per_core[name] for name in per_core
                   if name not in TFDATA}
            for fast in TFDATA if fast in per_core}
  record = {"benchmark": "input_pipeline", "environment": env, "args": vars(args),
            "paths": paths, "results": rows, "stages": stages, "cores_needed": needed,
            "tfdata_vs_per_item_per_core": ratios.get("tfdata", {}).get("per_item"),
            "tfdata_uint8_vs_per_item_per_core": ratios.get("tfdata_uint8", {}).get("per_item"),
            "tfdata_per_core_ratios": ratios,
            "step_rate_source": ("the issue's anchor (2,373 samples/s at batch 32, bfloat16), "
                                 "not measured here" if args.step_rate == common.ANCHOR_STEP_RATE
                                 else "given on the command line")}
  common.finish(record, args.out)
  print()
  print(common.table([r for r in rows if "error" not in r], COLUMNS))
  print()
  for entry in stages:
    if "error" in entry:
      print(f"{entry['loader']} failed: {entry['error'][-300:]}")
      continue
    print(f"{entry['frames_dtype']} frames, one core, ms per clip up to each op: " + ", ".join(
        f"{s['up_to']} {s['ms_per_clip']:.2f}" for s in entry["stages"]))
  for fast, against in ratios.items():
    for name, value in against.items():
      print(f"{fast} / {name}, clips/s per core: {value:.2f}× (target ≥ 3×)")
  for n in needed:
    print(f"{n['loader']}: {n['cores_needed']:.1f} cores for {args.step_rate:g} samples/s "
          f"({record['step_rate_source']}); 16 cores suffice: {n['sustains_with_16_cores']}")
  print(f"\n{common.describe(env)}; load at end "
        f"{'/'.join(str(x) for x in env['load_avg_end'])}")
  if args.out:
    print(f"wrote {args.out}")
  return record


if __name__ == "__main__":
  main()
