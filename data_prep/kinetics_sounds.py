"""Kinetics-Sounds (and any dataset in its layout, e.g. the synthetic one) → TFRecords.

Layout of --raw_dir:

  videos/<name>.mp4            one video per clip (.mkv, .webm, .avi, .mov and .flv also found)
  audio/<name>.wav             optional; used instead of the video's audio track
  train.txt | my_train.txt     lines `name,duration_seconds,label_index`, e.g.
  test.txt  | my_test.txt        --4-0ihtnBU_000058_000068,10,4   (names may start with '-')
  val.txt   | my_val.txt       optional; otherwise --val_fraction of train is carved out
  classes.txt                  optional: class names, one per line, in label order

  python -m data_prep.kinetics_sounds --raw_dir /data/ks --out_dir /data/prepared --workers 16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from data_prep.splits import (BAD_LINE, OUTSIDE, UNKNOWN_LABEL, Clip, Listing, OutsideRawDir,
                              Skip, carve, clip_file, drop_duplicates, file_index,
                              read_class_list, read_split_lines, sort_splits)

NAME = "kinetics_sounds"
SPLIT_FILES = {
    "train": ("train.txt", "my_train.txt"),
    "validation": ("val.txt", "my_val.txt", "validation.txt"),
    "test": ("test.txt", "my_test.txt"),
}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv")
# 10.24 s at 100 frames/s, the length used for Kinetics-Sounds in the literature (METHODS §1.3).
AUDIO_FRAMES = 1024


def _find(raw_dir: str, names: Sequence[str]) -> Optional[str]:
  for name in names:
    path = os.path.join(raw_dir, name)
    if os.path.exists(path):
      return path
  return None


def list_clips(raw_dir: str, *, val_fraction: float = 0.1, seed: int = 0,
               name: str = NAME, follow_symlinks: bool = False) -> Listing:
  """Reads the split files of a Kinetics-Sounds layout.

  Args:
    raw_dir: the raw dataset.
    val_fraction: share of train carved out (per class, seeded) when there is no val file.
    seed: the seed of that carving.
    name: the dataset name.
    follow_symlinks: accept media files that are symbolic links leading out of raw_dir.

  Returns:
    A Listing; lines that are not UTF-8, do not parse, name an unknown label or a file outside
    raw_dir (`splits.clip_file`) are in `skipped`.

  Raises:
    ValueError: naming the directory, when no train or no test split file exists.
  """
  paths = {split: _find(raw_dir, files) for split, files in SPLIT_FILES.items()}
  for split in ("train", "test"):
    if paths[split] is None:
      raise ValueError(f"{raw_dir}: no {split} split file (looked for "
                       f"{' or '.join(SPLIT_FILES[split])})")
  classes_path = os.path.join(raw_dir, "classes.txt")
  class_names = read_class_list(classes_path) if os.path.exists(classes_path) else None
  videos = file_index(os.path.join(raw_dir, "videos"), VIDEO_EXTENSIONS)
  wavs = file_index(os.path.join(raw_dir, "audio"), (".wav",))

  rows: dict[str, list[tuple[str, int, str, Optional[str]]]] = {}
  skipped: list[Skip] = []
  for split, path in paths.items():
    if path is None:
      continue
    rows[split] = []
    for lineno, text in read_split_lines(path, split, skipped):
      where = f"{os.path.basename(path)}:{lineno}"
      parts = text.rsplit(",", 2)  # split from the right: only the name could hold a comma
      try:
        clip_id, _, label = parts[0].strip(), float(parts[1]), int(parts[2])
        if not clip_id:
          raise ValueError("empty name")
      except (IndexError, ValueError):
        skipped.append(Skip(split, where, BAD_LINE, f"{where}: cannot parse {text!r} "
                            f"(expected name,duration_seconds,label_index)"))
        continue
      known = 0 <= label < len(class_names) if class_names is not None else label >= 0
      if not known:
        skipped.append(Skip(split, clip_id, UNKNOWN_LABEL,
                            f"{where}: label {label} is not a class index"
                            + (f" (classes.txt lists {len(class_names)})" if class_names else "")))
        continue
      try:
        video = clip_file(raw_dir, "videos", clip_id, videos, ".mp4", follow_symlinks)
        wav = clip_file(raw_dir, "audio", clip_id, wavs, None, follow_symlinks)
      except OutsideRawDir as e:
        skipped.append(Skip(split, where, OUTSIDE, f"{where}: {e}"))
        continue
      rows[split].append((clip_id, label, video, wav))

  if class_names is None:
    top = max((row[1] for r in rows.values() for row in r), default=-1)
    class_names = [f"class_{i}" for i in range(top + 1)]
  splits = {split: [Clip(clip_id=clip_id, label=label, label_name=class_names[label],
                         video_path=video, audio_path=wav)
                    for clip_id, label, video, wav in r]
            for split, r in rows.items()}
  drop_duplicates(splits, skipped)
  carved = "validation" not in splits
  if carved:
    splits["train"], splits["validation"] = carve(splits["train"], val_fraction, seed)
  source = {
      "dataset": "kinetics_sounds_layout", "raw_dir": os.path.abspath(raw_dir),
      "split_files": {s: os.path.basename(p) for s, p in paths.items() if p},
      "classes_file": os.path.exists(classes_path),
      "validation": (f"carved from train: {val_fraction} per class, seed {seed}" if carved
                     else "from the val file"),
      "audio_from": "audio/<name>.wav when present, else the video's audio track",
  }
  return Listing(name=name, class_names=class_names, splits=sort_splits(splits),
                 skipped=skipped, source=source,
                 split_files={s: p for s, p in paths.items() if p})


def _list(args: argparse.Namespace) -> Listing:
  return list_clips(args.raw_dir, val_fraction=args.val_fraction, seed=args.seed,
                    name=args.name, follow_symlinks=args.follow_symlinks)


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Imported here: decoding workers re-import this module, and need none of the writer's
  # dependencies (TensorFlow, JAX).
  from data_prep import cli

  return cli.main(NAME, __doc__, lambda p: None, _list, argv, audio_frames=AUDIO_FRAMES)


if __name__ == "__main__":
  sys.exit(main())
