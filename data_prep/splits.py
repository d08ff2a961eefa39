"""Split files and class lists → sorted clip records; seeded validation and group splits.

Everything that comes from a filesystem or a set is sorted before use, so the clip order, the
shard assignment and the carved splits depend on the seed only.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import zlib
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

# Kinds of listing problem, as written to skipped.csv (media problems are in data_prep.media).
BAD_LINE, UNKNOWN_LABEL, DUPLICATE = "bad_line", "unknown_label", "duplicate"


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip to prepare.

  Attributes:
    clip_id: unique name (the media file stem).
    label: class index into the class list.
    label_name: the class name.
    video_path: the video file.
    audio_path: a wav file to use instead of the video's audio track, or None.
    start, end: the segment in seconds to keep, or None for the whole file.
  """
  clip_id: str
  label: int
  label_name: str
  video_path: str
  audio_path: Optional[str] = None
  start: Optional[float] = None
  end: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Skip:
  """A clip (or split-file line) that was left out, and why."""
  split: str
  clip_id: str
  kind: str
  reason: str


@dataclasses.dataclass
class Listing:
  """What a dataset reader found.

  Attributes:
    name: the dataset name (the output subdirectory).
    class_names: in label order.
    splits: {split: clips sorted by clip_id}, splits among train / validation / test.
    skipped: lines or clips already rejected while listing.
    source: facts for the metadata (split files used, split mode, carved fractions, seed).
  """
  name: str
  class_names: list
  splits: dict
  skipped: list
  source: dict

  @property
  def num_listed(self) -> int:
    """Clips and unusable lines in all, the denominator of the skipped fraction."""
    return sum(len(c) for c in self.splits.values()) + len(self.skipped)


def read_lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped text) of the non-blank lines; a UTF-8 BOM is dropped."""
  with open(path, encoding="utf-8-sig") as f:
    return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]


def read_class_list(path: str) -> list[str]:
  """Class names, one per line, in label order."""
  names = [text for _, text in read_lines(path)]
  if len(set(names)) != len(names):
    dup = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    raise ValueError(f"{path}: repeated class names {dup}")
  return names


def file_index(directory: str, extensions: Sequence[str]) -> dict[str, str]:
  """{file stem: path} of the files in `directory` with one of `extensions` (preferred first).

  Listing the directory once is much faster than probing each name on large datasets.
  """
  if not os.path.isdir(directory):
    return {}
  rank = {ext.lower(): i for i, ext in enumerate(extensions)}
  found: dict[str, tuple[int, str]] = {}
  for entry in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(entry)
    if ext.lower() in rank:
      r = rank[ext.lower()]
      if stem not in found or r < found[stem][0]:
        found[stem] = (r, os.path.join(directory, entry))
  return {stem: path for stem, (_, path) in found.items()}


def stable_seed(*parts) -> int:
  """A 32-bit seed from strings and ints, identical across runs and machines (unlike hash())."""
  return zlib.crc32("\x1f".join(str(p) for p in parts).encode()) & 0xFFFFFFFF


def drop_duplicates(splits: dict[str, list[Clip]], skipped: list[Skip],
                    order: Sequence[str] = ("train", "validation", "test")) -> None:
  """Keeps the first occurrence of each clip id (in `order`, then in list order); the rest are
  recorded as skipped. Edits `splits` and `skipped` in place."""
  seen: dict[str, str] = {}
  for split in [s for s in order if s in splits] + [s for s in splits if s not in order]:
    kept = []
    for clip in splits[split]:
      if clip.clip_id in seen:
        skipped.append(Skip(split, clip.clip_id, DUPLICATE,
                            f"clip listed again (first in {seen[clip.clip_id]})"))
      else:
        seen[clip.clip_id] = split
        kept.append(clip)
    splits[split] = kept


def carve(clips: Sequence[Clip], fraction: float, seed: int, salt: str = "validation",
          group: Optional[Callable[[Clip], str]] = None) -> tuple[list[Clip], list[Clip]]:
  """Splits off a seeded, class-stratified fraction of `clips` (e.g. validation out of train).

  Args:
    clips: the clips to split.
    fraction: the share to move out, in [0, 1).
    seed: the seed; the result depends on it and on the clip ids only.
    salt: distinguishes independent carvings with one seed.
    group: when given, whole groups move together (e.g. all clips of one actor); groups are
      then drawn without stratification until the share is reached.

  Returns:
    (kept, carved), each sorted by clip_id. When fraction > 0 and there are at least two clips
    (or groups), at least one is carved.
  """
  clips = sorted(clips, key=lambda c: c.clip_id)
  if fraction <= 0 or len(clips) < 2:
    return clips, []
  if not 0 <= fraction < 1:
    raise ValueError(f"fraction must be in [0, 1), got {fraction}")
  rng = np.random.default_rng(stable_seed(seed, salt))
  carved_ids: set[str] = set()
  if group is not None:
    groups = sorted({group(c) for c in clips})
    if len(groups) < 2:
      return clips, []
    target = fraction * len(clips)
    sizes = collections.Counter(group(c) for c in clips)
    chosen, count = set(), 0
    for g in rng.permutation(groups):
      if count >= target or len(chosen) == len(groups) - 1:
        break
      chosen.add(g)
      count += sizes[g]
    carved_ids = {c.clip_id for c in clips if group(c) in chosen}
  else:
    by_label: dict[int, list[Clip]] = collections.defaultdict(list)
    for c in clips:
      by_label[c.label].append(c)
    for label in sorted(by_label):
      members = by_label[label]
      n = int(math.floor(fraction * len(members) + 0.5))  # half up, not to even
      for i in rng.permutation(len(members))[:n]:
        carved_ids.add(members[i].clip_id)
    if not carved_ids:
      carved_ids.add(clips[int(rng.integers(len(clips)))].clip_id)
  kept = [c for c in clips if c.clip_id not in carved_ids]
  carved = [c for c in clips if c.clip_id in carved_ids]
  return kept, carved


def sort_splits(splits: dict[str, Iterable[Clip]]) -> dict[str, list[Clip]]:
  return {s: sorted(c, key=lambda c: c.clip_id) for s, c in splits.items()}
