"""CREMA-D, IIBalance at the paper's settings (§V-C): MobileNetV2 over face frames, a recurrent
(GRU) audio encoder over log-Mel, features projected to d = 512; T = 2 frames, 3 s of audio.

  python -m data_prep.crema_d --raw_dir /data/crema_raw --out_dir /data/crema
  python -m experiments.crema_d --config.data.dir=/data/crema/crema_d --config.workdir=runs/crema
"""
from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.name = "crema_d"
  config.modalities = ("audio", "video")
  config.model.encoders = {"audio": "gru", "video": "mobilenet_v2"}
  config.data.num_frames = 2
  config.data.audio_frames = 300
  return common.apply_preset(config, arg)
