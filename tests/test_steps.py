"""train_step / eval_step / epoch boundary: single device, jit-sharded and pmap."""

import functools
import os
import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ols_jax import losses
from ols_jax import ols
from ols_jax import distributed
from ols_jax import parallel
from ols_jax import inference
from ols_jax import steps
from ols_jax import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]

K = 4
N_DEV = 4


class SmallNet(nn.Module):
  """Conv + BatchNorm + Dense, with an optional BN axis name for pmap."""
  num_classes: int = K
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=False, return_embedding=False):
    x = nn.Conv(8, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=self.bn_axis_name)(x)
    x = nn.relu(x)
    emb = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes)(emb).astype(jnp.float32)
    return (logits, emb) if return_embedding else logits


def make_state(method="ols", bn_axis_name=None, lr=0.1):
  model = SmallNet(bn_axis_name=bn_axis_name)
  return train_state.create(model, optax.sgd(lr, momentum=0.9), input_shape=(8, 8, 1),
                            num_classes=K, rng=jax.random.PRNGKey(0))


def make_batches(n_batches=3, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n_batches):
    labels = rng.integers(0, K, batch).astype(np.int32)
    images = rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
    images += labels[:, None, None, None] * 0.8  # learnable signal
    out.append({"image": images, "label": labels,
                "mask": np.ones(batch, np.float32)})
  return out


SPEC = losses.LossSpec(method="ols", num_classes=K, alpha=0.5)


def run_single(batches, spec=SPEC, epochs=2):
  state = make_state()
  step = jax.jit(functools.partial(steps.train_step, spec=spec))
  boundary = jax.jit(steps.epoch_boundary)
  history = []
  for _ in range(epochs):
    for b in batches:
      state, m = step(state, b)
      history.append(jax.device_get(m))
    pre = jax.device_get(state.ols)  # the boundary donates the state
    state = boundary(state)
  return state, pre, history


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


def test_devices_available():
  assert jax.device_count() >= N_DEV, "conftest must create 4 fake CPU devices"


def test_train_step_accumulates_and_learns():
  batches = make_batches()
  state, pre, history = run_single(batches, epochs=4)
  assert history[-1]["loss_sum"] < history[0]["loss_sum"]
  assert float(pre.counts.sum()) > 0
  s = np.asarray(state.ols.soft_labels)
  np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-5)
  assert (s >= 0).all()
  assert float(state.ols.counts.sum()) == 0
  assert int(state.step) == 12


@pytest.mark.slow
def test_train_step_accumulates_exactly_the_forward_logits():
  """The OLS sums equal accumulate() on the training-mode logits of the step."""
  state = make_state()
  batch = make_batches(1)[0]
  batch["mask"][-3:] = 0.0
  logits, _ = state.apply_fn(state.variables(), batch["image"], train=True,
                             mutable=["batch_stats"], rngs={"dropout": state.rng})
  expected = ols.accumulate(state.ols, logits, batch["label"], batch["mask"])
  new, metrics = jax.jit(functools.partial(steps.train_step, spec=SPEC))(state, batch)
  np.testing.assert_allclose(new.ols.prob_sums, expected.prob_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.ols.counts, expected.counts)
  assert float(metrics["count"]) == 13
  np.testing.assert_array_equal(new.ols.soft_labels, state.ols.soft_labels)


def test_ce_does_not_accumulate():
  spec = losses.LossSpec(method="ce", num_classes=K)
  state, pre, _ = run_single(make_batches(1), spec=spec, epochs=1)
  assert float(pre.counts.sum()) == 0


@pytest.mark.slow
def test_eval_step_never_accumulates_and_respects_mask():
  state, _, _ = run_single(make_batches(2), epochs=1)
  batch = make_batches(1, seed=5)[0]
  batch["mask"][8:] = 0.0
  sums, out = jax.jit(inference.eval_step)(state, batch)
  assert float(sums["count"]) == 8
  assert out["logits"].shape == (16, K) and out["embedding"].shape == (16, 8)
  half = {k: v[:8] for k, v in batch.items()}
  sums_half, _ = jax.jit(inference.eval_step)(state, half)
  assert_trees_close(sums, sums_half, rtol=1e-5, atol=1e-5)


