"""Tiny synthetic problems shared by the model-level tests (no files, no TensorFlow)."""
import numpy as np

# Three modalities of two kinds, so every code path is exercised with M = 3.
MODALITIES = ("audio", "video", "aux")
ENCODERS = {"audio": "audio_cnn", "video": "resnet18", "aux": "gru"}
NUM_CLASSES = 3


def separable_batch(rng: np.random.Generator, batch_size: int, num_classes: int = NUM_CLASSES,
                    noise: float = 1.0, modalities=MODALITIES):
  """One batch where every modality carries its class in a simple pattern plus Gaussian noise.

  audio/aux: [B, 40, 16] (time × bins): a class-specific band of bins is raised.
  video: [B, 2, 32, 32, 3]: a class-specific colour channel is raised.
  """
  labels = rng.integers(0, num_classes, batch_size)
  batch = {"label": labels.astype(np.int32), "mask": np.ones(batch_size, np.float32)}
  for m in modalities:
    if m == "video":
      x = rng.normal(0, noise, (batch_size, 2, 32, 32, 3)).astype(np.float32)
      x[np.arange(batch_size), :, :, :, labels % 3] += 1.5
    else:
      x = rng.normal(0, noise, (batch_size, 40, 16)).astype(np.float32)
      band = 16 // num_classes
      for i, y in enumerate(labels):
        x[i, :, y * band:(y + 1) * band] += 1.5
    batch[m] = x
  return batch
