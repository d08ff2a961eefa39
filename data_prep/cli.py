"""The command line shared by `python -m data_prep.<dataset>`: flags, config, exit codes."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, Sequence

from iib_jax import quiet

quiet.skip_keras()               # the commands never use Keras: TensorFlow starts 2.5 s sooner

from data_prep import features  # noqa: E402
from data_prep.splits import Listing
from data_prep.tfrecords import PrepareConfig, PrepareError, prepare


def parse_image_size(text: str) -> tuple[int, int]:
  """'224' -> (224, 224); '160x224' -> (160, 224) as (height, width)."""
  parts = text.lower().replace(",", "x").split("x")
  try:
    sizes = [int(p) for p in parts]
  except ValueError:
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
  if len(sizes) == 1:
    sizes = sizes * 2
  if len(sizes) != 2 or min(sizes) <= 0:
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")
  return sizes[0], sizes[1]


def _key_value(text: str) -> tuple[str, str]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  key, value = text.split("=", 1)
  return key.strip(), value.strip()


def _cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def make_parser(dataset: str, description: str, *, audio_frames: Optional[int] = None,
                val_fraction: float = 0.1) -> argparse.ArgumentParser:
  """The flags every dataset command takes; a reader adds its own.

  Args:
    dataset: the default --name (output subdirectory).
    description: the command's help text.
    audio_frames: the dataset's default --audio_frames.
    val_fraction: the default share of train carved out as validation.
  """
  p = argparse.ArgumentParser(prog=f"python -m data_prep.{dataset}", description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--raw_dir", required=True, help="the raw dataset (layout in docs/DATA.md)")
  p.add_argument("--out_dir", required=True,
                 help="parent of the prepared dataset; it is written to OUT_DIR/NAME")
  p.add_argument("--name", default=dataset, help="dataset name and output subdirectory")
  p.add_argument("--workers", type=int, default=_cpu_count(),
                 help="decoding processes (default: the usable cores)")
  p.add_argument("--preset", default=features.DEFAULT_PRESET, choices=sorted(features.PRESETS),
                 help="audio front-end (docs/DATA.md lists every parameter)")
  p.add_argument("--audio_param", type=_key_value, action="append", default=[],
                 metavar="KEY=VALUE", help="override one parameter of the preset "
                 "(repeatable), e.g. --audio_param n_mels=64 --audio_param hop_ms=20")
  p.add_argument("--audio_frames", type=int, default=audio_frames,
                 help="audio length in frames the input pipeline crops or pads to by default "
                 f"(recorded in the metadata; default {audio_frames or 'the longest clip'}; a "
                 "preset with a fixed length uses that)")
  p.add_argument("--fps", type=float, default=16.0, help="video frames per second")
  p.add_argument("--image_size", type=parse_image_size, default=(224, 224),
                 help="stored frame size: N or HxW")
  p.add_argument("--jpeg_quality", type=int, default=90)
  shards = p.add_mutually_exclusive_group()
  shards.add_argument("--clips_per_shard", type=int, default=64)
  shards.add_argument("--num_shards", type=int, default=None, help="shards per split")
  p.add_argument("--max_skip_fraction", type=float, default=0.05,
                 help="fail when more than this share of the listed clips cannot be prepared")
  p.add_argument("--val_fraction", type=float, default=val_fraction,
                 help="share of train carved out (seeded, per class) as the validation split "
                 "when the dataset has none")
  p.add_argument("--seed", type=int, default=0, help="seeds the validation split and shards")
  p.add_argument("--follow_symlinks", action="store_true",
                 help="accept media files that are symbolic links leading out of --raw_dir "
                 "(by default they are skipped, as names with '..' or absolute paths are)")
  p.add_argument("--overwrite", action="store_true",
                 help="delete an earlier preparation in OUT_DIR/NAME first")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
  audio = features.resolve_preset(args.preset, dict(args.audio_param))
  return PrepareConfig(audio=audio, fps=args.fps, image_size=tuple(args.image_size),
                       jpeg_quality=args.jpeg_quality, audio_frames=args.audio_frames,
                       clips_per_shard=args.clips_per_shard, num_shards=args.num_shards,
                       seed=args.seed)


def run(args: argparse.Namespace, list_clips: Callable[[], Listing]) -> int:
  """Lists the clips, prepares them, and returns the process exit code (0 on success)."""
  start = time.time()
  try:
    config = config_from_args(args)
    if not os.path.isdir(args.raw_dir):
      raise PrepareError(f"--raw_dir {args.raw_dir} is not a directory")
    listing = list_clips()
    result = prepare(listing, args.out_dir, config, workers=args.workers,
                     max_skip_fraction=args.max_skip_fraction, overwrite=args.overwrite,
                     progress=False if args.no_progress else None)
  except (PrepareError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"done in {time.time() - start:.1f} s: {result.data_dir}")
  return 0


def main(dataset: str, doc: str, add_flags: Callable[[argparse.ArgumentParser], None],
         list_clips: Callable[[argparse.Namespace], Listing], argv: Optional[Sequence[str]],
         **defaults) -> int:
  """Entry point of a dataset command: parse flags, list, prepare."""
  parser = make_parser(dataset, doc, **defaults)
  add_flags(parser)
  args = parser.parse_args(argv)
  return run(args, lambda: list_clips(args))