def test_train_step_traces_once():
  state = make_state()

  @chex.assert_max_traces(n=1)
  def counted(state, batch):
    return steps.train_step(state, batch, spec=SPEC)

  step = jax.jit(counted)
  for b in make_batches(3):
    state, _ = step(state, b)
  state = steps.epoch_boundary(state)
  for b in make_batches(2, seed=1):
    state, _ = step(state, b)


@pytest.mark.slow
def test_jit_sharded_equals_single_device():
  batches = make_batches()
  single, single_pre, single_hist = run_single(batches)

  mesh = parallel.make_mesh(jax.devices()[:N_DEV])
  state = parallel.replicate_on_mesh(make_state(), mesh)
  step = parallel.jit_train_step(SPEC, mesh)
  boundary = parallel.jit_epoch_boundary(mesh)
  hist = []
  for _ in range(2):
    for b in batches:
      sharded = parallel.put_batch(b, mesh)
      assert len(sharded["image"].sharding.device_set) == N_DEV
      state, m = step(state, sharded)
      hist.append(jax.device_get(m))
    pre = jax.device_get(state.ols)  # the boundary donates the state
    state = boundary(state)
  assert_trees_close(pre.prob_sums, single_pre.prob_sums)
  assert_trees_close(pre.counts, single_pre.counts)
  assert_trees_close(state.ols.soft_labels, single.ols.soft_labels)
  assert_trees_close(state.params, single.params, rtol=1e-4, atol=1e-5)
  assert_trees_close(state.batch_stats, single.batch_stats, rtol=1e-4, atol=1e-5)
  for a, b in zip(hist, single_hist):
    for key in ("loss_sum", "correct", "count"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4)


