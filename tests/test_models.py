"""Tests of the model zoo (ols_jax.models)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ols_jax import models
from ols_jax.models import common

CANONICAL = tuple(models.CANONICAL_PARAM_COUNTS)
SMALL = dict(width_multiplier=0.125, small_input=True)


def _abstract_init(model, shape, dtype=jnp.float32):
  """Variables of ``model`` as ShapeDtypeStructs (nothing allocated)."""
  return jax.eval_shape(
      lambda x: model.init({'params': jax.random.key(0)}, x),
      jax.ShapeDtypeStruct(shape, dtype))


def _abstract_apply(model, variables, shape, **kwargs):
  return jax.eval_shape(
      functools.partial(model.apply, **kwargs), variables,
      jax.ShapeDtypeStruct(shape, jnp.float32))


def _key(seed):
  # The 'rbg' PRNG compiles several times faster than threefry on CPU, which
  # dominates the cost of jitted ``init`` for these deep-but-narrow test nets.
  return jax.random.key(seed, impl='rbg')


# Compile time, not compute, dominates these tests on CPU: skip the expensive
# LLVM optimisations (the programs run once or a few times).
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _init(model, x, seed=0):
  # Jitted: op-by-op initialisation on CPU is many times slower.
  return _jit(model.init)({'params': _key(seed)}, x)


def _apply(model, **kwargs):
  """A jitted ``model.apply`` with static keyword arguments."""
  return _jit(functools.partial(model.apply, **kwargs))


def _real_batch(shared_data, n=32):
  """``n`` real 28 px MRI images in [-1, 1] with a channel axis, and labels."""
  from conftest import brain_mri_28  # pylint: disable=import-outside-toplevel
  data = np.load(brain_mri_28())
  images = data['train_images'][:n].astype(np.float32) / 127.5 - 1.0
  labels = data['train_labels'][:n, 0].astype(np.int32)
  return jnp.asarray(images[..., None]), jnp.asarray(labels)


# ----------------------------------------------------------------- registry


@pytest.mark.parametrize('name', CANONICAL)
def test_canonical_param_counts_match_torchvision(name):
  variables = _abstract_init(models.create(name, 1000), (1, 224, 224, 3))
  assert models.count_params(variables['params']) == (
      models.CANONICAL_PARAM_COUNTS[name])
  assert ('batch_stats' in variables) == (name != 'vgg19')
  dtypes = {l.dtype for l in jax.tree_util.tree_leaves(variables['params'])}
  assert dtypes == {jnp.dtype(jnp.float32)}


def test_model_names_and_unknown_name_lists_valid_names():
  assert set(CANONICAL) | {'tiny_cnn'} == set(models.MODEL_NAMES)
  with pytest.raises(ValueError) as info:
    models.create('resnet51', 10)
  for name in models.MODEL_NAMES:
    assert name in str(info.value)
  assert isinstance(models.create('ResNet-18', 10), models.ResNet)


def test_unknown_and_bad_options():
  with pytest.raises(TypeError, match='widht_multiplier'):
    models.create('resnet18', 10, widht_multiplier=0.5)
  with pytest.raises(ValueError, match='frobnicate'):
    models.create('tiny_cnn', 10, frobnicate=True)
  with pytest.raises(ValueError, match='dropout_rate'):
    models.create('vgg19', 10, dropout_rate=1.5)
  with pytest.raises(ValueError, match='width_multiplier'):
    models.create('mobilenet_v2', 10, width_multiplier=0.0)
  with pytest.raises(ValueError, match='num_classes'):
    models.create('tiny_cnn', 0)


def test_count_params_on_concrete_arrays():
  tree = {'a': jnp.zeros((2, 3)), 'b': {'c': jnp.zeros((4,))}}
  assert models.count_params(tree) == 10
  assert models.count_params({}) == 0


# ------------------------------------------------------------------ helpers


def _torch_adaptive_pool_reference(x, out):
  """Direct loop over torchvision's bins (numpy, NHWC)."""
  b, h, w, c = x.shape
  y = np.zeros((b, out, out, c), np.float64)
  for i in range(out):
    h0, h1 = (i * h) // out, -((-(i + 1) * h) // out)
    for j in range(out):
      w0, w1 = (j * w) // out, -((-(j + 1) * w) // out)
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize('size', [(1, 1), (3, 5), (7, 7), (10, 13), (14, 28)])
def test_adaptive_avg_pool_matches_torch_bin_rule(size):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  y = common.adaptive_avg_pool2d(jnp.asarray(x), 7)
  np.testing.assert_allclose(np.asarray(y),
                             _torch_adaptive_pool_reference(x, 7),
                             rtol=1e-5, atol=1e-6)


