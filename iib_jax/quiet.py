"""TensorFlow without its start-up noise.

Importing TensorFlow prints, before its logging is configured, lines that no setting silences
(oneDNN's notice, the CPU feature guard). `import_tensorflow()` imports it with the process's
standard error captured, and passes on every line that is not one of those notices.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

_NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
          "oneDNN custom operations are on", "cpu_feature_guard.cc",
          "This TensorFlow binary is optimized to use available CPU instructions",
          "To enable the following instructions", "rebuild TensorFlow with the appropriate")


def skip_keras() -> None:
  """For a process that never uses Keras (the project's commands call this first): TensorFlow's
  import then skips its eager import of Keras, 2.5 s of every command's start on the development
  CPU. It asks for the legacy Keras package, and where that is not installed TensorFlow goes on
  without either (`tf.keras` is then unavailable in this process). Nothing changes where the
  legacy package is installed, where TensorFlow is already imported, or where the variable is set.
  """
  if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def import_tensorflow():
  """`import tensorflow`, quietly; returns the module."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if line.strip() and not any(n in line for n in _NOISE):
          sys.stderr.write(line)
  return tf