@pytest.mark.slow
def test_pmap_equals_single_device():
  batches = make_batches()
  single, single_pre, single_hist = run_single(batches)

  devices = jax.local_devices()[:N_DEV]
  state = parallel.replicate(make_state(bn_axis_name=parallel.PMAP_AXIS), devices)
  step = parallel.pmap_train_step(SPEC)
  boundary = parallel.pmap_epoch_boundary()
  hist = []
  for _ in range(2):
    for b in batches:
      state, m = step(state, parallel.split_for_pmap(b, N_DEV))
      hist.append(jax.device_get(parallel.unreplicate(m)))
    # Per-device sums add up to the single-device sums.
    pre_sums = np.asarray(state.ols.prob_sums).sum(0)
    pre_counts = np.asarray(state.ols.counts).sum(0)
    state = boundary(state)
  np.testing.assert_allclose(pre_sums, single_pre.prob_sums, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(pre_counts, single_pre.counts)
  out = parallel.unreplicate(state)
  # Every replica holds the same S after the boundary.
  s_all = np.asarray(state.ols.soft_labels)
  np.testing.assert_allclose(s_all, np.broadcast_to(s_all[0], s_all.shape))
  assert_trees_close(out.ols.soft_labels, single.ols.soft_labels)
  assert_trees_close(out.params, single.params, rtol=1e-4, atol=1e-5)
  assert_trees_close(out.batch_stats, single.batch_stats, rtol=1e-4, atol=1e-5)
  for a, b in zip(hist, single_hist):
    for key in ("loss_sum", "correct", "count"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4)


def test_pmap_state_round_trip_keeps_every_replicas_ols_sums():
  """to_host adds the per-replica sums; to_device puts them on replica 0 and
  zeros elsewhere, so the boundary psum gives the same S as without the trip."""
  devices = jax.local_devices()[:N_DEV]
  state = parallel.replicate(make_state(bn_axis_name=parallel.PMAP_AXIS), devices)
  step = parallel.pmap_train_step(SPEC)
  for b in make_batches():
    state, _ = step(state, parallel.split_for_pmap(b, N_DEV))
  per_replica = np.asarray(state.ols.counts)
  assert (per_replica.sum(-1) > 0).all()  # every replica has its own sums
  host = parallel.unreplicate_state(jax.device_get(state))
  np.testing.assert_array_equal(host.ols.counts, per_replica.sum(0))
  back = parallel.replicate_state(host, devices)
  np.testing.assert_array_equal(np.asarray(back.ols.counts)[0], per_replica.sum(0))
  assert not np.asarray(back.ols.counts)[1:].any()
  assert not np.asarray(back.ols.prob_sums)[1:].any()
  boundary = parallel.pmap_epoch_boundary()
  want = np.asarray(boundary(state).ols.soft_labels)
  got = np.asarray(boundary(back).ols.soft_labels)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # Other pytrees (e.g. KD teacher variables) replicate as before.
  tree = {"w": np.ones(3, np.float32)}
  np.testing.assert_array_equal(parallel.replicate_state(tree, devices)["w"],
                                np.ones((N_DEV, 3), np.float32))


def test_batch_size_must_split_over_devices():
  with pytest.raises(ValueError, match="batch_size.*multiple of the device count 4"):
    parallel.check_batch_size(30, 4)


@pytest.mark.parametrize("requested,batches,cores,expected", [
    (0, (128, 512), 2, 2),   # one device per core
    (0, (128, 512), 16, 16),
    (0, (30, 60), 4, 3),     # largest count <= cores dividing every batch
    (0, (7,), 4, 1),
    (0, (128,), 1, 1),
    (3, (30,), 2, 3),        # an explicit count is taken as is
])
def test_cpu_device_count(requested, batches, cores, expected):
  assert distributed.cpu_device_count(requested, batches, cores=cores) == expected


def test_cpu_device_count_rejects_negative():
  with pytest.raises(ValueError, match="cpu_devices: expected >= 0, got -1"):
    distributed.cpu_device_count(-1, (128,))


_CONFIGURE = ("import jax; from ols_jax import distributed; "
              "n = distributed.configure_cpu_devices({req}, (128, 512)); "
              "print(n, len(jax.devices()), distributed.usable_cores())")


@pytest.mark.parametrize("extra_flags,req", [("", 0), ("", 1),
                                              ("--xla_cpu_multi_thread_eigen=false", 0)])
def test_configure_cpu_devices_in_a_fresh_process(extra_flags, req):
  """Auto splits the host into one device per core (the batch allowing); an
  explicit XLA thread limit (the study driver's) leaves XLA's single device."""
  env = dict(os.environ, XLA_FLAGS=extra_flags, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CONFIGURE.format(req=req)], env=env,
                       cwd=REPO, capture_output=True, text=True, check=True)
  configured, devices, cores = map(int, out.stdout.split())
  if extra_flags:
    assert (configured, devices) == (0, 1)
  else:
    expected = distributed.cpu_device_count(req, (128, 512), cores=cores)
    assert configured == devices == expected


# --------------------------------------------------------------------------
# The other methods' losses.
# --------------------------------------------------------------------------