def test_make_divisible_like_torchvision():
  assert common.make_divisible(32 * 1.0) == 32
  assert common.make_divisible(32 * 0.25) == 8
  assert common.make_divisible(16 * 0.125) == 8
  assert common.make_divisible(24 * 0.75) == 24  # 18 -> 16 < 0.9 * 18 -> 24
  assert common.make_divisible(1280 * 1.4) == 1792
  assert common.make_divisible(96 * 0.35) == 32


# ------------------------------------------------------------------- shapes


@pytest.mark.slow
@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_output_and_embedding_shapes_abstract(name):
  embed_dims = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048,
                'mobilenet_v2': 1280, 'vgg19': 4096, 'vgg19_bn': 4096,
                'tiny_cnn': 32}
  for size, channels in [(28, 1), (64, 3), (224, 1), (224, 3)]:
    small = size <= 64
    model = models.create(name, 7, small_input=small)
    variables = _abstract_init(model, (1, size, size, channels))
    logits, emb = _abstract_apply(model, variables, (5, size, size, channels),
                                  return_embedding=True)
    assert logits.shape == (5, 7) and logits.dtype == jnp.float32
    assert emb.shape == (5, embed_dims[name]) and emb.dtype == jnp.float32


def test_small_input_changes_stem_not_head():
  big = _abstract_init(models.create('resnet18', 3), (1, 32, 32, 1))
  small = _abstract_init(models.create('resnet18', 3, small_input=True),
                         (1, 32, 32, 1))
  assert big['params']['conv1']['kernel'].shape == (7, 7, 1, 64)
  assert small['params']['conv1']['kernel'].shape == (3, 3, 1, 64)
  for name in ('mobilenet_v2', 'vgg19'):
    a = _abstract_init(models.create(name, 3), (1, 64, 64, 3))
    b = _abstract_init(models.create(name, 3, small_input=True),
                       (1, 64, 64, 3))
    assert models.count_params(a) == models.count_params(b)


def test_vgg_without_small_input_rejects_tiny_images():
  model = models.create('vgg19', 3, width_multiplier=0.125)
  with pytest.raises(ValueError, match='small_input'):
    _abstract_init(model, (1, 28, 28, 1))


def test_bad_input_rank():
  with pytest.raises(ValueError, match='B, H, W, C'):
    _abstract_init(models.create('tiny_cnn', 3), (28, 28, 1))


# ------------------------------------------------------ train / eval modes


@pytest.mark.slow
def test_batchnorm_stats_update_only_in_train_mode():
  model = models.create('tiny_cnn', 4, small_input=True)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3)) * 3.0 + 1.0
  variables = _init(model, x)
  for layer in ('bn0', 'bn1', 'bn2'):  # gamma 1, beta 0
    np.testing.assert_array_equal(variables['params'][layer]['scale'], 1.0)
    np.testing.assert_array_equal(variables['params'][layer]['bias'], 0.0)
  train = _apply(model, train=True, mutable=['batch_stats'])
  evaluate = _apply(model)
  _, updates = train(variables, x)
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode needs no mutable collection and uses running averages, so a
  # sample's output does not depend on the rest of the batch.
  np.testing.assert_allclose(evaluate(variables, x[:1]),
                             evaluate(variables, x)[:1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(train(variables, x[:2])[0][:1],
                         train(variables, x)[0][:1])
  # Flax convention: new = 0.9 * old + 0.1 * batch statistic.
  mean0 = np.asarray(updates['batch_stats']['bn0']['mean'])
  conv0 = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  h = conv0.apply({'params': variables['params']['conv0']}, x)
  np.testing.assert_allclose(mean0, 0.1 * np.asarray(h).mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['tiny_cnn', 'vgg19_bn'])
def test_dropout_only_in_train_mode(name):
  model = models.create(name, 4, dropout_rate=0.5, **SMALL)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  variables = _init(model, x)
  mutable = ['batch_stats'] if 'batch_stats' in variables else False

  @_jit
  def train_out(key):
    out = model.apply(variables, x, train=True, mutable=mutable,
                      rngs={'dropout': key})
    return out[0] if mutable else out

  out1 = np.asarray(train_out(jax.random.key(1)))
  assert not np.allclose(out1, train_out(jax.random.key(2)))
  np.testing.assert_array_equal(out1, train_out(jax.random.key(1)))
  # Eval mode: deterministic, needs no rng.
  evaluate = _apply(model)
  np.testing.assert_array_equal(evaluate(variables, x),
                                evaluate(variables, x))


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in ('resnet50', 'vgg19', 'vgg19_bn')
                                  else n for n in models.MODEL_NAMES])
