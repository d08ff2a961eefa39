"""`python -m experiments.crema_d` and `python -m experiments.ave` on tiny prepared datasets.

Each command runs as a user would run it (a subprocess), with the smoke preset: tiny encoders of
the dataset's own kinds (CREMA-D: MobileNetV2 + GRU; AVE: ResNet-18 + 1D CNN), the unimodal phase
and IIBalance, one epoch each.
"""
import json
import os

import numpy as np

from data_prep import ave, crema_d
from data_prep.synthetic import write_video, write_wav
from tests import commands

SR = 16000


def _frames(n, seed, size=32):
  return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _tone(freq, seconds, sr=SR):
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _run(dataset, data_dir, workdir):
  out = commands.run(f"experiments.{dataset}", f"--config=experiments/configs/{dataset}.py:smoke",
                     f"--config.data.dir={data_dir}", f"--workdir={workdir}",
                     "--config.optim.epochs=1", "--config.iib.epochs=1",
                     "--config.compare_with=()")
  results = json.load(open(os.path.join(workdir, "results_all.json")))
  assert [r["method"] for r in results["runs"]] == ["iibalance"]
  assert "| iibalance |" in out.stdout and "each modality alone" in out.stdout
  return results


def test_crema_d_command_on_a_tiny_dataset(tmp_path):
  raw = tmp_path / "crema"
  (raw / "VideoFlash").mkdir(parents=True)
  (raw / "AudioWAV").mkdir()
  ids = [f"{actor}_DFA_{emo}_XX" for actor in (1001, 1002, 1003) for emo in crema_d.EMOTIONS]
  for n, clip_id in enumerate(ids):
    write_video(str(raw / "VideoFlash" / f"{clip_id}.flv"), _frames(4, n), 4,
                _tone(300, 1.0, 22050), 22050, video_codec="flv", audio_codec="libmp3lame")
    write_wav(str(raw / "AudioWAV" / f"{clip_id}.wav"), _tone(400 + 100 * (n % 6), 1.0), SR)
  out = tmp_path / "prepared"
  assert crema_d.main(["--raw_dir", str(raw), "--out_dir", str(out), "--fps", "2",
                       "--image_size", "32", "--workers", "0", "--split", "speaker",
                       "--no_progress"]) == 0
  results = _run("crema_d", str(out / "crema_d"), tmp_path / "run")
  assert results["runs"][0]["test_best"]["num_examples"] > 0


def test_ave_command_on_a_tiny_dataset(tmp_path):
  raw = tmp_path / "ave_raw"
  (raw / "AVE").mkdir(parents=True)
  cats = ["Church bell", "Dog", "Male speech, man speaking"]
  split_of = ["train"] * 9 + ["validation"] * 3 + ["test"] * 3
  lines = {"train": [], "validation": [], "test": []}
  for n, split in enumerate(split_of):
    vid = f"vid{n}"
    write_video(str(raw / "AVE" / f"{vid}.mp4"), _frames(8, n), 4, _tone(500 + 300 * (n % 3), 2.0),
                SR)
    lines[split].append(f"{cats[n % 3]}&{vid}&good&0&2")
  header = "Category&VideoID&Quality&StartTime&EndTime"
  (raw / "Annotations.txt").write_text(
      "\n".join([header] + [l for v in lines.values() for l in v]) + "\n")
  for split, name in ave.SPLIT_FILES.items():
    (raw / name).write_text("\n".join(lines[split]) + "\n")
  out = tmp_path / "prepared"
  assert ave.main(["--raw_dir", str(raw), "--out_dir", str(out), "--fps", "4",
                   "--image_size", "32", "--workers", "0", "--no_progress"]) == 0
  results = _run("ave", str(out / "ave"), tmp_path / "run")
  assert results["runs"][0]["test_best"]["num_examples"] == 3
