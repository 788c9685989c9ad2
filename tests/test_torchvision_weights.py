"""Torchvision weights: logits equal torchvision's own models (eval mode, fp32).

The reference is torchvision's released model code (``torchvision.models``),
randomly initialised, with randomised BatchNorm statistics so that the eval
path uses every imported tensor. Skipped when torch / torchvision are absent.
"""

import pathlib
import sys

import jax
import numpy as np
import pytest

from ols_jax import models
from ols_jax.models import torchvision_weights as tvw

torch = pytest.importorskip("torch", reason="torch not installed (requirements.txt pins it)")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402  pylint: disable=wrong-import-position


tv = common.torchvision_models()
needs_tv = pytest.mark.skipif(tv is None, reason="torchvision not installed (requirements.txt)")


def _torch_model(name, num_classes=1000, seed=0):
  torch.manual_seed(seed)
  net = getattr(tv, name)(weights=None, num_classes=num_classes)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for mod in net.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=gen))
        mod.running_var.copy_(1.0 + torch.rand(mod.running_var.shape, generator=gen))
        mod.weight.copy_(0.8 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
        mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
  return net.eval()


def _flax(name, num_classes, size, channels=3, small_input=False):
  model = models.create(name, num_classes, small_input=small_input)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, channels), np.float32))
  return model, variables["params"], variables.get("batch_stats", {})


def _save(net, path):
  sd = {k: v for k, v in net.state_dict().items()}
  if str(path).endswith(".safetensors"):
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
  else:
    torch.save(sd, str(path))
  return path


# (model, image size, file suffix); sizes keep the test fast while exercising
# every layer (VGG's adaptive pool replicates a 1x1 map to 7x7 at 32 px).
_SLOW = pytest.mark.slow  # all but ResNet-18 (the quick tier keeps one backbone)
CASES = [("resnet18", 64, ".pth"), pytest.param("resnet34", 64, ".safetensors", marks=_SLOW),
         pytest.param("resnet50", 64, ".pth", marks=_SLOW), pytest.param("mobilenet_v2", 32, ".safetensors", marks=_SLOW),
         pytest.param("vgg19", 32, ".pth", marks=_SLOW),
         pytest.param("vgg19_bn", 32, ".safetensors", marks=_SLOW)]


@needs_tv
@pytest.mark.parametrize("name,size,suffix", CASES)
def test_logits_equal_torchvision(tmp_path, name, size, suffix):
  net = _torch_model(name)
  path = _save(net, tmp_path / f"{name}{suffix}")
  model, params, stats = _flax(name, 1000, size)
  params, stats, record = tvw.load(path, name, params, stats, small_input=False)
  assert record["kept_fresh"] == [] and record["adapted"] == []
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(model.apply({"params": params, "batch_stats": stats}, x, train=False))
  # 1e-4 of the logits' scale: fp32 sums in another order differ by ~1e-6 relative.
  scale = max(1.0, float(np.max(np.abs(want))))
  assert np.max(np.abs(got - want)) <= 1e-4 * scale, (np.max(np.abs(got - want)), scale)


@needs_tv
def test_one_channel_stem_sums_rgb_and_new_head_stays_fresh(tmp_path):
  net = _torch_model("resnet18")
  path = _save(net, tmp_path / "r18.pth")
  model, params0, stats0 = _flax("resnet18", 4, 64, channels=1)
  params, stats, record = tvw.load(path, "resnet18", params0, stats0, small_input=False)
  assert record["kept_fresh"] == ["fc/kernel", "fc/bias"]
  assert any("summed over its RGB" in a for a in record["adapted"])
  np.testing.assert_array_equal(params["fc"]["kernel"], params0["fc"]["kernel"])
  # A grey image repeated over RGB gives torchvision's embedding exactly.
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 1)).astype(np.float32)
  body = torch.nn.Sequential(*list(net.children())[:-1])
  with torch.no_grad():
    want = body(torch.from_numpy(np.repeat(x, 3, -1).transpose(0, 3, 1, 2))).flatten(1).numpy()
  _, emb = model.apply({"params": params, "batch_stats": stats}, x, train=False,
                       return_embedding=True)
  np.testing.assert_allclose(np.asarray(emb), want, rtol=1e-4, atol=1e-4)


@needs_tv
def test_wrong_architecture_names_the_tensor(tmp_path):
  path = _save(_torch_model("resnet34"), tmp_path / "r34.pth")
  _, params, stats = _flax("resnet18", 1000, 64)
  with pytest.raises(tvw.WeightImportError, match=r"first 'layer1\.2\.") as e:
    tvw.load(path, "resnet18", params, stats, small_input=False)
  assert "\n" not in str(e.value)
  path = _save(_torch_model("resnet18"), tmp_path / "r18.pth")
  _, params, stats = _flax("resnet34", 1000, 64)
  with pytest.raises(tvw.WeightImportError, match=r"no tensor 'layer1\.2\."):
    tvw.load(path, "resnet34", params, stats, small_input=False)


@needs_tv
@_SLOW  # two full-width ResNet-18 inits; the quick tier keeps the cheaper refusals
def test_wrong_width_and_small_stem_are_refused(tmp_path):
  path = _save(_torch_model("resnet18"), tmp_path / "r18.safetensors")
  model = models.create("resnet18", 1000, width_multiplier=0.5)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(tvw.WeightImportError, match=r"conv1\.weight has shape \(64, 3, 7, 7\)"):
    tvw.load(path, "resnet18", v["params"], v["batch_stats"], small_input=False)
  _, params, stats = _flax("resnet18", 1000, 32, small_input=True)
  with pytest.raises(tvw.WeightImportError, match="small_input=false"):
    tvw.load(path, "resnet18", params, stats, small_input=True)


@needs_tv
@_SLOW
def test_mobilenet_small_input_keeps_released_weights(tmp_path):
  net = _torch_model("mobilenet_v2")
  path = _save(net, tmp_path / "m.pth")
  _, params, stats = _flax("mobilenet_v2", 1000, 32, small_input=True)
  params, _, record = tvw.load(path, "mobilenet_v2", params, stats, small_input=True)
  assert record["adapted"] == ["small_input: released weights with a stride-1 stem"]
  np.testing.assert_array_equal(params["stem_conv"]["kernel"],
                                net.features[0][0].weight.detach().numpy().transpose(2, 3, 1, 0))


def test_unreadable_and_non_state_dict_files(tmp_path):
  bad = tmp_path / "x.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(tvw.WeightImportError, match="x.safetensors: not a readable"):
    tvw.read_state_dict(bad)
  with pytest.raises(tvw.WeightImportError, match="no such file"):
    tvw.read_state_dict(tmp_path / "missing.pth")
  listed = tmp_path / "l.pth"
  torch.save([torch.zeros(2)], str(listed))
  with pytest.raises(tvw.WeightImportError, match="expected a state_dict"):
    tvw.read_state_dict(listed)
  wrapped = tmp_path / "w.pth"
  torch.save({"state_dict": {"module.fc.bias": torch.ones(3)}, "epoch": 3}, str(wrapped))
  assert list(tvw.read_state_dict(wrapped)) == ["fc.bias"]
