"""DICOM images to uint8 pixels, with pydicom.

A 2D grayscale image is mapped as a viewer would display it: the modality
rescale (``RescaleSlope``, ``RescaleIntercept``), then the VOI window
(``WindowCenter`` / ``WindowWidth``, the first value when several are given;
the linear function of DICOM PS3.3 C.11.2.1.2.1), or, without a usable
window, the image's own min-max range; ``MONOCHROME1`` (white = low values) is
inverted so that high values are bright, as in ``MONOCHROME2``. Colour images
(RGB, YBR converted to RGB by pydicom, palette colour through its lookup table)
are scaled to 8 bits per channel. Multi-frame volumes and pixel data that no
installed decoder can read are refused with a one-line :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import warnings
from typing import Any, Iterator

import numpy as np

from ols_jax.data.errors import DataError

PREAMBLE_OFFSET = 128
MAGIC = b"DICM"


def is_dicom(path: str | os.PathLike) -> bool:
  """True for a ``.dcm`` file or a file with the DICOM preamble (``DICM``)."""
  path = pathlib.Path(path)
  if path.suffix.lower() == ".dcm":
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(PREAMBLE_OFFSET + len(MAGIC))
  except OSError:
    return False
  return head[PREAMBLE_OFFSET:] == MAGIC


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences pydicom's own log records and warnings (tracebacks of failed
  decoders, VR fix-ups): a failure is reported once, as a DataError."""
  logger = logging.getLogger("pydicom")
  level = logger.level
  logger.setLevel(logging.CRITICAL + 1)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    logger.setLevel(level)


def _first(value: Any) -> float:
  """The first value of a (possibly multi-valued) numeric element."""
  if value is None:
    raise ValueError("missing")
  if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
    value = value[0]
  return float(value)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
  """The linear VOI window of DICOM PS3.3 C.11.2.1.2.1, to float [0, 255].

  Args:
    values: modality values (after rescale).
    center: ``WindowCenter``.
    width: ``WindowWidth`` (>= 1).

  Returns:
    float64 values in ``[0, 255]``.
  """
  x = np.asarray(values, np.float64)
  lo = center - 0.5 - (width - 1.0) / 2.0
  hi = center - 0.5 + (width - 1.0) / 2.0
  scaled = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0 if width > 1 else 0.0 * x
  return np.where(x <= lo, 0.0, np.where(x > hi, 255.0, scaled))


def min_max(values: np.ndarray) -> np.ndarray:
  """Linear map of the image's range to float [0, 255] (zeros if constant)."""
  x = np.asarray(values, np.float64)
  lo, hi = float(x.min()), float(x.max())
  if hi <= lo:
    return np.zeros_like(x)
  return (x - lo) * (255.0 / (hi - lo))


def _grayscale(ds, arr: np.ndarray) -> np.ndarray:
  slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
  intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
  values = arr.astype(np.float64) * slope + intercept
  try:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    usable = width >= 1.0 and np.isfinite(center) and np.isfinite(width)
  except (ValueError, TypeError, IndexError):
    usable = False
  out = window(values, center, width) if usable else min_max(values)
  if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
    out = 255.0 - out
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _colour(ds, arr: np.ndarray) -> np.ndarray:
  if arr.dtype == np.uint8:
    return arr
  bits = int(ds.get("BitsStored", 0) or 0)
  top = float(2 ** bits - 1) if bits else float(max(arr.max(), 1))
  return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
  """Decodes one single-frame DICOM image to uint8 ``(H, W)`` or ``(H, W, 3)``.

  Args:
    path: the file.

  Returns:
    The displayed image (see the module docstring).

  Raises:
    DataError: pydicom missing, not DICOM, no pixel data, a multi-frame
      volume, an undecodable (e.g. compressed) transfer syntax, or an
      unsupported photometric interpretation.
  """
  with _quiet():
    return _read(path)


def _read(path: str | os.PathLike) -> np.ndarray:
  try:
    import pydicom  # pylint: disable=import-outside-toplevel
    from pydicom import pixels  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f"DICOM file {path}: reading DICOM needs pydicom "
                    f"(pip install pydicom)") from None
  try:
    ds = pydicom.dcmread(os.fspath(path), force=pathlib.Path(path).suffix.lower() == ".dcm")
  except Exception as e:  # pylint: disable=broad-except
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"cannot read DICOM file {path}: {detail}") from None
  if "PixelData" not in ds:
    raise DataError(f"DICOM file {path}: no pixel data (not an image)")
  try:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
  except (TypeError, ValueError):
    frames = 1
  if frames > 1:
    raise DataError(f"DICOM file {path}: multi-frame volume ({frames} frames); "
                    f"predict takes 2D images, so export the slices as single-frame "
                    f"files")
  meta = getattr(ds, "file_meta", None)
  syntax = meta.get("TransferSyntaxUID") if meta is not None else None
  try:
    arr = np.asarray(ds.pixel_array)
  except Exception as e:  # pylint: disable=broad-except
    if syntax is not None and syntax.is_compressed:
      raise DataError(
          f"DICOM file {path}: cannot decode transfer syntax '{syntax.name}' "
          f"({syntax}) with the installed pydicom plugins; convert it to an "
          f"uncompressed syntax or install a decoder (e.g. pylibjpeg)") from None
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"DICOM file {path}: cannot decode pixel data: {detail}") from None
  photometric = str(ds.get("PhotometricInterpretation", "")).upper()
  if photometric == "PALETTE COLOR":
    try:
      arr = np.asarray(pixels.apply_color_lut(arr, ds))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"DICOM file {path}: cannot apply the palette colour lookup "
                      f"table: {e}") from None
    return _colour(ds, arr)
  if arr.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2", ""):
    return _grayscale(ds, arr)
  if arr.ndim == 3 and arr.shape[-1] == 3:
    return _colour(ds, arr)
  raise DataError(f"DICOM file {path}: unsupported image (photometric "
                  f"interpretation {photometric or 'missing'!r}, pixel array "
                  f"shape {arr.shape}); expected grayscale or RGB")
