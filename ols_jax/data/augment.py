"""Image preprocessing and augmentation in numpy + PIL.

Per-example functions take a uint8 image ``(H, W)`` or ``(H, W, C)`` and
return a uint8 image; randomness comes only from the ``np.random.Generator``
passed in. The crop and flip of a whole batch run vectorised
(:func:`batch_crop`, :func:`batch_flip`) with per-example offsets and flip
decisions drawn by the caller.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ols_jax.data.errors import DataError

AUGMENTATIONS = ("none", "crop", "crop_flip", "rrc_flip", "crop_flip_rotate")
# Augmentations that mirror images horizontally (labels of lateral classes swap).
FLIPPING = frozenset({"crop_flip", "rrc_flip", "crop_flip_rotate"})
# Augmentations that pad-and-crop (CIFAR style, pad = image_size // 8).
CROPPING = frozenset({"crop", "crop_flip", "crop_flip_rotate"})
RRC_SCALE = (0.35, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
MAX_ROTATION_DEG = 10.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray_or_rgb(image: np.ndarray, channels: int) -> np.ndarray:
  """Grayscale ``(H, W)`` when ``channels == 1``, else RGB ``(H, W, 3)``."""
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.shape[-1] == 4:
    image = image[..., :3]
  if image.ndim == 2:
    return image if channels == 1 else np.repeat(image[..., None], 3, -1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise DataError(f"unsupported image shape {image.shape}")
  if channels == 3:
    return image
  return np.clip(np.rint(image.astype(np.float32) @ _LUMA), 0,
                 255).astype(np.uint8)


def pad_to_square(image: np.ndarray) -> np.ndarray:
  """Centres a non-square image on a black square canvas."""
  h, w = image.shape[:2]
  if h == w:
    return image
  side = max(h, w)
  out = np.zeros((side, side) + image.shape[2:], np.uint8)
  top, left = (side - h) // 2, (side - w) // 2
  out[top:top + h, left:left + w] = image
  return out


def resize(image: np.ndarray, size: int, box=None) -> np.ndarray:
  """Bilinear resize (of ``box`` if given) to ``size x size`` with PIL."""
  if box is None and image.shape[0] == size and image.shape[1] == size:
    return image
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))


def random_resized_crop(image: np.ndarray, size: int,
                        rng: np.random.Generator,
                        scale=RRC_SCALE, ratio=RRC_RATIO) -> np.ndarray:
  """Inception-style crop of area ``scale`` and aspect ``ratio``, resized."""
  h, w = image.shape[:2]
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      y = int(rng.integers(0, h - ch + 1))
      x = int(rng.integers(0, w - cw + 1))
      return resize(image, size, box=(x, y, x + cw, y + ch))
  return resize(image, size)


def random_rotate(image: np.ndarray, rng: np.random.Generator,
                  max_deg: float = MAX_ROTATION_DEG) -> np.ndarray:
  angle = float(rng.uniform(-max_deg, max_deg))
  return np.asarray(Image.fromarray(image).rotate(
      angle, resample=Image.BILINEAR, fillcolor=0))


def batch_crop(images: np.ndarray, pad: int, offsets: np.ndarray) -> np.ndarray:
  """CIFAR-style crop of every image of a batch at once.

  Args:
    images: uint8 ``(B, H, W)`` or ``(B, H, W, C)``.
    pad: zero padding on each side.
    offsets: ``(B, 2)`` integers in ``[0, 2 * pad]``: the window's top-left
      corner in the padded image (``pad, pad`` = no shift).

  Returns:
    The cropped batch, same shape and dtype.
  """
  if pad <= 0:
    return images
  b, h, w = images.shape[:3]
  widths = ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (images.ndim - 3)
  padded = np.pad(images, widths)
  rows = offsets[:, 0, None] + np.arange(h)[None, :]       # (B, H)
  cols = offsets[:, 1, None] + np.arange(w)[None, :]       # (B, W)
  return padded[np.arange(b)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


def batch_flip(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Mirrors the images of a batch where ``flip`` (``(B,)`` bool) is set."""
  shape = (-1,) + (1,) * (images.ndim - 1)
  return np.where(flip.reshape(shape), images[:, :, ::-1], images)


def to_working_batch(images: np.ndarray, channels: int) -> np.ndarray:
  """A stored uint8 batch ``(B, H, W[, C])`` in the working colour space.

  Grayscale ``(B, H, W)`` when the images are gray or ``channels == 1``
  (RGB converted with the ITU-R 601 luma weights), else RGB ``(B, H, W, 3)``;
  the same rule as :func:`preprocess` applies per image.
  """
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim == 4 and images.shape[-1] == 4:
    images = images[..., :3]
  if images.ndim == 3:
    return images
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f"unsupported image batch shape {images.shape}")
  if channels == 3:
    return images
  return np.clip(np.rint(images.astype(np.float32) @ _LUMA), 0,
                 255).astype(np.uint8)


def finish_batch(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 working batch -> float32 ``(B, S, S, channels)`` in [-1, 1]."""
  out = scale_to_unit(images)
  if out.ndim == 3:
    out = out[..., None]
  if out.shape[-1] != channels:
    out = np.repeat(out, channels, axis=-1)
  return out


def scale_to_unit(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return image.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def working_image(image: np.ndarray, *, image_size: int, channels: int,
                  augment: str = "none",
                  rng: np.random.Generator | None = None) -> np.ndarray:
  """One stored image -> uint8 ``(S, S)`` or ``(S, S, 3)`` in working colour.

  Applies the per-example geometry of ``augment`` (random-resized crop, or
  rotation) and otherwise a plain resize; the pad-and-crop and the flip are
  applied later to the whole batch (:func:`batch_crop`, :func:`batch_flip`),
  where a flip can also swap the labels of lateral classes.
  """
  if augment not in AUGMENTATIONS:
    raise DataError(f"unknown augment {augment!r}; choose from "
                    f"{AUGMENTATIONS}")
  # Work in grayscale when possible; replicate channels at the end.
  image = to_gray_or_rgb(image, 1 if channels == 1 or (
      image.ndim == 2 or image.shape[-1] == 1) else 3)
  image = pad_to_square(image)
  if augment == "rrc_flip":
    return random_resized_crop(image, image_size, rng)
  image = resize(image, image_size)
  if augment == "crop_flip_rotate":
    image = random_rotate(image, rng)
  return image


def preprocess(image: np.ndarray, *, image_size: int,
               channels: int) -> np.ndarray:
  """Evaluation path of one image: float32 ``(S, S, channels)`` in [-1, 1]."""
  return finish_batch(working_image(image, image_size=image_size,
                                    channels=channels)[None], channels)[0]
