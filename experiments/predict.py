"""`python -m experiments.predict --workdir W CLIP.mp4 [CLIP2 | DIR | SPLIT_FILE ...]`: a trained
run (or an export) -> predictions on raw clips.

  python -m experiments.predict --workdir runs/synthetic_iibalance_seed0 clip.mp4
  python -m experiments.predict --workdir runs/ks --json predictions.jsonl /data/new_clips
  python -m experiments.predict --workdir runs/ks /data/ks_raw/test.txt       # with labels

Inputs:
  a media file    .mp4, .mkv, .webm, .avi, .mov, .flv; in a dataset layout's video folder
                  (`videos/`, `VideoFlash/`) the layout's wav (`audio/<name>.wav`,
                  `AudioWAV/<name>.wav`) is used for the audio, as preparation does;
  a directory     every media file inside (recursively), sorted by path;
  a split file    of a dataset layout (Kinetics-Sounds `train.txt` / `test.txt` / `my_*.txt`,
                  AVE `trainSet.txt` / `valSet.txt` / `testSet.txt`, CREMA-D `train.csv` /
                  `test.csv`): the clips it lists, read as `data_prep.<dataset>` reads them
                  (segments, separate audio files) and with their labels (a train file also
                  gives the validation clips carved from it).

Each clip is decoded and turned into features by preparation's own path
(`data_prep.examples.decode_clip`) with the parameters the run's dataset recorded
(`metadata.json`: fps, frame size, audio front-end), preprocessed with the run's evaluation ops
and the dataset's statistics (`iib_jax.inference.Preprocessing`) and classified by the restored
checkpoint, in batches of `--batch_size` over every visible device (the last batch padded).
Frames skip the JPEG rounding of the stored ones unless `--jpeg` (docs/DATA.md gives the
measured difference).

Output, one line per clip on stdout (clips in input order):

  <input>: <class> 0.731, <class> 0.201, <class> 0.068 | audio <class> 0.912 | video <class>
  0.402 | weights audio 0.605 video 0.395 [| label <class>]

(top-k of the fused prediction with probabilities; each modality's own top-1, as the method
reads it; the fusion weights where the method has them; the label when the input listed one).
`--json PATH` writes one JSON object per input to PATH, in input order (`-`: stdout, instead of
the text lines); an unreadable input is an object with `error` and `kind`. A clip that cannot be read is
one line on stderr, `error: <file>: <reason>`, and the others continue. A summary line (clips,
time, accuracy on labelled clips) goes to stderr.

Exit status: 0 when every clip was predicted; 2 when some inputs could not be read (each named
on stderr, the rest predicted); 1 when the command could not run at all (bad flags, no run in
--workdir, no input found).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("workdir", None, "a trained run directory, or an export")
flags.DEFINE_enum("which", "best", ["best", "latest"],
                  "the checkpoint: best (chosen on validation) or latest; an export holds one")
flags.DEFINE_integer("top_k", 3, "classes listed per clip")
flags.DEFINE_string("json", None, "write one JSON object per clip to this file ('-': stdout)")
flags.DEFINE_integer("batch_size", None, "clips per step (default: the run's eval.batch_size), "
                     "rounded up to a multiple of the devices")
flags.DEFINE_bool("jpeg", False, "round frames through JPEG at the dataset's quality, as the "
                  "stored frames were (default: the decoded frames as they are)")
flags.DEFINE_integer("workers", None, "decoding processes (default: the usable cores, at most 8; "
                     "0 or 1 decodes in this process)")
flags.DEFINE_string("data_dir", None, "the prepared dataset (its metadata.json), if not the one "
                    "the run recorded")
flags.DEFINE_string("export", None, "also write an export of the run to this new directory "
                    "(params, statistics, config, classes, preprocessing), then predict")
flags.mark_flag_as_required("workdir")

MEDIA_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv")
SPLIT_EXTENSIONS = (".txt", ".csv")
# A layout's video folder -> its audio folder (preparation reads the audio from there).
LAYOUT_AUDIO = {"videos": "audio", "VideoFlash": "AudioWAV"}


class InputError(Exception):
  """An input (a split file) that names no clips; the message says why."""


def media_clip(path: str):
  """The clip of one media file; the layout's wav for its audio when there is one."""
  from data_prep import examples
  folder = os.path.dirname(os.path.abspath(path))
  audio = None
  if os.path.basename(folder) in LAYOUT_AUDIO:
    stem = os.path.splitext(os.path.basename(path))[0]
    wav = os.path.join(os.path.dirname(folder), LAYOUT_AUDIO[os.path.basename(folder)],
                       stem + ".wav")
    audio = wav if os.path.isfile(wav) else None
  return examples.media_clip(path, audio)


