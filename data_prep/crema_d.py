"""CREMA-D → TFRecords.

Layout of --raw_dir:

  VideoFlash/<id>.flv          e.g. 1001_DFA_ANG_XX.flv (actor_sentence_emotion_level)
  AudioWAV/<id>.wav            the clip's audio (used instead of the flv's track)
  train.csv, test.csv          optional: lines `<id>,<EMO>` (OGM-GE's split)

The emotion (the label) comes from the file name; classes in OGM-GE's order NEU, HAP, SAD, FEA,
DIS, ANG. Splits:

  --split csv       train.csv / test.csv (the split of OGM-GE and most baselines; it is per clip,
                    so every actor is in both train and test); validation carved from train.
  --split speaker   seeded speaker-independent split: --test_fraction of the actors form test,
                    --val_fraction of the remaining clips (whole actors) form validation.
  --split auto      csv when both files exist, else speaker (the default).

  python -m data_prep.crema_d --raw_dir /data/crema-d --out_dir /data/prepared --workers 16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from data_prep.splits import (BAD_LINE, OUTSIDE, UNKNOWN_LABEL, Clip, Listing, OutsideRawDir,
                              Skip, carve, clip_file, drop_duplicates, file_index,
                              read_split_lines, sort_splits)

NAME = "crema_d"
EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
# 3 s at 100 frames/s: CREMA-D clips last 1-5 s (mean ~2.5 s); METHODS §1.3.
AUDIO_FRAMES = 300


def emotion_of(clip_id: str) -> Optional[str]:
  """'1001_DFA_ANG_XX' -> 'ANG'; None when the name does not follow the pattern."""
  parts = clip_id.split("_")
  return parts[2] if len(parts) >= 3 and parts[2] in EMOTIONS else None


def actor_of(clip_id: str) -> str:
  return clip_id.split("_")[0]


def list_clips(raw_dir: str, *, split: str = "auto", val_fraction: float = 0.1,
               test_fraction: float = 0.1, seed: int = 0, name: str = NAME,
               follow_symlinks: bool = False) -> Listing:
  """Lists CREMA-D clips and splits them.

  Args:
    raw_dir: the raw dataset.
    split: 'csv', 'speaker' or 'auto' (see the module docstring).
    val_fraction: share of train carved out as validation (by actor with split='speaker').
    test_fraction: share of actors in test with split='speaker'.
    seed: seeds the carving.
    name: the dataset name.
    follow_symlinks: accept media files that are symbolic links leading out of raw_dir.

  Returns:
    A Listing; csv lines that are not UTF-8, do not parse, name an unknown emotion or a file
    outside raw_dir (`splits.clip_file`) are in `skipped`.

  Raises:
    ValueError: an unknown split mode, or split='csv' without the csv files.
  """
  videos = file_index(os.path.join(raw_dir, "VideoFlash"), (".flv", ".mp4"))
  wavs = file_index(os.path.join(raw_dir, "AudioWAV"), (".wav",))
  csvs = {s: os.path.join(raw_dir, f"{s}.csv") for s in ("train", "test")}
  if split == "auto":
    split = "csv" if all(os.path.exists(p) for p in csvs.values()) else "speaker"
  if split not in ("csv", "speaker"):
    raise ValueError(f"unknown --split {split!r}; choose csv, speaker or auto")

  skipped: list[Skip] = []

  def make_clip(split_name: str, clip_id: str, where: str) -> Optional[Clip]:
    try:
      video = clip_file(raw_dir, "VideoFlash", clip_id, videos, ".flv", follow_symlinks)
      wav = clip_file(raw_dir, "AudioWAV", clip_id, wavs, ".wav", follow_symlinks)
    except OutsideRawDir as e:
      # A csv line is named by its place; a file found in the folders by its clip id.
      skipped.append(Skip(split_name, where if split == "csv" else clip_id, OUTSIDE,
                          f"{where}: {e}"))
      return None
    emotion = emotion_of(clip_id)
    if emotion is None:
      skipped.append(Skip(split_name, clip_id, UNKNOWN_LABEL,
                          f"{where}: no emotion in the name {clip_id!r} (expected "
                          f"actor_sentence_EMO_level with EMO in {', '.join(EMOTIONS)})"))
      return None
    return Clip(clip_id=clip_id, label=EMOTIONS.index(emotion), label_name=emotion,
                video_path=video, audio_path=wav)

  splits: dict[str, list[Clip]] = {}
  if split == "csv":
    for s, path in csvs.items():
      if not os.path.exists(path):
        raise ValueError(f"{path} not found; use --split speaker for a split by actor")
      splits[s] = []
      for lineno, text in read_split_lines(path, s, skipped):
        where = f"{os.path.basename(path)}:{lineno}"
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not parts[0]:
          skipped.append(Skip(s, where, BAD_LINE,
                              f"{where}: cannot parse {text!r} (expected id,EMOTION)"))
          continue
        clip_id, listed = parts
        if listed not in EMOTIONS:
          skipped.append(Skip(s, clip_id, UNKNOWN_LABEL,
                              f"{where}: unknown emotion {listed!r}"))
          continue
        if emotion_of(clip_id) not in (None, listed):
          skipped.append(Skip(s, clip_id, BAD_LINE, f"{where}: the line says {listed} but the "
                              f"file name says {emotion_of(clip_id)}"))
          continue
        clip = make_clip(s, clip_id, where)
        if clip is not None:
          splits[s].append(clip)
    drop_duplicates(splits, skipped)
    splits["train"], splits["validation"] = carve(splits["train"], val_fraction, seed)
    how = (f"train.csv / test.csv; validation carved from train: {val_fraction} per class, "
           f"seed {seed} (the csv split is per clip: actors overlap)")
  else:
    ids = sorted(set(videos) | set(wavs))
    if not ids:
      raise ValueError(f"{raw_dir}: no clip in VideoFlash/ or AudioWAV/")
    clips = [c for c in (make_clip("train", i, f"{raw_dir}") for i in ids) if c is not None]
    rest, test = carve(clips, test_fraction, seed, salt="test", group=lambda c: actor_of(c.clip_id))
    train, val = carve(rest, val_fraction, seed, salt="validation",
                       group=lambda c: actor_of(c.clip_id))
    splits = {"train": train, "validation": val, "test": test}
    how = (f"speaker-independent: {test_fraction} of the actors in test, {val_fraction} of the "
           f"rest (whole actors) in validation, seed {seed}")
  source = {"dataset": "crema_d", "raw_dir": os.path.abspath(raw_dir), "split": split,
            "split_description": how, "audio_from": "AudioWAV/<id>.wav"}
  return Listing(name=name, class_names=list(EMOTIONS), splits=sort_splits(splits),
                 skipped=skipped, source=source,
                 split_files=dict(csvs) if split == "csv" else {})


def _flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--split", default="auto", choices=("auto", "csv", "speaker"))
  p.add_argument("--test_fraction", type=float, default=0.1,
                 help="share of actors in test with --split speaker")


def _list(args: argparse.Namespace) -> Listing:
  return list_clips(args.raw_dir, split=args.split, val_fraction=args.val_fraction,
                    test_fraction=args.test_fraction, seed=args.seed, name=args.name,
                    follow_symlinks=args.follow_symlinks)


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Imported here: decoding workers re-import this module, and need none of the writer's
  # dependencies (TensorFlow, JAX).
  from data_prep import cli

  return cli.main(NAME, __doc__, _flags, _list, argv, audio_frames=AUDIO_FRAMES)


if __name__ == "__main__":
  sys.exit(main())
