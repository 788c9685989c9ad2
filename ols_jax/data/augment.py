"""Per-example image preprocessing and augmentation in numpy + PIL.

Every function takes a uint8 image ``(H, W)`` or ``(H, W, C)`` and returns a
uint8 image; randomness comes only from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ols_jax.data.errors import DataError

AUGMENTATIONS = ("none", "crop_flip", "rrc_flip", "crop_flip_rotate")
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


def random_crop_with_padding(image: np.ndarray, pad: int,
                             rng: np.random.Generator) -> np.ndarray:
  """CIFAR-style crop: zero-pad by ``pad`` on each side, crop back."""
  if pad <= 0:
    return image
  h, w = image.shape[:2]
  dy, dx = rng.integers(0, 2 * pad + 1, size=2)
  # Crop window in original coordinates: rows [dy - pad, dy - pad + h).
  y0, x0 = int(dy) - pad, int(dx) - pad
  out = np.zeros_like(image)
  src_y, src_x = max(y0, 0), max(x0, 0)
  end_y, end_x = min(y0 + h, h), min(x0 + w, w)
  out[src_y - y0:end_y - y0, src_x - x0:end_x - x0] = image[src_y:end_y,
                                                            src_x:end_x]
  return out


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


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


def scale_to_unit(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return image.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def preprocess(image: np.ndarray, *, image_size: int, channels: int,
               augment: str = "none",
               rng: np.random.Generator | None = None) -> np.ndarray:
  """Full per-example path: float32 ``(S, S, channels)`` in [-1, 1]."""
  if augment not in AUGMENTATIONS:
    raise DataError(f"unknown augment {augment!r}; choose from "
                    f"{AUGMENTATIONS}")
  # Work in grayscale when possible; replicate channels at the end.
  image = to_gray_or_rgb(image, 1 if channels == 1 or (
      image.ndim == 2 or image.shape[-1] == 1) else 3)
  image = pad_to_square(image)
  if augment == "rrc_flip":
    image = random_flip(random_resized_crop(image, image_size, rng), rng)
  else:
    image = resize(image, image_size)
    if augment == "crop_flip_rotate":
      image = random_rotate(image, rng)
    if augment in ("crop_flip", "crop_flip_rotate"):
      image = random_crop_with_padding(image, image_size // 8, rng)
      image = random_flip(image, rng)
  out = scale_to_unit(image)
  if out.ndim == 2:
    out = out[..., None]
  if out.shape[-1] != channels:
    out = np.repeat(out, channels, axis=-1)
  return out