def test_dropout_needs_rng_only_in_train_mode(name):
  model = models.create(name, 4, dropout_rate=0.3, **SMALL)
  variables = _abstract_init(model, (1, 28, 28, 1))
  shape = (2, 28, 28, 1)
  _abstract_apply(model, variables, shape)  # eval: no 'dropout' rng needed
  mutable = ['batch_stats'] if 'batch_stats' in variables else False
  with pytest.raises(Exception, match='dropout'):
    _abstract_apply(model, variables, shape, train=True, mutable=mutable)
  no_dropout = models.create(name, 4, dropout_rate=0.0, **SMALL)
  _abstract_apply(no_dropout, variables, shape, train=True, mutable=mutable)


def test_default_dropout_rates():
  assert models.create('vgg19', 3).dropout_rate == 0.5
  assert models.create('mobilenet_v2', 3).dropout_rate == 0.2
  assert models.create('resnet18', 3).dropout_rate == 0.0


def test_zero_init_residual():
  x = jnp.ones((1, 8, 8, 16))

  def scales(block, bn):
    params = _jit(block.init)(_key(0), x)['params']
    return np.asarray(params[bn]['scale'])

  for cls, last in ((models.BasicBlock, 'bn2'), (models.Bottleneck, 'bn3')):
    # Stride 2: a projection shortcut, whose BN keeps gamma 1.
    params = _jit(cls(16, strides=2, zero_init_residual=True).init)(
        _key(0), x)['params']
    assert np.all(np.asarray(params[last]['scale']) == 0.0)
    assert np.all(np.asarray(params['bn1']['scale']) == 1.0)
    assert np.all(np.asarray(params['downsample_bn']['scale']) == 1.0)
  inverted = models.InvertedResidual
  # Identity shortcut (16 -> 16, stride 1): zeroed; none (stride 2): kept.
  assert np.all(scales(inverted(16, 1, 6, zero_init_residual=True),
                       'project_bn') == 0)
  assert np.all(scales(inverted(16, 2, 6, zero_init_residual=True),
                       'project_bn') == 1)
  for name in ('resnet18', 'mobilenet_v2'):
    assert models.create(name, 3, zero_init_residual=True).zero_init_residual


def test_used_options_are_the_ones_that_change_a_model():
  for name in models.MODEL_NAMES:
    assert set(models.used_options(name)) <= set(models.OPTION_NAMES)
    assert {'small_input', 'width_multiplier', 'dropout_rate', 'dtype'} <= set(
        models.used_options(name))
  assert models.used_options('ResNet-18') == models.used_options('resnet18')
  assert 'zero_init_residual' in models.used_options('mobilenet_v2')
  assert 'zero_init_residual' not in models.used_options('vgg19_bn')
  assert 'bn_axis_name' in models.used_options('vgg19_bn')
  assert 'bn_axis_name' not in models.used_options('vgg19')  # no BatchNorm
  with pytest.raises(ValueError, match='unknown model'):
    models.used_options('bogus')


def test_initialisers_follow_torchvision():
  model = models.create('vgg19', 3, width_multiplier=0.125, small_input=True)
  # Default optimisation: this program generates ~1.6M random numbers.
  params = jax.jit(model.init)({'params': _key(0)},
                               jnp.zeros((1, 8, 8, 3)))['params']
  fc = np.asarray(params['fc0']['kernel'])
  assert abs(fc.std() - 0.01) < 5e-4 and np.all(params['fc0']['bias'] == 0)
  kernel = np.asarray(params['conv8']['kernel'])  # 3x3, 32 -> 32
  expected = np.sqrt(2.0 / (3 * 3 * kernel.shape[-1]))
  # variance_scaling 'normal' is truncated: the std sits a little lower.
  assert 0.8 * expected < kernel.std() < 1.05 * expected
  assert np.all(params['conv8']['bias'] == 0)


# ---------------------------------------------------------------- dtypes