def _np_logp(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_method_losses_against_numpy():
  rng = np.random.default_rng(0)
  b, k = 12, 5
  z = rng.normal(size=(b, k)).astype(np.float32) * 2
  t_logits = rng.normal(size=(b, k)).astype(np.float32) * 2
  y = rng.integers(0, k, b)
  logp = _np_logp(z)
  onehot = np.eye(k)[y]
  ce = -(onehot * logp).sum(-1)

  got = losses.per_example_loss(losses.LossSpec("ce", k), z, y)
  np.testing.assert_allclose(got, ce, rtol=1e-5)

  eps = 0.1
  # ls: optax.smooth_labels / PyTorch label_smoothing (eps / K to every class).
  target = onehot * (1 - eps) + eps / k
  got = losses.per_example_loss(losses.LossSpec("ls", k, eps=eps), z, y)
  np.testing.assert_allclose(got, -(target * logp).sum(-1), rtol=1e-5)
  import optax  # pylint: disable=import-outside-toplevel
  np.testing.assert_allclose(
      got, optax.softmax_cross_entropy(z, optax.smooth_labels(onehot, eps)), rtol=1e-5)
  target = onehot * (1 - eps) + (1 - onehot) * eps / (k - 1)
  got = losses.per_example_loss(losses.LossSpec("ls_kminus1", k, eps=eps), z, y)
  np.testing.assert_allclose(got, -(target * logp).sum(-1), rtol=1e-5)

  temp, alpha = 3.0, 0.4
  logp_t = _np_logp(z / temp)

  def kl(p, lq):
    return (p * (np.log(p) - lq)).sum(-1)

  teacher = np.exp(_np_logp(t_logits / temp))
  got = losses.per_example_loss(losses.LossSpec("kd", k, alpha=alpha, temperature=temp),
                                z, y, teacher_logits=t_logits)
  np.testing.assert_allclose(got, (1 - alpha) * ce + alpha * temp**2 * kl(teacher, logp_t),
                             rtol=1e-4)

  a = 0.9
  q = onehot * a + (1 - onehot) * (1 - a) / (k - 1)
  virt = np.exp(_np_logp(np.log(q) / temp))
  got = losses.per_example_loss(
      losses.LossSpec("tfkd_paper", k, alpha=alpha, temperature=temp, tfkd_a=a), z, y)
  np.testing.assert_allclose(got, (1 - alpha) * ce + alpha * temp**2 * kl(virt, logp_t),
                             rtol=1e-4)

  # tfkd_reg, written as the released loss_kd_regularization reads: q softened
  # as probabilities, nn.KLDivLoss() (mean over B*K elements) * multiplier.
  ra, rt, rp, mult = 0.1, 20.0, 0.99, 100.0
  q = onehot * rp + (1 - onehot) * (1 - rp) / (k - 1)
  soft = np.exp(q / rt) / np.exp(q / rt).sum(-1, keepdims=True)
  kl_elem_mean = (soft * (np.log(soft) - logp)).sum() / (b * k)
  released = (1 - ra) * ce.mean() + ra * kl_elem_mean * mult
  got = losses.per_example_loss(losses.LossSpec("tfkd_reg", k), z, y)
  np.testing.assert_allclose(np.mean(got), released, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 4, 75])
def test_implied_true_class_mass(k):
  eps = 0.1
  mass = lambda m, **kw: losses.implied_true_class_mass(losses.LossSpec(m, k, **kw))
  np.testing.assert_allclose(mass("ls", eps=eps), 1 - eps + eps / k, atol=2e-4)
  np.testing.assert_allclose(mass("ls_kminus1", eps=eps), 1 - eps, atol=2e-4)
  # tfkd_reg: the optimum is the mixture of the one-hot and the nearly uniform
  # teacher with weights (1 - a) and a * multiplier / K.
  t_true = np.exp(0.99 / 20) / (np.exp(0.99 / 20) + (k - 1) * np.exp(0.01 / (k - 1) / 20))
  w = 0.1 * 100 / k
  np.testing.assert_allclose(mass("tfkd_reg"), (0.9 + w * t_true) / (0.9 + w), atol=2e-4)
  with pytest.raises(ValueError, match="teacher or S"):
    mass("ols")


def test_renamed_method_is_a_clear_error():
  with pytest.raises(ValueError, match="tfkd_reg"):
    losses.LossSpec("tfkd", 4)


@pytest.mark.parametrize("field,value", [
    ("method", "focal_loss"), ("alpha", 1.5), ("alpha", -0.1), ("eps", 1.0),
    ("temperature", 0.0), ("tfkd_a", 1.0), ("freeze_threshold", 0.0),
    ("reg_alpha", 1.5), ("reg_temperature", 0.0), ("reg_correct_prob", 1.0),
    ("reg_multiplier", -1.0),
])
def test_loss_spec_rejects_out_of_range(field, value):
  with pytest.raises(ValueError, match=field):
    losses.LossSpec(**{"num_classes": 4, field: value})
