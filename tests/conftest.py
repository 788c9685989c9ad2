"""Test set-up: 4 fake CPU devices, this checkout on PYTHONPATH, the shared-data helper."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every subprocess a test starts imports this checkout's package, never one an
# editable install elsewhere points at.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != _REPO:
  os.environ["PYTHONPATH"] = os.pathsep.join(
      p for p in (_REPO, os.environ.get("PYTHONPATH", "")) if p)

import hypothesis  # noqa: E402
import pytest  # noqa: E402

from ols_jax import paths  # noqa: E402


# Property searches without their own @settings (the jitted OLS ones) draw 25
# examples in the full suite and 8 in the quick tier (-m "not slow"); every
# shape drawn compiles anew, which is what makes them slow.
for _name, _n in (("full", 25), ("quick", 8)):
  hypothesis.settings.register_profile(
      _name, max_examples=_n, deadline=None,
      suppress_health_check=[hypothesis.HealthCheck.too_slow])


def pytest_configure(config):
  quick = "not slow" in (config.option.markexpr or "")
  hypothesis.settings.load_profile("quick" if quick else "full")


def require_dataset(name: str):
  """Path of a shared dataset folder, or skip the test with a clear message."""
  path = paths.dataset_dir(name)
  if not path.is_dir():
    pytest.skip(f"real data {name!r} not found at {path}; set {paths.ENV_VAR} "
                f"to the folder holding the shared datasets")
  return path


def brain_mri_28():
  """The 28 px brain MRI npz: the shared copy, else the one the package ships."""
  from ols_jax.data import local  # pylint: disable=import-outside-toplevel
  shared = paths.dataset_dir("brain_tumor_mri") / "brain_tumor_mri_28.npz"
  return shared if shared.is_file() else local.embedded_npz("brain_tumor_mri", 28)


@pytest.fixture
def shared_data():
  """Callable fixture: ``shared_data('brain_tumor_mri')`` -> Path or skip."""
  return require_dataset
