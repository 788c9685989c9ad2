"""Deterministic image corruptions for distribution-shift evaluation.

Eight corruptions at five severities, in the spirit of ImageNet-C (Hendrycks &
Dietterich 2019) but chosen for gray and RGB medical scans at small sizes
(28 and 64 px): at severity 5 each is strong but the image stays
recognisable. Severity 0 is the identity. Intensities are handled in ``[0, 1]``
units (``uint8 / 255``) and rounded back to ``uint8`` with clipping.

==================  ============================  ====  =====  ====  ====  ===
corruption          parameter                     1     2      3     4     5
==================  ============================  ====  =====  ====  ====  ===
``gaussian_noise``  noise std (``[0, 1]`` units)  0.02  0.035  0.05  0.07  0.1
``gaussian_blur``   std in px at a 28 px side     0.4   0.55   0.7   0.85  1.0
``contrast``        factor ``c``                  0.75  0.6    0.45  0.3   0.2
``brightness``      additive shift                0.05  0.1    0.15  0.2   0.3
``gamma``           exponent ``g``                1.15  1.3    1.5   1.75  2.0
``jpeg``            JPEG quality                  60    40     25    15    10
``downsample``      down-sampling factor          1.25  1.5    1.75  2.0   2.5
``bias_field``      range of the log-field        0.3   0.6    0.9   1.2   1.5
==================  ============================  ====  =====  ====  ====  ===

Definitions (``x`` in ``[0, 1]``):

* ``gaussian_noise``: ``x + n``, ``n ~ N(0, std)`` i.i.d. per pixel and
  channel.
* ``gaussian_blur``: a Gaussian filter over the two spatial axes only (never
  across channels or images), std ``s * min(H, W) / 28`` pixels, so the same
  scan at another resolution gets the same blur relative to its size
  (``scipy.ndimage.gaussian_filter``, mode ``reflect``).
* ``contrast``: ``(x - m) * c + m`` with ``m`` the mean of each image (per
  channel for RGB, as in ImageNet-C).
* ``brightness``: ``x + shift`` (brighter).
* ``gamma``: ``x ** g`` with ``g > 1``: black and white stay put, mid-tones get
  darker (an under-exposed or badly windowed scan).
* ``jpeg``: encode each image with Pillow at the given quality (mode ``L`` or
  ``RGB``, 4:2:0 chroma sub-sampling) and decode it.
* ``downsample``: Pillow ``BOX`` (area-average) resize to
  ``round(side / factor)`` pixels, then ``BILINEAR`` back to the original size:
  lost resolution, as from a low-resolution acquisition.
* ``bias_field``: MRI intensity inhomogeneity, ``x * exp(b)`` where ``b`` is a
  random polynomial of degree 3 in normalised ``(y, x)`` coordinates in
  ``[-1, 1]`` (coefficients ``U(-1, 1)``, a new draw per image), centred to
  mean 0 and scaled so ``max(b) - min(b)`` is the range above; the same field
  multiplies every channel of an RGB image. This is the smooth multiplicative
  log-polynomial form of TorchIO's ``RandomBiasField`` (Perez-Garcia et al.
  2021), after the slowly varying field model of N3 (Sled et al. 1998).

Determinism: the only randomness (``gaussian_noise``, ``bias_field``) comes
from ``np.random.default_rng(corruption_seed(name, severity, seed))``, so a
call is bit-identical every time, and every (corruption, severity) has its own
stream. Draws are made image after image, so image ``i`` of a batch gets the
same corruption whatever the batch size; it does depend on ``i``, so corrupt a
whole split in one call (or in the same batches) to reproduce it.

References:
  Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations", ICLR 2019.
  Sled, Zijdenbos & Evans, "A Nonparametric Method for Automatic Correction
  of Intensity Nonuniformity in MRI Data", IEEE TMI 17(1), 1998.
  Perez-Garcia, Sparks & Ourselin, "TorchIO: a Python library for efficient
  loading, preprocessing, augmentation and patch-based sampling of medical
  images in deep learning", CMPB 208, 2021 (``RandomBiasField``).
"""

from __future__ import annotations

