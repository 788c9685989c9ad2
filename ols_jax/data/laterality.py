"""Which classes swap under a horizontal flip (left <-> right anatomy).

A horizontal mirror of a left kidney is a right kidney. Augmenting such a
dataset with flips must swap those labels, or it injects label noise into every
method. The class pairs come from the class names (a ``left`` / ``right`` token,
e.g. ``femur-left``, ``CT-abdomen-kidney_right``) and are declared explicitly
for the shared datasets and the TFDS builders (:data:`DECLARED_PAIRS`); a
declaration must agree with what the names imply. A dataset with a lateral
class that has no partner cannot be flipped: :func:`flip_label_map` raises.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from ols_jax.data.errors import DataError

_SIDE = re.compile(r"(?<![a-z])(left|right)(?![a-z])", re.IGNORECASE)

_ORGAN_PAIRS = (("femur-left", "femur-right"), ("kidney-left", "kidney-right"),
                ("lung-left", "lung-right"))

# Explicit declarations (dataset name -> pairs of class names). Datasets not
# listed here have their pairs derived from the class names.
DECLARED_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "organamnist": _ORGAN_PAIRS,
    "medmnist/organamnist": _ORGAN_PAIRS,
    "medmnist/organcmnist": _ORGAN_PAIRS,
    "medmnist/organsmnist": _ORGAN_PAIRS,
    "radmix": (("CT-abdomen-femur_left", "CT-abdomen-femur_right"),
               ("CT-abdomen-kidney_left", "CT-abdomen-kidney_right"),
               ("CT-abdomen-lung_left", "CT-abdomen-lung_right")),
    # RadImageNet's 165 labels name no side.
    "radimagenet": (),
}


def _swap_token(match: re.Match) -> str:
  word = match.group(0)
  other = "right" if word.lower() == "left" else "left"
  if word.isupper():
    return other.upper()
  if word[0].isupper():
    return other.capitalize()
  return other


def mirror_name(name: str) -> Optional[str]:
  """The class name with every ``left``/``right`` token swapped; None if none."""
  if not _SIDE.search(name):
    return None
  return _SIDE.sub(_swap_token, name)


def derived_pairs(class_names: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """Left/right pairs implied by the class names.

  Raises:
    DataError: a lateral class has no mirrored partner among the classes.
  """
  names = [str(n) for n in class_names]
  present = set(names)
  pairs = []
  for name in names:
    other = mirror_name(name)
    if other is None:
      continue
    if other not in present:
      raise DataError(
          f"class {name!r} names a side but {other!r} is not a class: a "
          f"horizontal flip would mislabel it; train with augment='crop' or "
          f"'none', or declare its flip pairs in ols_jax/data/laterality.py")
    pair = tuple(sorted((name, other)))
    if pair not in pairs:
      pairs.append(pair)
  return tuple(pairs)


def flip_label_map(class_names: Sequence[str],
                   dataset_name: Optional[str] = None) -> np.ndarray:
  """``m[y]``: the label of a horizontally flipped example of class ``y``.

  Args:
    class_names: the dataset's class names (label = index).
    dataset_name: looks up an explicit declaration in :data:`DECLARED_PAIRS`.

  Returns:
    An int32 permutation of ``range(K)`` that is its own inverse (identity
    for a dataset without lateral classes).

  Raises:
    DataError: the laterality cannot be mapped (a side without a partner, or
      a declaration that disagrees with the class names).
  """
  names = [str(n) for n in class_names]
  derived = derived_pairs(names)
  declared = DECLARED_PAIRS.get(dataset_name) if dataset_name else None
  pairs = derived
  if declared is not None:
    missing = [n for pair in declared for n in pair if n not in names]
    if missing:
      raise DataError(f"dataset {dataset_name}: declared flip pair classes "
                      f"{missing} are not among its classes")
    if {tuple(sorted(p)) for p in declared} != set(derived):
      raise DataError(f"dataset {dataset_name}: declared flip pairs "
                      f"{list(declared)} differ from those its class names "
                      f"imply {list(derived)}")
    pairs = declared
  index = {n: i for i, n in enumerate(names)}
  mapping = np.arange(len(names), dtype=np.int32)
  for a, b in pairs:
    mapping[index[a]], mapping[index[b]] = index[b], index[a]
  return mapping
