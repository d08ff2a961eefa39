"""Kinetics-Sounds, IIBalance at the paper's settings (§V-C).

ResNet-18 over T = 3 frames of 224×224 and the 1D CNN over 16 kHz log-Mel (25 ms / 10 ms, 128 bins,
1024 frames), Adam lr 1e-4, batch 32, 50 epochs, τ = 0.07, τ_p = 0.5.

  python -m data_prep.kinetics_sounds --raw_dir /data/ks_raw --out_dir /data/ks
  python -m experiments.kinetics_sounds --config.data.dir=/data/ks/kinetics_sounds \
      --config.workdir=runs/ks

Preset `smoke` (`--config=experiments/configs/kinetics_sounds.py:smoke`) shrinks everything.
"""
from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.name = "kinetics_sounds"
  config.modalities = ("audio", "video")
  config.model.encoders = {"audio": "audio_cnn", "video": "resnet18"}
  config.data.num_frames = 3
  config.data.audio_frames = 1024
  return common.apply_preset(config, arg)
