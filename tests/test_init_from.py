"""config.init_from: a finished run's selected weights as the starting point."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax import hooks as hooks_lib
from ols_jax import runs
from ols_jax import train

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_merge_copies_same_shapes_and_keeps_the_rest_fresh():
  fresh = {"conv": {"kernel": jnp.zeros((3, 3, 1, 4))}, "head": {"kernel": jnp.zeros((4, 4)),
                                                                 "bias": jnp.zeros(4)}}
  src = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "head": {"kernel": jnp.ones((4, 9)),
                                                               "bias": jnp.ones(9)}}
  merged, kept = train.merge_pretrained(fresh, src)
  np.testing.assert_array_equal(merged["conv"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["head"]["kernel"], 0.0)
  assert sorted(kept) == ["head/bias", "head/kernel"]
  merged, kept = train.merge_pretrained(fresh, {})
  assert len(kept) == 3


@pytest.mark.slow
def test_a_run_starts_from_another_runs_selected_weights(tmp_path):
  source = tmp_path / "source"
  cmd = [sys.executable, str(REPO / "experiments" / "radimagenet.py"),
         f"--config={REPO / 'experiments' / 'configs' / 'smoke.py'}", f"--workdir={source}",
         "--config.num_epochs=1", "--config.progress=False", "--config.tensorboard=False",
         "--config.figures=False", "--cpu_devices=1"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from experiments.configs import smoke  # pylint: disable=import-outside-toplevel
  config = smoke.get_config()
  config.init_from = str(source)
  config.progress = False
  config.seed = 7  # a fresh init would differ from the source everywhere
  run, state, _ = train.prepare(config, tmp_path / "target", hooks_lib.Hooks())
  run.progress.close()
  src = runs.load(source).variables
  host_state = jax.device_get(run.dp.to_host(state))
  chex_equal = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                            host_state.params, src["params"])
  assert all(jax.tree.leaves(chex_equal))
  assert run.init_from["kept_fresh"] == [] and run.init_from["source_num_classes"] == 4
  bad = smoke.get_config()
  bad.init_from = str(source)
  bad.model = "resnet18"
  with pytest.raises(config_lib.ConfigError, match="expected the same model"):
    train.prepare(bad, tmp_path / "bad", hooks_lib.Hooks())
  assert not (tmp_path / "bad").exists()