import io
import numbers
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast",
                                "brightness", "gamma", "jpeg", "downsample",
                                "bias_field")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Parameter of each corruption at severities 1..5 (see the module docstring).
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.02, 0.035, 0.05, 0.07, 0.1),
    "gaussian_blur": (0.4, 0.55, 0.7, 0.85, 1.0),
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.2),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "gamma": (1.15, 1.3, 1.5, 1.75, 2.0),
    "jpeg": (60, 40, 25, 15, 10),
    "downsample": (1.25, 1.5, 1.75, 2.0, 2.5),
    "bias_field": (0.3, 0.6, 0.9, 1.2, 1.5),
}
# Side length (px) at which the blur std of PARAMETERS is given.
BLUR_REFERENCE_SIDE = 28
# Degree of the bias-field polynomial.
BIAS_FIELD_DEGREE = 3


def _check_name(name) -> None:
  if not isinstance(name, str) or name not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {name!r}; expected one of "
                     f"{', '.join(CORRUPTIONS)}")


def _check_severity(severity) -> int:
  if (isinstance(severity, bool) or not isinstance(severity, numbers.Integral)
      or not 0 <= int(severity) <= SEVERITIES[-1]):
    raise ValueError(f"severity: expected an int in 0..{SEVERITIES[-1]}, got "
                     f"{severity!r}")
  return int(severity)


def corruption_seed(name: str, severity: int, base_seed: int = 0) -> int:
  """The fixed seed of one (corruption, severity) pair.

  Mixes ``(base_seed, CORRUPTIONS.index(name), severity)`` with NumPy's
  ``SeedSequence`` (a fixed, documented hash; unlike ``hash()`` it is not
  salted per process), so it is the same on every run and machine.

  Args:
    name: a name in :data:`CORRUPTIONS`.
    severity: ``0..5``.
    base_seed: a non-negative int, to draw another set of corruptions.

  Returns:
    A non-negative int below ``2**64``.
  """
  _check_name(name)
  severity = _check_severity(severity)
  if (isinstance(base_seed, bool) or not isinstance(base_seed, numbers.Integral)
      or base_seed < 0):
    raise ValueError(f"base_seed: expected a non-negative int, got "
                     f"{base_seed!r}")
  sequence = np.random.SeedSequence(
      (int(base_seed), CORRUPTIONS.index(name), severity))
  return int(sequence.generate_state(1, np.uint64)[0])


def _check_images(images) -> np.ndarray:
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
    dtype = getattr(images, "dtype", type(images).__name__)
    raise ValueError(f"images: expected a uint8 numpy array, got {dtype}")
  shape = images.shape
  ok = (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3)))
  if not ok or min(shape[1:3]) < 1:
    raise ValueError(f"images: expected shape (N, H, W) or (N, H, W, C) with "
                     f"C in {{1, 3}} and H, W >= 1, got {shape}")
  return images


def _to_unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _spatial_shape(images: np.ndarray) -> tuple[int, int]:
  return images.shape[1], images.shape[2]


def _gaussian_noise(images, std, rng):
  """Additive Gaussian noise, i.i.d. per pixel and channel."""
  x = _to_unit(images)
  return _to_uint8(x + rng.normal(0.0, std, size=x.shape))


def _gaussian_blur(images, std, rng):
  """Gaussian blur over H and W; std given at a 28 px side."""
  del rng
  sigma = std * min(_spatial_shape(images)) / BLUR_REFERENCE_SIDE
  sigmas = (0.0, sigma, sigma) + (0.0,) * (images.ndim - 3)
  return _to_uint8(ndimage.gaussian_filter(_to_unit(images), sigmas,
                                           mode="reflect"))


def _contrast(images, factor, rng):
  """Scales deviations from each image's (per-channel) mean by ``factor``."""
  del rng
  x = _to_unit(images)
  mean = x.mean(axis=(1, 2), keepdims=True)
  return _to_uint8((x - mean) * factor + mean)


def _brightness(images, shift, rng):
  """Adds ``shift`` to every intensity."""
  del rng
  return _to_uint8(_to_unit(images) + shift)


def _gamma(images, exponent, rng):
  """``x ** exponent``: darker mid-tones for ``exponent > 1``."""
  del rng
  return _to_uint8(_to_unit(images) ** exponent)


def _per_image(images: np.ndarray,
               fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
  """Applies a Pillow function to each image (2-D gray or RGB)."""
  squeeze = images.ndim == 4 and images.shape[3] == 1
  batch = images[..., 0] if squeeze else images
  mode = "L" if batch.ndim == 3 else "RGB"
  out = np.empty_like(batch)
  for i, image in enumerate(batch):
    result = fn(Image.fromarray(np.ascontiguousarray(image), mode=mode))
    out[i] = np.asarray(result, dtype=np.uint8)
  return out[..., None] if squeeze else out


def _jpeg(images, quality, rng):
  """JPEG encode-decode at ``quality`` (Pillow, 4:2:0 chroma for RGB)."""
  del rng

  def compress(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality), subsampling=2,
               optimize=False)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
      return decoded.convert(image.mode)

  return _per_image(images, compress)


