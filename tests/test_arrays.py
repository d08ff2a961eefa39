"""iib_jax.arrays: the on-disk format and the numpy data source's batch contract."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from iib_jax import arrays

N = {"train": 10, "validation": 5, "test": 7}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("arrays"))
  splits = {}
  for s, (split, n) in enumerate(N.items()):
    # Values spell the example: audio[i] = [i, s], video[i] = [−i, −i, −i]; label i mod 3.
    splits[split] = {"audio": np.stack([np.arange(n), np.full(n, s)], 1).astype(np.float32),
                     "video": -np.repeat(np.arange(n)[:, None], 3, 1).astype(np.float32),
                     "label": np.arange(n) % 3,
                     "clip_id": [f"{split}_{i}" for i in range(n)]}
  arrays.save(out, splits, {"name": "toy", "num_classes": 3, "modalities": ["audio", "video"],
                            "class_names": ["a", "b", "c"]})
  return out


def _data(data_dir, **kwargs):
  kwargs = {"process_index": 0, "process_count": 1, **kwargs}
  return arrays.ArrayData(data_dir, **kwargs)


def _ids(batches):
  return [c.decode() for b in batches for c in b["clip_id"]]


def test_metadata_records_format_sizes_and_dims(data_dir):
  info = arrays.load_info(data_dir)
  assert info["format"] == "arrays" and arrays.is_array_dataset(data_dir)
  assert info["splits"] == N and info["dims"] == {"audio": 2, "video": 3}
  data = _data(data_dir, batch_size=4)
  assert data.num_classes == 3 and data.class_names == ["a", "b", "c"]
  assert data.modalities == ("audio", "video")
  assert [data.num_examples(s) for s in N] == [10, 5, 7]


def test_train_epoch_is_a_permutation_without_the_last_partial_batch(data_dir):
  data = _data(data_dir, batch_size=4)
  assert data.steps_per_epoch() == 2                  # 10 // 4: two examples dropped
  batches = list(data.train(epoch=0, seed=1))
  assert len(batches) == len(data.train(0, 1)) == 2
  for b in batches:
    assert b["audio"].dtype == np.float32 and b["audio"].shape == (4, 2)
    assert b["video"].shape == (4, 3) and b["label"].dtype == np.int32
    assert b["mask"].dtype == np.float32 and (b["mask"] == 1).all()
    assert b["clip_id"].dtype == object and isinstance(b["clip_id"][0], bytes)
    # Every key describes the same examples.
    i = b["audio"][:, 0].astype(int)
    np.testing.assert_array_equal(b["video"][:, 0], -i)
    np.testing.assert_array_equal(b["label"], i % 3)
    assert [c.decode() for c in b["clip_id"]] == [f"train_{k}" for k in i]
    assert (b["audio"][:, 1] == 0).all()                # from the train split
  ids = _ids(batches)
  assert len(set(ids)) == 8


def test_train_order_depends_on_seed_and_epoch_only(data_dir):
  data = _data(data_dir, batch_size=2)
  again = _data(data_dir, batch_size=2)
  assert _ids(data.train(3, 7)) == _ids(again.train(3, 7)) == _ids(data.train(3, 7))
  assert _ids(data.train(3, 7)) != _ids(data.train(4, 7))
  assert _ids(data.train(3, 7)) != _ids(data.train(3, 8))
  # The order is numpy's permutation from default_rng([seed, epoch]).
  expected = np.random.default_rng([7, 3]).permutation(10)
  assert _ids(data.train(3, 7)) == [f"train_{k}" for k in expected]


def test_start_batch_resumes_the_epoch_exactly(data_dir):
  data = _data(data_dir, batch_size=2)
  full = list(data.train(1, 0))
  rest = list(data.train(1, 0, start_batch=3))
  assert len(data.train(1, 0, start_batch=3)) == len(rest) == 2
  for a, b in zip(full[3:], rest):
    np.testing.assert_array_equal(a["audio"], b["audio"])


def test_eval_pads_the_last_batch_and_masks_it(data_dir):
  data = _data(data_dir, batch_size=2, eval_batch_size=4)
  batches = list(data.eval("test"))
  assert len(batches) == len(data.eval("test")) == data.num_eval_batches("test") == 2
  last = batches[-1]
  np.testing.assert_array_equal(last["mask"], [1, 1, 1, 0])
  assert last["audio"].shape == (4, 2) and (last["audio"][3] == 0).all()
  assert last["label"][3] == 0 and last["clip_id"][3] == b""
  ids = [c for c, m in zip(_ids(batches), np.concatenate([b["mask"] for b in batches])) if m]
  assert ids == [f"test_{i}" for i in range(7)]              # stored order, each once
  assert (np.concatenate([b["audio"][:, 1] for b in batches])[:7] == 2).all()


def test_hosts_take_their_slices_of_each_global_batch(data_dir):
  one = _data(data_dir, batch_size=4, eval_batch_size=4)
  hosts = [_data(data_dir, batch_size=4, eval_batch_size=4, process_index=h, process_count=2)
           for h in range(2)]
  for split_batches in (lambda d: d.train(2, 5), lambda d: d.eval("validation")):
    whole = list(split_batches(one))
    parts = [list(split_batches(h)) for h in hosts]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for k, batch in enumerate(whole):
      for key in ("audio", "label", "mask"):
        np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]),
                                      batch[key])
  with pytest.raises(ValueError, match="multiple of the 2 hosts"):
    _data(data_dir, batch_size=3, process_index=0, process_count=2)


def test_modalities_select_and_rename_batch_keys(data_dir):
  data = _data(data_dir, batch_size=2, modalities={"sound": "audio"})
  batch = next(iter(data.train(0, 0)))
  assert sorted(batch) == ["clip_id", "label", "mask", "sound"]
  assert data.modalities == ("sound",)
  assert sorted(_data(data_dir, batch_size=2, modalities=["video"]).example()) == [
      "clip_id", "label", "mask", "video"]
  with pytest.raises(ValueError, match=r"\['text'\] are not stored"):
    _data(data_dir, batch_size=2, modalities=["text"])


def test_example_is_a_small_validation_batch(data_dir):
  ex = _data(data_dir, batch_size=4).example()
  assert ex["audio"].shape == (2, 2) and (ex["audio"][:, 1] == 1).all()
  assert (ex["mask"] == 1).all()


def test_errors_name_the_problem(data_dir, tmp_path):
  data = _data(data_dir, batch_size=2)
  with pytest.raises(ValueError, match="no split 'holdout'"):
    data.eval("holdout")
  with pytest.raises(FileNotFoundError, match="not a prepared array dataset"):
    arrays.load_info(str(tmp_path))
  (tmp_path / "metadata.json").write_text(json.dumps({"name": "ks", "num_classes": 3}))
  assert not arrays.is_array_dataset(str(tmp_path))
  with pytest.raises(ValueError, match="not an array dataset"):
    arrays.load_info(str(tmp_path))
  with pytest.raises(ValueError, match="cannot be a modality name"):
    arrays.save(str(tmp_path / "x"), {}, {"num_classes": 2, "modalities": ["label"]})


def test_reading_arrays_imports_no_tensorflow(data_dir):
  code = ("import sys; from iib_jax import arrays; from data_prep import synthetic_features; "
          f"d = arrays.ArrayData({data_dir!r}, batch_size=2, process_index=0, process_count=1); "
          "list(d.train(0, 0)); list(d.eval('test')); "
          "bad = [m for m in ('tensorflow', 'librosa', 'av') if m in sys.modules]; "
          "assert not bad, bad")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
