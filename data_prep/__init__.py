"""Raw audio-visual datasets → sharded TFRecords (docs/DATA.md).

  python -m data_prep.kinetics_sounds --raw_dir R --out_dir O [--workers N ...]
  python -m data_prep.crema_d         --raw_dir R --out_dir O [--split speaker ...]
  python -m data_prep.ave             --raw_dir R --out_dir O
  python -m data_prep.synthetic       --out_dir R        (a synthetic raw dataset, KS layout)
  python -m data_prep.synthetic_features --out_dir O     (the feature-level imbalance benchmark)

Modules: splits (split files → clips), media (PyAV decoding), features (audio front-ends),
examples (one clip → one example), tfrecords (sharded, atomic, resumable writing), cli (shared
flags), synthetic (the synthetic dataset and `ensure_synthetic`), synthetic_features (vectors with
an imbalance dial, written in the `iib_jax.arrays` format).
"""
