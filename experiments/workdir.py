"""What a run directory was made from, and the check that a rerun would make the same.

Every directory the runner trains in (a method's run directory, the unimodal phase's `iib/`)
records `fingerprint.json`: the resolved config that shapes what is trained there, the dataset's
fingerprint (its metadata and shard records) and the code version. A rerun resumes or reuses the
directory only when its fingerprint is the same; otherwise it stops before anything is written,
naming the keys that differ. `--config.overwrite=True` (or a new workdir) starts over.

Scopes: the unimodal phase depends on everything but the methods (their names and options), so a
sweep's variants share it; a method's directory depends on everything but the other methods'
options and the list of comparisons.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from typing import Any, Mapping

import iib_jax

FINGERPRINT = "fingerprint.json"
UNIMODAL = "unimodal phase"
# Keys that change how a run reports, not what it trains.
_NOT_TRAINING = ("workdir", "progress", "log_every_steps", "overwrite", "compare_with",
                 "data.cache_dir")
# The files a run writes into its directory (what `clear` deletes).
_WRITTEN = ("metrics.jsonl", "metrics.jsonl.tmp", "results.json", "results.md",
            "results_all.json", "config.json", FINGERPRINT, "test_weights.npy", "budgets.json",
            "run.log", "accuracy_curves.png", "prior_vs_weights.png", "weight_distribution.png",
            "evaluation.json", "evaluation.md", "robustness.png", "probes.png")
# What a directory holds once something was trained in it.
_ARTEFACTS = ("checkpoints", "metrics.jsonl", "results.json", "budgets.json", "stages")


class WorkdirMismatch(ValueError):
  """A directory holds the artefacts of a different run; the message names the differences."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{name}."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def dataset_fingerprint(info: Mapping[str, Any]) -> dict[str, Any]:
  """What identifies a prepared dataset's content: its classes, splits, the preprocessing of its
  audio and video, and its shards (names, example counts, sizes and checksums when recorded);
  for an array dataset, its metadata (the generator's arguments) and its files' sizes."""
  if "files" in info:
    shards = info.get("shards") or {
        split: [{"file": os.path.basename(f), "num_examples": n}
                for f, n in zip(info["files"][split], info["shard_lengths"][split])]
        for split in info["files"]}
    content = {"name": info.get("name"), "class_names": info.get("class_names"),
               "splits": info.get("splits"), "audio": info.get("audio"),
               "video": info.get("video"), "shards": shards}
  else:
    directory = info["data_dir"]
    content = {"metadata": {k: v for k, v in info.items() if k != "data_dir"},
               "files": {name: os.path.getsize(os.path.join(directory, name))
                         for name in sorted(os.listdir(directory)) if name.endswith(".npz")}}
  digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
  return {"name": info.get("name"), "splits": info.get("splits"), "digest": digest}


def _code_commit() -> str | None:
  root = os.path.dirname(os.path.dirname(os.path.abspath(iib_jax.__file__)))
  try:
    out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def fingerprint(config, info: Mapping[str, Any], scope: str) -> dict[str, Any]:
  """The fingerprint of a directory trained with `config` on the dataset of `info`.

  Args:
    config: the resolved config.
    info: the dataset's metadata (`iib_jax.schema.load_info`).
    scope: `UNIMODAL`, or the name of the method trained in the directory.
  """
  flat = _flatten(config.to_dict())
  for key in _NOT_TRAINING:
    flat.pop(key, None)
  flat.pop("method", None)
  if scope != UNIMODAL:
    flat["trained_method"] = scope
  return {"scope": scope, "config": _used(flat, scope), "data": dataset_fingerprint(info),
          "code": {"version": iib_jax.__version__, "commit": _code_commit()}}


def _used(flat: Mapping[str, Any], scope: str) -> dict[str, Any]:
  """The keys of a flat config that can change what a directory of `scope` trains (applied to
  recorded fingerprints as well, so that a fingerprint written before a key was set aside
  compares equal)."""
  if scope == UNIMODAL:
    # The unimodal phase trains every modality alone with the shared optimiser, whatever the
    # methods, their options, their start and their optimiser are.
    return {k: v for k, v in flat.items()
            if not k.startswith(("methods.", "paper_optim.")) and k not in ("start", "optimizer")}
  # The optimiser section the run did not train with changes nothing it did
  # (`iib_jax.build.optimizer_settings`; batch size and epochs stay in `optim`).
  if flat.get("optimizer", "shared") == "paper":
    unused = tuple(k.replace("paper_optim.", "optim.", 1) for k in flat
                   if k.startswith("paper_optim."))
  else:
    unused = ("paper_optim.",)
  return {k: v for k, v in flat.items()
          if (not k.startswith("methods.") or k.startswith(f"methods.{scope}."))
          and not k.startswith(unused)}


def _defaults() -> dict[str, Any]:
  from experiments.configs import common
  return _flatten(common.base_config().to_dict())


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  lines = []
  scope = current.get("scope", "")
  old, new = _used(recorded.get("config", {}), scope), current["config"]
  # A key the config gained since the run was made, at its default, changes nothing the run did.
  defaults = _defaults()
  for key in set(new) - set(old):
    if key in defaults and new[key] == defaults[key]:
      old[key] = new[key]
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      lines.append(f"{key}: {old.get(key, '<absent>')!r} recorded, {new.get(key, '<absent>')!r} "
                   "now")
  if recorded.get("data", {}).get("digest") != current["data"]["digest"]:
    lines.append(f"the dataset: {recorded.get('data')} recorded, {current['data']} now")
  if recorded.get("code", {}).get("version") != current["code"]["version"]:
    lines.append(f"code version: {recorded.get('code', {}).get('version')!r} recorded, "
                 f"{current['code']['version']!r} now")
  return lines


def has_artefacts(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, name)) for name in _ARTEFACTS)


def check(directory: str, current: Mapping[str, Any]) -> None:
  """Raises WorkdirMismatch unless `directory` is new or was made from `current`."""
  path = os.path.join(directory, FINGERPRINT)
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    differences = _differences(recorded, current)
  elif has_artefacts(directory):
    differences = ["no fingerprint.json: the directory was made by an older version or by "
                   "another program"]
  else:
    return
  if differences:
    raise WorkdirMismatch(
        f"{directory} holds a run made from something else ({current['scope']}); it was left "
        "untouched. Differences:\n  " + "\n  ".join(differences)
        + "\nTo start over in it, add --config.overwrite=True (its checkpoints, logs and results "
          "are deleted); or give a new --workdir.")


def record(directory: str, current: Mapping[str, Any]) -> None:
  """Writes `directory/fingerprint.json` (atomically)."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, FINGERPRINT)
  with open(path + ".tmp", "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def clear(directory: str) -> None:
  """Deletes what a run wrote into `directory` (for `overwrite=True`); other files stay."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name in ("checkpoints", "tensorboard", "stages", "compare", "iib") and os.path.isdir(path):
      shutil.rmtree(path)
    elif name in _WRITTEN:
      os.remove(path)