def _downsample(images, factor, rng):
  """Area-average down by ``factor``, bilinear back to the original size."""
  del rng
  height, width = _spatial_shape(images)
  small = (max(1, round(width / factor)), max(1, round(height / factor)))

  def resample(image: Image.Image) -> Image.Image:
    low = image.resize(small, Image.Resampling.BOX)
    return low.resize((width, height), Image.Resampling.BILINEAR)

  return _per_image(images, resample)


def bias_field(rng: np.random.Generator, count: int, height: int, width: int,
               log_range: float) -> np.ndarray:
  """Smooth multiplicative fields ``exp(b)``, ``b`` a random cubic polynomial.

  Args:
    rng: the generator the coefficients are drawn from (``count`` rows of
      ``U(-1, 1)``, one image after another).
    count: number of fields.
    height, width: field size.
    log_range: ``max(b) - min(b)`` of each field (``b`` has mean 0).

  Returns:
    ``(count, height, width)`` float64 fields, positive.

  References:
    Sled et al., IEEE TMI 1998; Perez-Garcia et al., CMPB 2021.
  """
  ys = np.linspace(-1.0, 1.0, height) if height > 1 else np.zeros(1)
  xs = np.linspace(-1.0, 1.0, width) if width > 1 else np.zeros(1)
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  terms = np.stack([yy ** i * xx ** j
                    for i in range(BIAS_FIELD_DEGREE + 1)
                    for j in range(BIAS_FIELD_DEGREE + 1 - i)
                    if i + j > 0])  # the constant cancels when centring
  coefficients = rng.uniform(-1.0, 1.0, size=(count, terms.shape[0]))
  log_field = np.tensordot(coefficients, terms, axes=1)
  log_field -= log_field.mean(axis=(1, 2), keepdims=True)
  spread = np.ptp(log_field, axis=(1, 2), keepdims=True)
  scale = np.divide(log_range, spread, out=np.zeros_like(spread),
                    where=spread > 0)
  return np.exp(log_field * scale)


def _bias_field(images, log_range, rng):
  """Multiplies each image (all its channels) by its own smooth field."""
  field = bias_field(rng, images.shape[0], *_spatial_shape(images), log_range)
  if images.ndim == 4:
    field = field[..., None]
  return _to_uint8(_to_unit(images) * field)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "gamma": _gamma,
    "jpeg": _jpeg,
    "downsample": _downsample,
    "bias_field": _bias_field,
}


def corrupt(images: np.ndarray, name: str, severity: int, *,
            seed: int = 0) -> np.ndarray:
  """A batch of images with one corruption at one severity.

  Args:
    images: ``uint8`` ``(N, H, W)`` gray, or ``(N, H, W, C)`` with ``C`` 1
      (gray) or 3 (RGB).
    name: a name in :data:`CORRUPTIONS`.
    severity: ``0`` (identity: an exact copy) to ``5`` (strongest).
    seed: base seed (:func:`corruption_seed`); only ``gaussian_noise`` and
      ``bias_field`` are random.

  Returns:
    A new ``uint8`` array of the shape of ``images``.

  References:
    Hendrycks & Dietterich, ICLR 2019.
  """
  _check_name(name)
  severity = _check_severity(severity)
  images = _check_images(images)
  rng = np.random.default_rng(corruption_seed(name, severity, seed))
  if severity == 0 or images.shape[0] == 0:
    return images.copy()
  return _FUNCTIONS[name](images, PARAMETERS[name][severity - 1], rng)


def severity_strength(clean: np.ndarray, corrupted: np.ndarray) -> float:
  """Mean absolute difference of two ``uint8`` batches in ``[0, 1]`` units.

  Args:
    clean: the original images (``uint8``).
    corrupted: :func:`corrupt` of them, the same shape.

  Returns:
    ``mean(|corrupted - clean|) / 255``, in ``[0, 1]``.
  """
  clean, corrupted = np.asarray(clean), np.asarray(corrupted)
  if clean.shape != corrupted.shape:
    raise ValueError(f"corrupted: expected the shape of clean {clean.shape}, "
                     f"got {corrupted.shape}")
  if clean.size == 0:
    return 0.0
  diff = np.abs(corrupted.astype(np.float64) - clean.astype(np.float64))
  return float(diff.mean() / 255.0)
