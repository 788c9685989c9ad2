"""Fine-tuning controls: backbone learning-rate multiplier, frozen backbone
(linear probe, BN statistics frozen), and init_from a torchvision file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax import hooks as hooks_lib
from ols_jax import losses
from ols_jax import models
from ols_jax import steps
from ols_jax import train
from ols_jax import train_state


def _config(**overrides):
  c = config_lib.base_config()
  c.model = "tiny_cnn"
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.weight_decay = 1e-3
  c.learning_rate = 0.1
  for k, v in overrides.items():
    c[k] = v
  config_lib.validate(c)
  return c


def _one_step(config, *, rng_seed=0):
  model = models.from_config(config, 3)
  tx = train.make_optimizer(config, lambda _: config.learning_rate)
  state = train_state.create(model, tx, input_shape=(16, 16, 1), num_classes=3,
                             rng=jax.random.PRNGKey(rng_seed))
  r = np.random.default_rng(0)
  batch = {"image": jnp.asarray(r.normal(size=(8, 16, 16, 1)), jnp.float32),
           "label": jnp.asarray(r.integers(0, 3, 8), jnp.int32)}
  spec = losses.LossSpec(method="ce", num_classes=3)
  step = jax.jit(lambda s, b: steps.train_step(s, b, spec=spec))
  new, _ = step(state, batch)
  new, _ = step(new, batch)  # two steps: momentum enters the update
  return state, new


def _delta(before, after):
  return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), before, after)


def test_multiplier_is_exact_on_the_first_update():
  config = _config(backbone_lr_multiplier=0.25)
  model = models.from_config(config, 3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  base = train.make_optimizer(_config(), lambda _: 0.1)
  tx = train.make_optimizer(config, lambda _: 0.1)
  want, _ = base.update(grads, base.init(params), params)
  got, _ = tx.update(grads, tx.init(params), params)
  for name in params:
    factor = 1.0 if name == models.HEAD_NAMES["tiny_cnn"] else 0.25
    jax.tree.map(lambda g, w, f=factor: np.testing.assert_allclose(g, f * w, rtol=1e-6),
                 got[name], want[name])


@pytest.mark.slow  # trains a ResNet-18 for a few steps
def test_frozen_backbone_trains_the_head_only_and_keeps_bn_statistics():
  s0, s1 = _one_step(_config(freeze_backbone=True))
  head = models.HEAD_NAMES["tiny_cnn"]
  d = _delta(s0.params, s1.params)
  for name, leaves in d.items():
    moved = max(float(np.max(np.abs(v))) for v in leaves.values())
    assert (moved > 0) == (name == head), (name, moved)
  jax.tree.map(np.testing.assert_array_equal, s0.batch_stats, s1.batch_stats)
  # Unfrozen, the same step moves the BN running statistics.
  t0, t1 = _one_step(_config())
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(t0.batch_stats), jax.tree.leaves(t1.batch_stats)))


@pytest.mark.parametrize("field,value", [("backbone_lr_multiplier", -1.0),
                                         ("backbone_lr_multiplier", 1e3)])
def test_bad_values_are_config_errors(field, value):
  c = config_lib.base_config()
  c[field] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}"):
    config_lib.validate(c)


@pytest.mark.slow  # trains a ResNet-18 for a few steps
def test_init_from_a_torchvision_file_sets_the_backbone(tmp_path):
  torch = pytest.importorskip("torch", reason="torch not installed (requirements.txt)")
  from ols_jax.models import torchvision_weights as tvw  # pylint: disable=import-outside-toplevel
  # A resnet18-shaped state_dict of known values, in torchvision's names.
  probe = models.create("resnet18", 1000)
  v = jax.eval_shape(lambda: probe.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  names = [key for _, _, key, _ in tvw._mapping("resnet18", v["params"])]  # pylint: disable=protected-access
  shapes = {"conv1.weight": (64, 3, 7, 7)}
  r = np.random.default_rng(0)
  sd = {}
  for collection, path, key, kind in tvw._mapping("resnet18", v["params"]):  # pylint: disable=protected-access
    leaf = v[collection]
    for p in path:
      leaf = leaf[p]
    shape = tuple(leaf.shape)
    if kind == "conv":
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif kind == "dense":
      shape = shape[::-1]
    sd[key] = torch.from_numpy(r.normal(size=shapes.get(key, shape)).astype(np.float32))
  assert len(names) == len(sd)
  weights = tmp_path / "resnet18.pth"
  torch.save(sd, str(weights))
  config = config_lib.base_config()
  config.dataset = "brain_tumor_mri"
  config.model, config.small_input, config.width_multiplier = "resnet18", False, 1.0
  config.image_size, config.channels = 28, 1
  config.init_from = str(weights)
  config.progress = False
  run, state, _ = train.prepare(config, tmp_path / "run", hooks_lib.Hooks())
  run.progress.close()
  host = jax.device_get(run.dp.to_host(state))
  np.testing.assert_allclose(host.params["conv1"]["kernel"],
                             sd["conv1.weight"].numpy().sum(1, keepdims=True)
                             .transpose(2, 3, 1, 0), rtol=1e-6)
  np.testing.assert_array_equal(host.batch_stats["layer2_0"]["downsample_bn"]["var"],
                                sd["layer2.0.downsample.1.running_var"].numpy())
  assert run.init_from["kept_fresh"] == ["fc/kernel", "fc/bias"]
  assert run.init_from["sha256"] == tvw.sha256(weights)
  bad = config_lib.base_config()
  bad.update(config.to_dict())
  bad.width_multiplier = 0.5
  with pytest.raises(config_lib.ConfigError, match="width_multiplier=0.5"):
    train.prepare(bad, tmp_path / "bad", hooks_lib.Hooks())
  assert not (tmp_path / "bad").exists()
