"""AVE, IIBalance at the paper's settings (§V-C): ResNet-18 video, 1D CNN audio, event segment only.

  python -m data_prep.ave --raw_dir /data/ave_raw --out_dir /data/ave
  python -m experiments.ave --config.data.dir=/data/ave/ave --config.workdir=runs/ave
"""
from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.name = "ave"
  config.modalities = ("audio", "video")
  config.model.encoders = {"audio": "audio_cnn", "video": "resnet18"}
  config.data.num_frames = 3
  config.data.audio_frames = 1024
  # PMR's official AVE script computes its prototypes on the validation split.
  config.methods.pmr.prototype_split = "validation"
  return common.apply_preset(config, arg)
