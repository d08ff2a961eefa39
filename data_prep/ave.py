"""AVE (audio-visual event localisation, 28 classes) → TFRecords, keeping only the event segment.

Layout of --raw_dir:

  AVE/<video_id>.mp4
  Annotations.txt              header `Category&VideoID&Quality&StartTime&EndTime`, one line per
                               video; the class list is its sorted set of categories
  trainSet.txt, valSet.txt, testSet.txt   the same fields, no header

Each clip keeps [StartTime, EndTime) seconds of video and audio. A video listed with two
labels keeps the first and the other listing is skipped as a duplicate (OGM-GE drops such ids
altogether). Without valSet.txt, --val_fraction of train is carved out.

  python -m data_prep.ave --raw_dir /data/AVE_Dataset --out_dir /data/prepared --workers 16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from data_prep.splits import (BAD_LINE, OUTSIDE, UNKNOWN_LABEL, Clip, Listing, OutsideRawDir,
                              Skip, carve, clip_file, drop_duplicates, file_index,
                              read_split_lines, sort_splits)

NAME = "ave"
SPLIT_FILES = {"train": "trainSet.txt", "validation": "valSet.txt", "test": "testSet.txt"}
HEADER = "Category&VideoID&Quality&StartTime&EndTime"
# 10.24 s: AVE videos last 10 s; the event segment is at most that.
AUDIO_FRAMES = 1024


def _parse(text: str) -> tuple[str, str, float, float]:
  parts = [p.strip() for p in text.split("&")]
  if len(parts) != 5 or not parts[0] or not parts[1]:
    raise ValueError("expected 5 fields separated by '&'")
  start, end = float(parts[3]), float(parts[4])
  if not end > start >= 0:
    raise ValueError(f"empty segment [{start}, {end}]")
  return parts[0], parts[1], start, end


def _is_header(text: str) -> bool:
  return text.replace(" ", "").lower() == HEADER.lower()


def list_clips(raw_dir: str, *, val_fraction: float = 0.1, seed: int = 0,
               name: str = NAME, follow_symlinks: bool = False) -> Listing:
  """Reads AVE's annotation and split files.

  Args:
    raw_dir: the raw dataset.
    val_fraction: share of train carved out when valSet.txt is absent.
    seed: seeds that carving.
    name: the dataset name.
    follow_symlinks: accept media files that are symbolic links leading out of raw_dir.

  Returns:
    A Listing whose clips carry their event segment; split lines that are not UTF-8, do not
    parse, name an unknown category or a file outside raw_dir (`splits.clip_file`) are in
    `skipped`.

  Raises:
    ValueError: trainSet.txt or testSet.txt is missing.
  """
  paths = {s: os.path.join(raw_dir, f) for s, f in SPLIT_FILES.items()}
  for s in ("train", "test"):
    if not os.path.exists(paths[s]):
      raise ValueError(f"{paths[s]} not found")
  videos = file_index(os.path.join(raw_dir, "AVE"), (".mp4", ".mkv", ".webm", ".avi", ".mov"))
  annotations = os.path.join(raw_dir, "Annotations.txt")
  categories: set[str] = set()
  if os.path.exists(annotations):
    # A bad annotation line matters only if a split lists its video; it is reported there.
    for _, text in read_split_lines(annotations, "annotations", []):
      if _is_header(text):
        continue
      try:
        categories.add(_parse(text)[0])
      except ValueError:
        continue

  skipped: list[Skip] = []
  rows: dict[str, list[tuple[str, str, float, float, str]]] = {}
  for split, path in paths.items():
    if not os.path.exists(path):
      continue
    rows[split] = []
    for lineno, text in read_split_lines(path, split, skipped):
      if _is_header(text):
        continue
      where = f"{os.path.basename(path)}:{lineno}"
      try:
        category, video_id, start, end = _parse(text)
      except ValueError as e:
        skipped.append(Skip(split, where, BAD_LINE, f"{where}: cannot parse {text!r}: {e}"))
        continue
      try:
        video = clip_file(raw_dir, "AVE", video_id, videos, ".mp4", follow_symlinks)
      except OutsideRawDir as e:
        skipped.append(Skip(split, where, OUTSIDE, f"{where}: {e}"))
        continue
      rows[split].append((category, video_id, start, end, video))
  from_annotations = bool(categories)
  if not categories:
    categories = {row[0] for r in rows.values() for row in r}
  class_names = sorted(categories)

  splits: dict[str, list[Clip]] = {}
  for split, r in rows.items():
    splits[split] = []
    for category, video_id, start, end, video in r:
      if category not in class_names:
        skipped.append(Skip(split, video_id, UNKNOWN_LABEL,
                            f"category {category!r} is not in {annotations}"))
        continue
      splits[split].append(Clip(
          clip_id=video_id, label=class_names.index(category), label_name=category,
          video_path=video, start=start, end=end))
  drop_duplicates(splits, skipped)
  carved = "validation" not in splits
  if carved:
    splits["train"], splits["validation"] = carve(splits["train"], val_fraction, seed)
  source = {
      "dataset": "ave", "raw_dir": os.path.abspath(raw_dir),
      "classes": "sorted categories of Annotations.txt" if from_annotations
                 else "sorted categories of the split files (no Annotations.txt)",
      "validation": (f"carved from train: {val_fraction} per class, seed {seed}" if carved
                     else "valSet.txt"),
      "segment": "only [StartTime, EndTime) of each video (frames and audio)",
  }
  return Listing(name=name, class_names=class_names, splits=sort_splits(splits),
                 skipped=skipped, source=source,
                 split_files={s: p for s, p in paths.items() if os.path.exists(p)})


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
