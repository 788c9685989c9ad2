"""What a result was computed on: the host's CPU, cores, software and devices.

Recorded in every run's ``results.json`` (``host``) and every benchmark file
(``machine``), so that a collected number names its hardware: results from
two CPU models or from a CPU and a GPU can then be told apart.
"""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any

import jax
import jaxlib

from ols_jax import distributed


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
  try:
    for line in pathlib.Path(cpuinfo).read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
  """The host facts of this process.

  Returns:
    ``cpu`` (model name), ``os_cpu_count``, ``affinity_cpus`` (cores this
    process may use), ``platform``, ``python``, ``jax`` and ``jaxlib``
    versions, ``backend`` and ``device_kind`` of the default devices, and
    ``devices`` (their global count).
  """
  devices = jax.devices()
  return {"cpu": cpu_model(), "os_cpu_count": os.cpu_count(),
          "affinity_cpus": distributed.usable_cores(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "backend": jax.default_backend(),
          "device_kind": devices[0].device_kind, "devices": len(devices)}