def split_file_clips(path: str) -> tuple[list, list]:
  """(clips, skipped rows) of a dataset layout's split file, read by that layout's reader.

  Raises:
    InputError: the file belongs to no known layout.
  """
  from data_prep import ave, crema_d, kinetics_sounds
  raw_dir = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  try:
    if base in ave.SPLIT_FILES.values() and os.path.isdir(os.path.join(raw_dir, "AVE")):
      listing = ave.list_clips(raw_dir)
    elif base.endswith(".csv") and os.path.isdir(os.path.join(raw_dir, "VideoFlash")):
      listing = crema_d.list_clips(raw_dir, split="csv")
    elif os.path.isdir(os.path.join(raw_dir, "videos")):
      listing = kinetics_sounds.list_clips(raw_dir)
    else:
      raise InputError(f"{path}: not a split file of a known dataset layout (Kinetics-Sounds: "
                       f"beside videos/; AVE: beside AVE/; CREMA-D: a csv beside VideoFlash/)")
  except ValueError as e:
    raise InputError(f"{path}: {e}") from None
  split = next((s for s, p in listing.split_files.items()
                if os.path.exists(p) and os.path.samefile(p, path)), None)
  if split is None:
    known = ", ".join(sorted(os.path.basename(p) for p in listing.split_files.values()))
    raise InputError(f"{path}: the layout in {raw_dir} does not read this file as a split file "
                     f"(its split files: {known})")
  clips = list(listing.splits.get(split, []))
  if split == "train" and "validation" not in listing.split_files:
    clips += listing.splits.get("validation", [])     # carved from this file
  clips.sort(key=lambda c: c.clip_id)
  skipped = [s for s in listing.skipped if s.split == split]
  return clips, skipped


def collect_inputs(paths: Sequence[str]) -> list[tuple[str, Any, Optional[tuple[str, str]]]]:
  """(input name, clip or None, (kind, reason) or None) per clip of the inputs, in order."""
  items = []
  for path in paths:
    if os.path.isdir(path):
      found = []
      for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files
                  if f.lower().endswith(MEDIA_EXTENSIONS) and not f.startswith(".")]
      items += [(f, media_clip(f), None) for f in sorted(found)]
    elif path.lower().endswith(SPLIT_EXTENSIONS) and os.path.isfile(path):
      try:
        clips, skipped = split_file_clips(path)
      except InputError as e:
        items.append((path, None, ("bad_input", str(e))))
        continue
      items += [(c.video_path, c, None) for c in clips]
      items += [(f"{path}: {s.clip_id}", None, (s.kind, s.reason)) for s in skipped]
    else:
      items.append((path, media_clip(path), None))
  return items


def _fmt(name: str, p: float) -> str:
  return f"{name} {p:.3f}"


def clip_record(trained, name: str, clip, out: dict, i: int, top_k: int) -> dict[str, Any]:
  """The JSON object of clip i of a batch's predictions `out`."""
  classes = trained.class_names
  probs = out["probs"][i]
  order = np.argsort(-probs, kind="stable")[:top_k]
  record: dict[str, Any] = {
      "input": name, "clip_id": clip.clip_id,
      "top": [{"class": classes[c], "index": int(c), "prob": float(probs[c])} for c in order],
      "probs": [float(p) for p in probs],
      "unimodal": {},
      "weights": None,
  }
  for j, m in enumerate(trained.modalities):
    c = int(out["unimodal_pred"][i, j])
    record["unimodal"][m] = {"class": classes[c], "index": c,
                             "prob": float(out["unimodal_probs"][i, j, c])}
  if "weights" in out:
    record["weights"] = {m: float(out["weights"][i, j]) for j, m in enumerate(trained.modalities)}
  if 0 <= clip.label < len(classes):
    record["label"] = int(clip.label)
    record["label_name"] = classes[clip.label]
  return record


def clip_line(record: dict[str, Any]) -> str:
  """The text line of one clip's record."""
  parts = [", ".join(_fmt(t["class"], t["prob"]) for t in record["top"])]
  parts += [f"{m} {_fmt(u['class'], u['prob'])}" for m, u in record["unimodal"].items()]
  if record["weights"] is not None:
    parts.append("weights " + " ".join(f"{m} {w:.3f}" for m, w in record["weights"].items()))
  if "label_name" in record:
    parts.append(f"label {record['label_name']}")
  return f"{record['input']}: " + " | ".join(parts)


class Output:
  """Where predictions and errors go: text lines, JSON lines, a progress bar."""

  def __init__(self, json_path: Optional[str], total: int):
    from tqdm import tqdm
    self.bar = tqdm(total=total, unit="clip", desc="predicting", dynamic_ncols=True,
                    disable=not sys.stderr.isatty() or total < 2, file=sys.stderr)
    self.text = json_path != "-"
    self.json = None if json_path is None else (
        sys.stdout if json_path == "-" else open(json_path, "w"))

  def _line(self, line: str, file) -> None:
    if self.bar.disable:
      print(line, file=file, flush=True)
    else:
      self.bar.write(line, file=file)

  def prediction(self, record: dict[str, Any]) -> None:
    if self.text:
      self._line(clip_line(record), sys.stdout)
    if self.json is not None:
      self._line(json.dumps(record), self.json)
    self.bar.update(1)

  def error(self, name: str, clip_id: Optional[str], kind: str, reason: str) -> None:
    self._line(f"error: {reason if reason.startswith(name) else f'{name}: {reason}'}",
               sys.stderr)
    if self.json is not None:
      self._line(json.dumps({"input": name, "clip_id": clip_id, "error": reason, "kind": kind}),
                 self.json)
    self.bar.update(1)

  def close(self) -> None:
    self.bar.close()
    if self.json not in (None, sys.stdout):
      self.json.close()


