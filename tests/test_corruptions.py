"""The corruption suite: identity, determinism, monotone severity, checks."""

import re

from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
from scipy import ndimage

from ols_jax import corruptions

NAMES = corruptions.CORRUPTIONS
RANDOM = ("gaussian_noise", "bias_field")


def _synthetic(n: int, size: int, rgb: bool, seed: int = 0) -> np.ndarray:
  """Smooth structured scans: a bright disk, a gradient, a ring and texture."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                       indexing="ij")
  images = []
  for _ in range(n):
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    radius = rng.uniform(0.35, 0.6)
    r = np.hypot(yy - cy, xx - cx)
    angle = rng.uniform(0, np.pi)
    gradient = 0.3 * (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    disk = 0.45 * (r < radius)
    ring = 0.2 * (np.abs(r - 0.6 * radius) < 0.08)
    texture = ndimage.gaussian_filter(rng.normal(0, 0.08, (size, size)), 0.7)
    image = np.clip(0.05 + gradient + disk + ring + texture, 0, 1)
    if rgb:
      image = np.stack([image, image ** 1.3, 0.8 * image + 0.1], axis=-1)
    images.append(np.rint(image * 255).astype(np.uint8))
  return np.stack(images)


def _real(shared_data) -> np.ndarray:
  from conftest import brain_mri_28  # pylint: disable=import-outside-toplevel
  with np.load(brain_mri_28()) as data:
    return data["test_images"][:16]


IMAGE_SETS = ("gray28", "gray64", "rgb28", "rgb64", "mri28")


@pytest.fixture(params=IMAGE_SETS)
def image_set(request, shared_data):
  kind = request.param
  if kind == "mri28":
    return _real(shared_data)
  return _synthetic(8, int(kind[-2:]), rgb=kind.startswith("rgb"))


@pytest.fixture(scope="module")
def small():
  return {"gray": _synthetic(3, 20, rgb=False, seed=1),
          "gray1": _synthetic(3, 20, rgb=False, seed=1)[..., None],
          "rgb": _synthetic(3, 20, rgb=True, seed=1)}


@pytest.mark.parametrize("mode", ["gray", "gray1", "rgb"])
@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_an_exact_copy(small, name, mode):
  images = small[mode]
  out = corruptions.corrupt(images, name, 0)
  assert out is not images and not np.shares_memory(out, images)
  np.testing.assert_array_equal(out, images)
  assert out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["gray", "gray1", "rgb"])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_shape_determinism_and_seed(small, name, mode):
  images = small[mode]
  before = images.copy()
  for severity in corruptions.SEVERITIES:
    out = corruptions.corrupt(images, name, severity)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert not np.array_equal(out, images), (name, severity)
    np.testing.assert_array_equal(
        out, corruptions.corrupt(images, name, severity))
    other = corruptions.corrupt(images, name, severity, seed=1)
    assert np.array_equal(out, other) == (name not in RANDOM)
  np.testing.assert_array_equal(images, before)  # the input is not modified


@pytest.mark.parametrize("name", NAMES)
def test_gray_with_a_channel_axis_matches_plain_gray(small, name):
  for severity in corruptions.SEVERITIES:
    np.testing.assert_array_equal(
        corruptions.corrupt(small["gray1"], name, severity)[..., 0],
        corruptions.corrupt(small["gray"], name, severity))


@pytest.mark.parametrize("name", NAMES)
def test_an_image_does_not_depend_on_later_images(small, name):
  images = small["rgb"]
  full = corruptions.corrupt(images, name, 4)
  np.testing.assert_array_equal(corruptions.corrupt(images[:2], name, 4),
                                full[:2])
  if name not in RANDOM:  # no mixing across the batch
    np.testing.assert_array_equal(
        corruptions.corrupt(images[2:], name, 4), full[2:])


def test_seeds_are_distinct_and_stable():
  seeds = {(n, s): corruptions.corruption_seed(n, s)
           for n in NAMES for s in range(6)}
  assert len(set(seeds.values())) == len(seeds)
  for name in NAMES:
    per_severity = [corruptions.corruption_seed(name, s) for s in range(6)]
    assert len(set(per_severity)) == 6
  assert corruptions.corruption_seed("jpeg", 3, base_seed=1) != seeds["jpeg", 3]
  # Pinned: a salted hash (``hash()``) would change this between processes.
  expected = int(np.random.SeedSequence((0, 0, 1)).generate_state(
      1, np.uint64)[0])
  assert seeds["gaussian_noise", 1] == expected
  assert isinstance(expected, int) and 0 <= expected < 2 ** 64


@pytest.mark.parametrize("name", NAMES)
def test_strength_is_monotone_in_severity(image_set, name):
  strength = [corruptions.severity_strength(
      image_set, corruptions.corrupt(image_set, name, s)) for s in range(6)]
  assert strength[0] == 0.0
  assert strength[1] > 0.0
  assert np.all(np.diff(strength) >= 0), strength
  assert strength[5] > strength[1], strength


def _laplacian_energy(images: np.ndarray) -> np.ndarray:
  """Mean absolute Laplacian of each image, over its spatial axes."""
  x = images.astype(np.float64)
  if x.ndim == 3:
    x = x[..., None]
  lap = np.stack([np.stack([ndimage.laplace(image[..., c])
                            for c in range(x.shape[-1])], -1) for image in x])
  return np.abs(lap).mean(axis=(1, 2, 3))


def test_blur_removes_high_frequencies_monotonically(image_set):
  energy = np.stack([_laplacian_energy(
      corruptions.corrupt(image_set, "gaussian_blur", s)) for s in range(6)])
  assert np.all(np.diff(energy, axis=0) <= 1e-9), energy
  assert np.all(energy[5] < 0.8 * energy[1])


def test_contrast_lowers_each_image_std_monotonically(image_set):
  axes = tuple(range(1, image_set.ndim))
  std = np.stack([corruptions.corrupt(image_set, "contrast", s).std(axis=axes)
                  for s in range(6)])
  assert np.all(np.diff(std, axis=0) <= 0.5), std  # rounding: < 0.5 gray level
  assert np.all(np.diff(std.mean(axis=1)) < 0)
  # The mean intensity stays (up to rounding and clipping).
  means = corruptions.corrupt(image_set, "contrast", 5).mean(axis=axes)
  np.testing.assert_allclose(means, image_set.mean(axis=axes), atol=1.0)


def test_gamma_darkens_mid_tones_and_keeps_black_and_white():
  ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
  previous = ramp
  for severity in corruptions.SEVERITIES:
    out = corruptions.corrupt(ramp, "gamma", severity)
    assert np.all(out <= previous)
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 255
    assert out[0, 8, 0] < 128  # the mid-tone 128 gets darker
    previous = out


def test_brightness_is_an_additive_clipped_shift():
  ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
  for severity, shift in zip(corruptions.SEVERITIES,
                             corruptions.PARAMETERS["brightness"]):
    out = corruptions.corrupt(ramp, "brightness", severity).astype(int)
    expected = np.clip(np.rint((ramp / 255 + shift) * 255), 0, 255)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["gaussian_blur", "downsample", "contrast"])
def test_constant_image_stays_constant(name):
  images = np.full((2, 28, 28), 100, np.uint8)
  for severity in corruptions.SEVERITIES:
    np.testing.assert_array_equal(corruptions.corrupt(images, name, severity),
                                  images)


@pytest.mark.parametrize("name", ["bias_field", "gaussian_blur", "gamma",
                                  "contrast", "downsample"])
def test_equal_channels_stay_equal(small, name):
  """The same field (or filter) on every channel: a gray RGB stays gray."""
  gray = small["gray"]
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  for severity in corruptions.SEVERITIES:
    out = corruptions.corrupt(rgb, name, severity)
    reference = corruptions.corrupt(gray, name, severity)
    for c in range(3):
      np.testing.assert_array_equal(out[..., c], reference)


def test_bias_field_is_smooth_positive_and_has_the_range():
  rng = np.random.default_rng(0)
  fields = corruptions.bias_field(rng, 4, 28, 36, 1.2)
  assert fields.shape == (4, 28, 36) and np.all(fields > 0)
  log = np.log(fields)
  np.testing.assert_allclose(np.ptp(log, axis=(1, 2)), 1.2)
  np.testing.assert_allclose(log.mean(axis=(1, 2)), 0.0, atol=1e-12)
  # Smooth: neighbouring pixels differ by a small part of the range.
  assert np.abs(np.diff(log, axis=1)).max() < 0.5
  assert np.abs(np.diff(log, axis=2)).max() < 0.5
  # The images differ between themselves (one draw per image).
  assert not np.allclose(fields[0], fields[1])


_SHAPES = st.one_of(
    st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
              st.sampled_from([1, 3])))


@settings(max_examples=40, deadline=None)
@given(images=hnp.arrays(np.uint8, _SHAPES),
       severity=st.integers(1, 5), seed=st.integers(0, 2 ** 32))
def test_noise_is_clipped_not_wrapped(images, severity, seed):
  out = corruptions.corrupt(images, "gaussian_noise", severity, seed=seed)
  assert out.dtype == np.uint8 and out.shape == images.shape
  std = corruptions.PARAMETERS["gaussian_noise"][severity - 1]
  # uint8 wrap-around would move a 255 near 0; clipping moves it by ~noise.
  diff = np.abs(out.astype(int) - images.astype(int))
  assert diff.max() <= 6 * std * 255 + 1


@settings(max_examples=40, deadline=None)
@given(images=hnp.arrays(np.uint8, _SHAPES), name=st.sampled_from(NAMES),
       severity=st.integers(0, 5))
def test_any_small_batch_keeps_shape_and_dtype(images, name, severity):
  out = corruptions.corrupt(images, name, severity)
  assert out.dtype == np.uint8 and out.shape == images.shape


def test_empty_batch():
  images = np.zeros((0, 8, 8, 3), np.uint8)
  for name in NAMES:
    assert corruptions.corrupt(images, name, 5).shape == images.shape


def test_bad_inputs_raise_with_the_field_named():
  images = np.zeros((2, 8, 8), np.uint8)
  with pytest.raises(ValueError, match=r"'blurr'.*gaussian_blur.*bias_field"):
    corruptions.corrupt(images, "blurr", 1)
  with pytest.raises(ValueError, match="unknown corruption"):
    corruptions.corruption_seed("nope", 1)
  for severity in (-1, 6, 1.0, True, "1", None):
    with pytest.raises(ValueError, match="severity"):
      corruptions.corrupt(images, "jpeg", severity)
  assert corruptions.corrupt(images, "jpeg", np.int64(2)).shape == (2, 8, 8)
  for bad in (images.astype(np.float32), images.astype(np.int16),
              images.tolist()):
    with pytest.raises(ValueError, match="images: expected a uint8"):
      corruptions.corrupt(bad, "contrast", 1)
  for shape in ((8, 8, 8, 8, 1), (8,), (2, 8, 8, 2), (2, 0, 8)):
    with pytest.raises(ValueError, match=r"images: expected shape \(N, H, W\)"):
      corruptions.corrupt(np.zeros(shape, np.uint8), "contrast", 1)
  with pytest.raises(ValueError, match="base_seed"):
    corruptions.corruption_seed("jpeg", 1, base_seed=-1)
  with pytest.raises(ValueError, match="corrupted"):
    corruptions.severity_strength(images, images[:1])


def test_severity_strength():
  clean = np.zeros((1, 2, 2), np.uint8)
  noisy = np.array([[[255, 0], [51, 0]]], np.uint8)
  assert corruptions.severity_strength(clean, noisy) == pytest.approx(0.3)
  assert corruptions.severity_strength(noisy, clean) == pytest.approx(0.3)
  assert corruptions.severity_strength(noisy, noisy) == 0.0


def test_docstring_table_matches_the_parameters():
  doc = corruptions.__doc__
  for name, values in corruptions.PARAMETERS.items():
    line = re.search(rf"^``{name}``.*$", doc, re.MULTILINE).group(0)
    numbers = [float(v) for v in line.split()[-5:]]
    assert numbers == [float(v) for v in values], name
  assert set(corruptions.PARAMETERS) == set(NAMES)
