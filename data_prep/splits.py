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
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

# Kinds of listing problem, as written to skipped.csv (media problems are in data_prep.media).
BAD_LINE, UNKNOWN_LABEL, DUPLICATE, OUTSIDE = (
    "bad_line", "unknown_label", "duplicate", "outside_raw_dir")


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
    split_files: {split: the file it was listed from}, for messages; empty when the splits
      come from the directory (CREMA-D --split speaker).
  """
  name: str
  class_names: list
  splits: dict
  skipped: list
  source: dict
  split_files: dict = dataclasses.field(default_factory=dict)

  @property
  def num_listed(self) -> int:
    """Clips and unusable lines in all, the denominator of the skipped fraction."""
    return sum(len(c) for c in self.splits.values()) + len(self.skipped)


def _decode_lines(path: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
  """(line number, stripped text) of the non-blank lines, and (line number, problem) of the lines
  that are not UTF-8 text. Lines end at \\n, \\r\\n or \\r (as Python's text files); a UTF-8 BOM
  is dropped."""
  with open(path, "rb") as f:
    data = f.read()
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  lines, bad = [], []
  for lineno, raw in enumerate(data.splitlines(), 1):
    try:
      text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      bad.append((lineno, f"not UTF-8 text ({e.reason}: byte 0x{raw[e.start]:02x} at column "
                          f"{e.start + 1} of {raw[:80]!r})"))
      continue
    if text:
      lines.append((lineno, text))
  return lines, bad


def read_lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped text) of the non-blank lines; a UTF-8 BOM is dropped.

  Raises:
    ValueError: naming the file and the line, when a line is not UTF-8 text.
  """
  lines, bad = _decode_lines(path)
  if bad:
    raise ValueError(f"{path}:{bad[0][0]}: {bad[0][1]}")
  return lines


def read_split_lines(path: str, split: str, skipped: list) -> list[tuple[int, str]]:
  """Like `read_lines`, for a split file: a line that is not UTF-8 text becomes a 'bad_line'
  Skip (appended to `skipped`, naming the file and the line) and the other lines are read."""
  lines, bad = _decode_lines(path)
  for lineno, problem in bad:
    where = f"{os.path.basename(path)}:{lineno}"
    skipped.append(Skip(split, where, BAD_LINE, f"{where}: {problem}"))
  return lines


class OutsideRawDir(ValueError):
  """A name from a split or annotation file leads out of the raw dataset directory."""


def _within(path: str, root: str) -> bool:
  return os.path.commonpath([path, root]) == root


def clip_file(raw_dir: str, folder: str, name: str, index: Mapping[str, str],
              extension: Optional[str], follow_symlinks: bool = False) -> Optional[str]:
  """The media file of clip `name` in `raw_dir/folder`, confined to the raw dataset.

  Args:
    raw_dir: the raw dataset.
    folder: the layout's folder of such files, e.g. 'videos'.
    name: the clip name, as a split or annotation file gives it.
    index: {stem: path} of the folder (`file_index`).
    extension: the file `folder/name + extension` used when the index lacks the name (it may
      not exist; decoding then reports it missing), or None: no file.
    follow_symlinks: accept a file that is a symbolic link leading out of raw_dir.

  Returns:
    The path, or None when the index lacks the name and `extension` is None.

  Raises:
    OutsideRawDir: the reason, when the name is an absolute path or has a '..' component, or
      the file is a symbolic link leading out of raw_dir and out of the folder's real location
      (a folder that is itself a link, e.g. videos -> /big/disk/videos, is part of the layout).
  """
  if os.path.isabs(name) or name.startswith(("/", "\\")):
    raise OutsideRawDir(f"{name!r} is an absolute path; a clip name must name a file inside "
                        f"{os.path.join(raw_dir, folder)}")
  if ".." in name.replace("\\", "/").split("/"):
    raise OutsideRawDir(f"{name!r} has a '..' component; a clip name must name a file inside "
                        f"{os.path.join(raw_dir, folder)}")
  path = index.get(name)
  if path is None:
    if extension is None:
      return None
    path = os.path.join(raw_dir, folder, name + extension)
  if not follow_symlinks:
    real = os.path.realpath(path)
    roots = {os.path.realpath(raw_dir), os.path.realpath(os.path.join(raw_dir, folder))}
    if not any(_within(real, root) for root in roots):
      raise OutsideRawDir(f"{path} is a symbolic link to {real}, outside {raw_dir} (link whole "
                          f"folders, or pass --follow_symlinks to accept such files)")
  return path


def check_dataset_name(name: str) -> None:
  """Raises ValueError unless `name` is one plain directory name (the output subdirectory).

  A name such as '../x', '/x', '.' or 'a/b' would put the dataset (or --overwrite's deletion)
  outside the output directory.
  """
  if (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
      or (os.altsep and os.altsep in name)):
    raise ValueError(f"--name {name!r} must be a plain directory name (no '/', not '.' or '..'): "
                     f"the dataset is written to OUT_DIR/NAME")


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
