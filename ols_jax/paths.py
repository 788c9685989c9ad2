"""Where the project finds its offline real-image data.

One helper for every consumer (tests, configs, benchmarks): the environment
variable ``OLS_JAX_DATA`` wins; otherwise ``../shared/data`` relative to the
repository root.
"""

from __future__ import annotations

import os
import pathlib

ENV_VAR = "OLS_JAX_DATA"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def data_root() -> pathlib.Path:
  """The folder holding the shared datasets (it may not exist)."""
  value = os.environ.get(ENV_VAR)
  if value:
    return pathlib.Path(value).expanduser().resolve()
  return (REPO_ROOT / ".." / "shared" / "data").resolve()


def dataset_dir(name: str) -> pathlib.Path:
  """``data_root() / name``; it may not exist."""
  return data_root() / name