@pytest.mark.slow
def test_bfloat16_compute_returns_float32_logits():
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  m32 = models.create('tiny_cnn', 4, small_input=True)
  m16 = models.create('tiny_cnn', 4, small_input=True, dtype=jnp.bfloat16)
  variables = _init(m16, x)
  dtypes = {l.dtype for l in jax.tree_util.tree_leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits, emb = _apply(m16, return_embedding=True)(variables, x)
  assert logits.dtype == jnp.float32 and emb.dtype == jnp.float32
  ref = _apply(m32)(variables, x)
  np.testing.assert_allclose(logits, ref, atol=0.05 * np.abs(ref).max() + .02)
  for name in models.MODEL_NAMES:
    model = models.create(name, 5, dtype=jnp.bfloat16, **SMALL)
    variables = _abstract_init(model, (1, 28, 28, 3))
    dtypes = {l.dtype for l in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}, name
    mutable = ['batch_stats'] if 'batch_stats' in variables else False
    (logits, emb), _ = _abstract_apply(
        model, variables, (2, 28, 28, 3), train=True, return_embedding=True,
        mutable=mutable or ['batch_stats'], rngs={'dropout': jax.random.key(0)})
    assert logits.dtype == jnp.float32 and emb.dtype == jnp.float32, name
    # Eval mode: float32 outputs, and the convolutions really run in bf16.
    jaxpr = jax.make_jaxpr(
        functools.partial(model.apply, return_embedding=True))(
            variables, jnp.zeros((2, 28, 28, 3)))
    assert [a.dtype for a in jaxpr.out_avals] == [jnp.float32] * 2, name
    convs = [e for e in jaxpr.jaxpr.eqns
             if e.primitive.name == 'conv_general_dilated']
    assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16
                         for e in convs), name


# ------------------------------------------------------------- pmap + BN


@pytest.mark.slow
def test_bn_axis_name_syncs_statistics_across_devices():
  n_dev = jax.local_device_count()
  if n_dev < 2:
    pytest.skip('needs several (fake) devices')
  model = models.create('tiny_cnn', 3, small_input=True, bn_axis_name='batch')
  plain = models.create('tiny_cnn', 3, small_input=True)
  x = jax.random.normal(jax.random.key(0), (n_dev * 2, 12, 12, 1))
  x = x + jnp.arange(n_dev * 2, dtype=jnp.float32)[:, None, None, None]
  variables = _init(plain, x)

  def step(v, xs):
    _, upd = model.apply(v, xs, train=True, mutable=['batch_stats'])
    return upd['batch_stats']

  replicated = jax.tree_util.tree_map(
      lambda a: jnp.broadcast_to(a, (n_dev,) + a.shape), variables)
  stats = jax.pmap(step, axis_name='batch')(
      replicated, x.reshape(n_dev, 2, 12, 12, 1))
  _, full = _apply(plain, train=True, mutable=['batch_stats'])(variables, x)
  for got, want in zip(jax.tree_util.tree_leaves(stats),
                       jax.tree_util.tree_leaves(full['batch_stats'])):
    for d in range(n_dev):
      np.testing.assert_allclose(got[d], want, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------- training on data


# One model per family plus the bottleneck ResNet; vgg19_bn runs concretely in
# the dropout test (compile time dominates, so the list stays short).
@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'resnet50',
                                  'mobilenet_v2', 'vgg19'])
@pytest.mark.slow
def test_sgd_steps_lower_loss_on_real_batch(name, shared_data):
  images, labels = _real_batch(shared_data, n=16)
  options = dict(small_input=True)
  if name != 'tiny_cnn':
    options['width_multiplier'] = 0.125
  model = models.create(name, 4, **options)
  variables = _init(model, images[:1])
  params, stats = variables['params'], variables.get('batch_stats', {})
  tx = optax.sgd(0.02, momentum=0.9)
  dropout_key = jax.random.key(7)  # one fixed mask: a deterministic objective

  def loss_fn(params, stats):
    variables = {'params': params, **({'batch_stats': stats} if stats else {})}
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'],
                                  rngs={'dropout': dropout_key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates.get('batch_stats', {})

  # A Python loop over a jitted step: XLA:CPU runs convolutions inside a
  # lax.scan body many times slower.
  @functools.partial(_jit, donate_argnums=(0, 1, 2))
  def train_step(params, stats, opt_state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(6):
    params, stats, opt_state, loss = train_step(params, stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, (name, losses)
  if name == 'resnet50':
    return  # same head code as resnet18; saves a compile
  # Eval mode: float32 outputs; the embedding is what the last Dense eats.
  variables = {'params': params, **({'batch_stats': stats} if stats else {})}
  logits, embedding = _apply(model, return_embedding=True)(variables, images)
  assert logits.shape == (16, 4) and logits.dtype == jnp.float32
  assert embedding.ndim == 2 and embedding.dtype == jnp.float32
  head = {'resnet18': 'fc', 'vgg19': 'fc2'}.get(name, 'classifier')
  dense = params[head]
  np.testing.assert_allclose(
      np.asarray(logits),
      np.asarray(embedding @ dense['kernel'] + dense['bias']), rtol=1e-4,
      atol=1e-4)
