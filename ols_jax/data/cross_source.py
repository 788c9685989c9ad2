"""Cross-source shift: another source's test images in the run's class space.

A model trained on one source is scored on a second source's test split,
with each of the second source's classes mapped to the training class it
corresponds to; classes with no counterpart are left out. This is the
multi-centre question of the OLS paper on real data rather than synthetic
corruptions.

A mapping is defined per ``(source, target)`` pair of shared datasets and is
part of the analysis plan (``docs/results/regime_plan.md``, "Cross-source
shift").
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ols_jax.data.errors import DataError

# brain_tumor_44 names are "<type> <sequence>" (T1, T1C+, T2); the type
# spellings are the dataset's own.
_BRAIN44_GLIOMA = ("Astrocitoma", "Glioblastoma", "Oligodendroglioma", "Ependimoma")


def _brain44_to_brain4(name: str) -> Optional[str]:
  kind = name.rsplit(" ", 1)[0]
  if kind == "Meningioma":
    return "meningioma"
  if kind == "_NORMAL":
    return "notumor"
  if kind in _BRAIN44_GLIOMA:
    return "glioma"
  return None  # pituitary has no counterpart; the other 30 classes none either


MAPPINGS: dict[tuple[str, str], tuple[Callable[[str], Optional[str]], str]] = {
    ("brain_tumor_44", "brain_tumor_mri"): (
        _brain44_to_brain4,
        "Meningioma T1/T1C+/T2 -> meningioma; _NORMAL T1/T2 -> notumor; Astrocitoma, "
        "Glioblastoma, Oligodendroglioma, Ependimoma (every sequence) -> glioma; every other "
        "class left out (no pituitary counterpart)"),
}


def check_pair(source: str, target: str) -> None:
  """Raises DataError unless a mapping from ``source`` to ``target`` exists."""
  if (source, target) not in MAPPINGS:
    known = ", ".join(f"{s} -> {t}" for s, t in MAPPINGS)
    raise DataError(f"no cross-source mapping from {source!r} to {target!r}; known: {known}")


def label_map(source: str, target: str, source_classes: Sequence[str],
              target_classes: Sequence[str]) -> np.ndarray:
  """Per source class, the target class index, or -1 when it is left out.

  Args:
    source, target: dataset names (a pair of :data:`MAPPINGS`).
    source_classes: the source's class names, in label order.
    target_classes: the target's (the run's) class names, in label order.

  Returns:
    ``(len(source_classes),)`` int64.

  Raises:
    DataError: no mapping for the pair, a mapped name the target lacks, or
      a mapping that keeps no class.
  """
  check_pair(source, target)
  fn, _ = MAPPINGS[(source, target)]
  index = {n: i for i, n in enumerate(target_classes)}
  out = np.full(len(source_classes), -1, np.int64)
  for i, name in enumerate(source_classes):
    mapped = fn(name)
    if mapped is None:
      continue
    if mapped not in index:
      raise DataError(f"cross-source {source} -> {target}: {name!r} maps to {mapped!r}, "
                      f"which is not a class of {target} ({', '.join(target_classes)})")
    out[i] = index[mapped]
  if (out < 0).all():
    raise DataError(f"cross-source {source} -> {target}: no class is mapped")
  return out


def mapped_subset(labels: np.ndarray, lmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(kept example indices, their labels in the target space)``."""
  labels = np.asarray(labels, np.int64)
  target = lmap[labels]
  keep = np.flatnonzero(target >= 0)
  return keep, target[keep]


def description(source: str, target: str) -> str:
  """The mapping in words (recorded with the run)."""
  check_pair(source, target)
  return MAPPINGS[(source, target)][1]