def predict_clips(trained, items, *, batch_size: int, top_k: int, jpeg: bool, workers: int,
                  output: Output) -> dict[str, Any]:
  """Decodes, preprocesses and classifies `collect_inputs` items; reports each to `output`.

  Returns:
    counts: `predicted`, `errors`, and per modality / fused the correct count on the clips
    that have a label.
  """
  from data_prep import examples
  from iib_jax import inference
  config = examples.prediction_config(trained.info, jpeg=jpeg)
  readable = [(name, clip) for name, clip, problem in items if problem is None]
  counts = {"predicted": 0, "errors": 0, "labelled": 0, "fused": 0,
            **{m: 0 for m in trained.modalities}}
  for name, clip, problem in items:   # inputs that name no clip (split-file problems) first
    if problem is not None:
      output.error(name, None, *problem)
      counts["errors"] += 1
  pending: list[tuple[str, Any, dict]] = []
  # Errors met while a batch fills wait for it, so that every output is in input order.
  events: list[tuple] = []

  def error(name, clip_id, kind, reason):
    counts["errors"] += 1
    if pending:
      events.append((name, clip_id, kind, reason))
    else:
      output.error(name, clip_id, kind, reason)

  def flush():
    if not pending:
      return
    batch = trained.collate([x for _, _, x in pending], [c.label for _, c, _ in pending])
    out = trained.predict(inference.pad_batch(batch, batch_size))
    records = iter(range(len(pending)))
    for event in events:
      if event is None:
        i = next(records)
        name, clip, _ = pending[i]
        output.prediction(clip_record(trained, name, clip, out, i, top_k))
        counts["predicted"] += 1
        if 0 <= clip.label < trained.num_classes:
          counts["labelled"] += 1
          counts["fused"] += int(out["pred"][i] == clip.label)
          for j, m in enumerate(trained.modalities):
            counts[m] += int(out["unimodal_pred"][i, j] == clip.label)
      else:
        output.error(*event)
    pending.clear()
    events.clear()

  results = examples.map_clips([c for _, c in readable], config, examples.clip_example, workers)
  for index, status, value in results:
    name, clip = readable[index]
    if status != "ok":
      error(name, clip.clip_id, status, value)
      continue
    try:
      inputs = trained.preprocessing(value)
    except (ValueError, KeyError) as e:
      error(name, clip.clip_id, "error", str(e))
      continue
    pending.append((name, clip, inputs))
    events.append(None)
    if len(pending) == batch_size:
      flush()
  flush()
  return counts


def _default_workers() -> int:
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(8, cores or 1))


def main(argv: Sequence[str]) -> int:
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  paths = list(argv[1:])
  if not paths:
    raise app.UsageError("give at least one clip, directory or split file")
  if args.top_k < 1:
    raise app.UsageError(f"--top_k must be at least 1, got {args.top_k}")
  t0 = time.time()
  import jax
  from iib_jax import inference
  try:
    trained = inference.load(args.workdir, args.which, data_dir=args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.export:
    try:
      trained.export(args.export)
    except OSError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"exported {trained.name} ({trained.which} checkpoint, epoch {trained.epoch}) to "
          f"{args.export}", file=sys.stderr)
  items = collect_inputs(paths)
  if not items:
    print(f"error: no media file in {', '.join(paths)}", file=sys.stderr)
    return 1
  devices = trained.mesh.size
  batch_size = args.batch_size or int(trained.config.eval.batch_size)
  if batch_size < 1:
    raise app.UsageError(f"--batch_size must be positive, got {batch_size}")
  batch_size = -(-batch_size // devices) * devices
  output = Output(args.json, len(items))
  try:
    counts = predict_clips(trained, items, batch_size=batch_size, top_k=args.top_k,
                           jpeg=args.jpeg, workers=_default_workers() if args.workers is None
                           else args.workers, output=output)
  finally:
    output.close()
  seconds = time.time() - t0
  summary = (f"{counts['predicted']} of {len(items)} clips predicted by {trained.name} "
             f"({trained.which} checkpoint, epoch {trained.epoch}) in {seconds:.1f} s on "
             f"{devices} × {jax.devices()[0].device_kind}")
  if counts["errors"]:
    summary += f"; {counts['errors']} could not be read"
  if counts["labelled"]:
    n = counts["labelled"]
    summary += f"; accuracy on the {n} labelled: fused {counts['fused'] / n:.3f}, " + ", ".join(
        f"{m} {counts[m] / n:.3f}" for m in trained.modalities)
  print(summary, file=sys.stderr)
  return 2 if counts["errors"] else 0


if __name__ == "__main__":
  app.run(main)
