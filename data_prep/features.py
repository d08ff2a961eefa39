"""Audio front-ends: named presets of every parameter, and the features they compute.

Every preset maps a mono waveform at its `sample_rate` to float32 [time, bins] (time first).

  iibalance     the paper's description (§V-C): 16 kHz log-Mel, 25 ms window, 10 ms hop; 128 Mel
                bins (the paper gives no count); variable length, cropped or padded by the input
                pipeline.
  ogm_ge_stft   the CREMA-D front-end of OGM-GE / AGM (dataset/CramedDataset.py): 22.05 kHz,
                tiled to 3 s, clipped to [-1, 1], |STFT| with n_fft 512, hop 353, log(|S| + 1e-7):
                188 x 257.
  kaldi_fbank   the Kinetics-Sounds front-end of OGM-GE (data/KineticSound/process_audio.py), i.e.
                torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
                window_type='hanning', num_mel_bins=128, dither=0, frame_shift=10) on the
                mean-removed waveform, zero-padded or cropped to 1024 frames: 1024 x 128. The
                normalisation (x + 4.503877) / (2 * 5.141276) is applied by the input pipeline
                (audio_norm='ks'), so the stored values are the fbank itself.

librosa's mel filters are triangles in Hz between mel-spaced edges; Kaldi's are triangles in the
mel domain, start at 20 Hz and skip the Nyquist bin, and Kaldi frames the signal differently
(snip_edges, DC removal and pre-emphasis per frame, a symmetric Hann window zero-padded to
512). `kaldi_fbank` therefore frames and builds its filters here with numpy, using librosa's
htk mel scale, to reproduce Kaldi's numbers rather than approximate them.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Optional

import numpy as np

PRESETS: dict[str, dict[str, Any]] = {
    "iibalance": dict(
        kind="log_mel", sample_rate=16000, win_ms=25.0, hop_ms=10.0, n_fft=512, n_mels=128,
        fmin=0.0, fmax=None, htk=False, mel_norm="slaney", power=2.0, window="hann",
        center=True, pad_mode="constant", log_offset=1e-6, frames=None, norm="dataset"),
    "ogm_ge_stft": dict(
        kind="log_stft", sample_rate=22050, seconds=3.0, clip=True, n_fft=512, win_length=512,
        hop_length=353, window="hann", center=True, pad_mode="constant", log_offset=1e-7,
        norm="none"),
    "kaldi_fbank": dict(
        kind="kaldi_fbank", sample_rate=16000, frame_length_ms=25.0, frame_shift_ms=10.0,
        n_mels=128, low_freq=20.0, high_freq=0.0, preemphasis=0.97, remove_dc_offset=True,
        window="hanning", round_to_power_of_two=True, remove_mean=True, frames=1024,
        norm="ks"),
}
DEFAULT_PRESET = "iibalance"
# float32 machine epsilon: Kaldi's floor before the log.
_KALDI_EPS = float(np.finfo(np.float32).eps)


def _coerce(key: str, default: Any, value: Any) -> Any:
  if isinstance(value, str):
    text = value.strip()
    if text.lower() in ("none", "null"):
      return None
    if isinstance(default, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"audio parameter {key}: expected true/false, got {value!r}")
      return text.lower() in ("true", "1")
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float) or default is None:
      try:
        return float(text)
      except ValueError:
        return text
  return value


def resolve_preset(name: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """A preset's parameters with overrides applied and the derived values filled in.

  Args:
    name: one of PRESETS.
    overrides: {parameter: value}; values may be strings (from the command line).

  Returns:
    A JSON-serialisable dict with every parameter, plus 'preset', 'bins' (feature width),
    'hop_length'/'win_length' in samples and 'frames' (a fixed time length, or None when the
    length follows the clip).

  Raises:
    ValueError: an unknown preset or parameter, or a value that does not parse.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown audio preset {name!r}; choose one of {sorted(PRESETS)}")
  params = copy.deepcopy(PRESETS[name])
  for key, value in (overrides or {}).items():
    if key not in params or key == "kind":
      raise ValueError(f"audio preset {name!r} has no parameter {key!r}; "
                       f"its parameters are {sorted(k for k in params if k != 'kind')}")
    params[key] = _coerce(key, params[key], value)
  params["preset"] = name
  sr = int(params["sample_rate"])
  if params["kind"] == "log_mel":
    params["win_length"] = int(round(sr * params["win_ms"] / 1000))
    params["hop_length"] = int(round(sr * params["hop_ms"] / 1000))
    if params["n_fft"] < params["win_length"]:
      raise ValueError(f"n_fft {params['n_fft']} is shorter than the window "
                       f"({params['win_length']} samples)")
    params["bins"] = int(params["n_mels"])
  elif params["kind"] == "log_stft":
    params["bins"] = int(params["n_fft"]) // 2 + 1
    num_samples = int(round(params["seconds"] * sr))
    params["frames"] = (1 + num_samples // int(params["hop_length"]) if params["center"] else
                        1 + (num_samples - int(params["n_fft"])) // int(params["hop_length"]))
  elif params["kind"] == "kaldi_fbank":
    # int(), not round(): torchaudio truncates the window and shift lengths.
    params["win_length"] = int(sr * params["frame_length_ms"] * 0.001)
    params["hop_length"] = int(sr * params["frame_shift_ms"] * 0.001)
    params["n_fft"] = (1 << (params["win_length"] - 1).bit_length()
                       if params["round_to_power_of_two"] else params["win_length"])
    params["bins"] = int(params["n_mels"])
  params["frames_per_second"] = sr / (params["hop_length"])
  return params


def compute_features(wave: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray, int]:
  """Audio features of one clip.

  Args:
    wave: float32 [num_samples], mono, at params['sample_rate'].
    params: from `resolve_preset`.

  Returns:
    (features float32 [time, bins], the number of frames computed from the signal before any
    padding to params['frames']).
  """
  wave = np.asarray(wave, np.float32)
  if wave.size == 0:
    raise ValueError("empty waveform")
  kind = params["kind"]
  if kind == "log_mel":
    feats = log_mel(wave, params)
  elif kind == "log_stft":
    feats = log_stft(wave, params)
  elif kind == "kaldi_fbank":
    feats = kaldi_fbank(wave, params)
  else:
    raise ValueError(f"unknown audio feature kind {kind!r}")
  valid = feats.shape[0]
  frames = params.get("frames")
  if frames is not None and kind != "log_stft":
    # Zero rows, as OGM-GE's ZeroPad2d: padding sits below the log floor's range and the
    # pipeline's normalisation maps it to (0 - mean) / (2 std), exactly as the reference.
    feats = feats[:frames]
    if feats.shape[0] < frames:
      feats = np.concatenate([feats, np.zeros((frames - feats.shape[0], feats.shape[1]),
                                              feats.dtype)])
  return np.ascontiguousarray(feats, np.float32), min(valid, feats.shape[0])


def log_mel(wave: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
  """log(Mel power spectrogram + log_offset) with librosa: float32 [time, n_mels].

  With center=True there are 1 + num_samples // hop_length frames.
  """
  import librosa

  mel = librosa.feature.melspectrogram(
      y=wave, sr=int(params["sample_rate"]), n_fft=int(params["n_fft"]),
      hop_length=int(params["hop_length"]), win_length=int(params["win_length"]),
      window=params["window"], center=bool(params["center"]), pad_mode=params["pad_mode"],
      power=float(params["power"]), n_mels=int(params["n_mels"]), fmin=float(params["fmin"]),
      fmax=None if params["fmax"] is None else float(params["fmax"]), htk=bool(params["htk"]),
      norm=params["mel_norm"])
  return np.log(mel + float(params["log_offset"])).T.astype(np.float32)


def log_stft(wave: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
  """OGM-GE's CREMA-D spectrogram: float32 [frames, n_fft // 2 + 1] (188 x 257 by default).

  The waveform is tiled until it fills params['seconds'] and cut there (OGM-GE tiles exactly 3
  times, which is the same for every clip of at least one second), clipped to [-1, 1], and
  log(|STFT| + log_offset) is taken.
  """
  import librosa

  n = int(round(float(params["seconds"]) * int(params["sample_rate"])))
  x = np.tile(wave, int(math.ceil(n / len(wave))))[:n]
  if params["clip"]:
    x = np.clip(x, -1.0, 1.0)
  spec = librosa.stft(x, n_fft=int(params["n_fft"]), hop_length=int(params["hop_length"]),
                      win_length=int(params["win_length"]), window=params["window"],
                      center=bool(params["center"]), pad_mode=params["pad_mode"])
  return np.log(np.abs(spec) + float(params["log_offset"])).T.astype(np.float32)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, low_freq: float,
                    high_freq: float) -> np.ndarray:
  """Kaldi's mel filterbank (triangles in the mel domain): [n_mels, n_fft // 2 + 1].

  high_freq <= 0 counts from the Nyquist frequency (Kaldi's convention). The Nyquist column is
  zero, as in Kaldi.
  """
  import librosa

  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  mel_low = librosa.hz_to_mel(low_freq, htk=True)
  mel_high = librosa.hz_to_mel(high_freq, htk=True)
  delta = (mel_high - mel_low) / (n_mels + 1)
  edges = mel_low + delta * np.arange(n_mels + 2)
  left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  mel = librosa.hz_to_mel(np.arange(n_fft // 2) * sample_rate / n_fft, htk=True)[None, :]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  banks = np.maximum(0.0, np.minimum(up, down))
  return np.concatenate([banks, np.zeros((n_mels, 1))], axis=1)


def kaldi_fbank(wave: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
  """Kaldi log Mel filterbank (torchaudio.compliance.kaldi.fbank settings of the KS recipe).

  Frames of win_length samples every hop_length samples, only where a whole frame fits
  (snip_edges): 1 + (num_samples - win_length) // hop_length frames. Per frame: remove the DC
  offset, pre-emphasise (x[i] - 0.97 x[i-1], x[-1] := x[0]), multiply by a symmetric Hann window,
  zero-pad to n_fft, power spectrum, Kaldi mel filters, log with a float32-epsilon floor.

  Returns:
    float32 [frames, n_mels], unpadded (`compute_features` pads to params['frames']).
  """
  sr = int(params["sample_rate"])
  win, hop, n_fft = int(params["win_length"]), int(params["hop_length"]), int(params["n_fft"])
  x = np.asarray(wave, np.float64)
  if params["remove_mean"]:
    x = x - x.mean()
  if len(x) < win:
    return np.zeros((0, int(params["n_mels"])), np.float32)
  frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
  if params["remove_dc_offset"]:
    frames = frames - frames.mean(axis=1, keepdims=True)
  coef = float(params["preemphasis"])
  if coef:
    shifted = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - coef * shifted
  if params["window"] == "hanning":
    window = np.hanning(win)  # symmetric: 0.5 - 0.5 cos(2 pi n / (win - 1)), as Kaldi's
  elif params["window"] == "povey":
    window = np.hanning(win) ** 0.85
  elif params["window"] == "hamming":
    window = np.hamming(win)
  else:
    raise ValueError(f"unknown Kaldi window {params['window']!r}")
  power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2
  banks = kaldi_mel_banks(int(params["n_mels"]), n_fft, sr, float(params["low_freq"]),
                          float(params["high_freq"]))
  return np.log(np.maximum(power @ banks.T, _KALDI_EPS)).astype(np.float32)
