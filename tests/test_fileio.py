"""Atomic writes (ols_jax.fileio): all or nothing, no temporary file left, safe names."""

import json
import multiprocessing
import os

import numpy as np
import pytest

from ols_jax import fileio


class Boom(Exception):
  pass


def _names(folder):
  return sorted(p.name for p in folder.iterdir())


def test_temp_path_is_hidden_per_process_and_keeps_the_suffix(tmp_path):
  tmp = fileio.temp_path(tmp_path / "epoch_001.npy")
  assert tmp.parent == tmp_path
  assert tmp.name == f".epoch_001.npy.{os.getpid()}.tmp.npy"
  assert fileio.temp_path(tmp_path / "report.md").suffix == ".md"
  assert fileio.temp_path(tmp_path / "results.json").name.startswith(".results.json.")


def test_writes_replace_the_file_and_leave_nothing_else(tmp_path):
  fileio.atomic_write_text(tmp_path / "a.md", "old")
  fileio.atomic_write_text(tmp_path / "a.md", "new\n")
  assert (tmp_path / "a.md").read_text() == "new\n"
  fileio.atomic_save_npy(tmp_path / "s.npy", np.eye(3))
  np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), np.eye(3))
  fileio.atomic_save_npy(tmp_path / "no_suffix", np.arange(4))  # np.save appends nothing
  np.testing.assert_array_equal(np.load(tmp_path / "no_suffix"), np.arange(4))
  for compressed in (False, True):
    fileio.atomic_save_npz(tmp_path / "r.npz", compressed=compressed, path=np.ones(2),
                           label=np.arange(3))
    with np.load(tmp_path / "r.npz") as z:
      assert sorted(z.files) == ["label", "path"]
  fileio.atomic_copy(tmp_path / "a.md", tmp_path / "b.md")
  assert (tmp_path / "b.md").read_text() == "new\n"
  assert _names(tmp_path) == ["a.md", "b.md", "no_suffix", "r.npz", "s.npy"]


def test_a_failure_mid_write_keeps_the_old_file_and_no_temp_file(tmp_path):
  path = tmp_path / "results.json"
  fileio.atomic_write_json(path, {"a": 1})
  with pytest.raises(Boom):
    with fileio.atomic_open(path) as f:
      f.write('{"a": 2, "half')
      f.flush()
      assert fileio.temp_path(path).exists()
      raise Boom()
  assert json.loads(path.read_text()) == {"a": 1}
  assert _names(tmp_path) == ["results.json"]
  # A value that cannot be written fails before anything is replaced.
  with pytest.raises(TypeError, match="not JSON serialisable"):
    fileio.atomic_write_json(path, {"a": object()})
  with pytest.raises(KeyboardInterrupt):
    with fileio.atomic_path(path) as tmp:
      tmp.write_text("partial")
      raise KeyboardInterrupt
  assert json.loads(path.read_text()) == {"a": 1}
  assert _names(tmp_path) == ["results.json"]
  # A failure before the temporary file exists is reported as is.
  with pytest.raises(FileNotFoundError):
    fileio.atomic_write_text(tmp_path / "missing" / "x.md", "x")
  assert _names(tmp_path) == ["results.json"]


def test_numpy_values_in_json(tmp_path):
  path = tmp_path / "r.json"
  obj = {"f": np.float32(0.25), "i": np.int64(3), "b": np.bool_(True),
         "a": np.arange(3, dtype=np.int32), "m": np.eye(2, dtype=np.float64), "p": 1.5}
  fileio.atomic_write_json(path, obj, indent=2, sort_keys=True)
  text = path.read_text()
  assert json.loads(text) == {"f": 0.25, "i": 3, "b": True, "a": [0, 1, 2],
                              "m": [[1.0, 0.0], [0.0, 1.0]], "p": 1.5}
  assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)  # no newline added
  fileio.atomic_write_json(path, {"x": {1}}, default=sorted)  # another default wins
  assert json.loads(path.read_text()) == {"x": [1]}


def _write_many(path, tag, n):
  for i in range(n):
    fileio.atomic_write_text(path, f"{tag} {i}\n" * 200)


def test_concurrent_writers_never_collide(tmp_path):
  """Two processes rewriting one file: every read is one whole version."""
  path = tmp_path / "shared.txt"
  fileio.atomic_write_text(path, "start 0\n" * 200)
  ctx = multiprocessing.get_context("spawn")
  procs = [ctx.Process(target=_write_many, args=(path, tag, 200)) for tag in ("a", "b")]
  for p in procs:
    p.start()
  while any(p.is_alive() for p in procs):
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and len(set(lines)) == 1, "a torn or mixed write"
  for p in procs:
    p.join()
    assert p.exitcode == 0
  assert path.read_text().splitlines()[0] in ("a 199", "b 199")
  assert _names(tmp_path) == ["shared.txt"]
