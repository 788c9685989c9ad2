"""Atomic file writes: a temporary file in the target's folder, then a rename.

A reader (or a run that resumes after a kill) sees the old file or the new
one, never a part of either. The temporary file is ``.<name>.<pid>.tmp<suffix>``
in the target's folder: hidden, unique per process (concurrent writers of the
same target never share it) and with the target's suffix, so writers that add
an extension (``np.save``, ``savefig``) keep its name. On failure it is
deleted and the target is left as it was.

Which process writes (process 0 of a multi-process run) is the caller's
decision; nothing here looks at JAX.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from typing import Any, Iterator, IO

import numpy as np


def temp_path(path: str | os.PathLike) -> pathlib.Path:
  """The temporary file of an atomic write of ``path`` by this process."""
  path = pathlib.Path(path)
  return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path to write; renamed to ``path`` when the block ends.

  If the block raises (or is interrupted), the temporary file is deleted and
  ``path`` keeps its old content. The folder must exist.

  Args:
    path: the target file.

  Yields:
    The temporary path (:func:`temp_path`), in the target's folder.
  """
  tmp = temp_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
  """:func:`atomic_path` with the temporary file opened (``open`` arguments).

  The file is closed before the rename.
  """
  with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
    yield f


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_open(path, "w", encoding=encoding) as f:
    f.write(text)


def json_default(x: Any) -> Any:
  """NumPy scalars and arrays as JSON numbers and lists (``json.dumps(default=)``)."""
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs) -> None:
  """Writes ``json.dumps(obj, **json_kwargs)`` to ``path`` atomically.

  NumPy scalars and arrays are written as numbers and lists
  (:func:`json_default`) unless ``json_kwargs`` has another ``default``. No
  newline is added at the end.
  """
  json_kwargs.setdefault("default", json_default)
  atomic_write_text(path, json.dumps(obj, **json_kwargs))


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
  """``np.save(path, array)`` atomically (no ``.npy`` is appended to ``path``)."""
  with atomic_open(path, "wb") as f:
    np.save(f, np.asarray(array))


def atomic_save_npz(path: str | os.PathLike, /, *, compressed: bool = False,
                    **arrays: Any) -> None:
  """``np.savez(path, **arrays)`` (or ``savez_compressed``) atomically."""
  save = np.savez_compressed if compressed else np.savez
  with atomic_open(path, "wb") as f:
    save(f, **arrays)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """``shutil.copy2(src, dst)`` atomically (content and metadata)."""
  with atomic_path(dst) as tmp:
    shutil.copy2(src, tmp)
