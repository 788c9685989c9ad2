"""Import of torchvision weights (``state_dict`` ``.pth`` or ``safetensors``).

The zoo's ResNet-18/34/50, MobileNetV2 and VGG-19(-BN) follow torchvision's
layout, so each torchvision tensor has exactly one Flax home:

- convolution ``(O, I, kh, kw)`` -> Flax kernel ``(kh, kw, I, O)`` (depthwise
  kernels ``(C, 1, kh, kw)`` -> ``(kh, kw, 1, C)`` the same way);
- linear ``(out, in)`` -> Dense kernel ``(in, out)``; VGG's first classifier
  layer also reorders its inputs from torch's ``(C, 7, 7)`` flattening to
  Flax's ``(7, 7, C)``;
- BatchNorm ``weight``/``bias`` -> ``scale``/``bias`` params,
  ``running_mean``/``running_var`` -> ``mean``/``var`` batch stats
  (``num_batches_tracked`` is dropped).

Adaptations, each reported in the returned record: a 1-channel run gets the
stem convolution summed over its RGB inputs; a head of another class count
stays freshly initialised; MobileNetV2 / VGG with ``small_input`` keep the
released weights (only strides / pools change). ResNet's ``small_input`` stem
(3x3, stride 1, no max-pool) has no released weights and is refused.

References:
  torchvision.models.resnet, .mobilenetv2, .vgg (the parameter names).
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from typing import Any, Dict, Iterator, Tuple

import flax
import numpy as np

from ols_jax import models

SUFFIXES = (".pth", ".pt", ".safetensors")
SUPPORTED = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg19", "vgg19_bn")
_STEMS = {"resnet18": "conv1", "resnet34": "conv1", "resnet50": "conv1",
          "mobilenet_v2": "stem_conv", "vgg19": "conv0", "vgg19_bn": "conv0"}
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class WeightImportError(ValueError):
  """A weight file that does not fit the model (message names the layer)."""


def is_weight_file(path: Any) -> bool:
  """Whether ``path`` names a torchvision weight file (by its suffix)."""
  return pathlib.Path(str(path)).suffix.lower() in SUFFIXES


def read_state_dict(path: Any) -> Dict[str, np.ndarray]:
  """The tensors of a ``state_dict`` file as float32 / int NumPy arrays.

  ``.safetensors`` is read with ``safetensors.numpy``; ``.pth`` / ``.pt`` with
  ``torch.load(weights_only=True)`` (PyTorch needed). A checkpoint dict with a
  ``state_dict`` or ``model`` entry is unwrapped; a ``module.`` prefix
  (``DataParallel``) is stripped.

  Raises:
    WeightImportError: unreadable file, missing PyTorch for ``.pth``, or no
      tensors in it.
  """
  path = pathlib.Path(str(path))
  if not path.is_file():
    raise WeightImportError(f"{path}: no such file")
  suffix = path.suffix.lower()
  try:
    if suffix == ".safetensors":
      try:
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise WeightImportError(f"{path}: reading .safetensors needs the safetensors "
                                "package (pip install safetensors)") from None
      raw = load_file(str(path))
    else:
      try:
        import torch  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise WeightImportError(f"{path}: reading .pth needs PyTorch (pip install torch), "
                                "or convert the file to .safetensors") from None
      raw = torch.load(str(path), map_location="cpu", weights_only=True)
      for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
          raw = raw[key]
      if not isinstance(raw, dict):
        raise WeightImportError(f"{path}: expected a state_dict (a dict of tensors), "
                                f"got {type(raw).__name__}")
      raw = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
             for k, v in raw.items() if hasattr(v, "detach")}
  except WeightImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise WeightImportError(f"{path}: not a readable {suffix} weight file "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
  tensors = {k[len("module."):] if k.startswith("module.") else k: np.asarray(v)
             for k, v in raw.items()}
  if not tensors:
    raise WeightImportError(f"{path}: holds no tensors")
  return tensors


def _bn(flax_path: Tuple[str, ...], torch_prefix: str) -> Iterator[Tuple[str, tuple, str, str]]:
  """(collection, flax path, torch key, kind) of one BatchNorm."""
  yield "params", flax_path + ("scale",), f"{torch_prefix}.weight", "vector"
  yield "params", flax_path + ("bias",), f"{torch_prefix}.bias", "vector"
  yield "batch_stats", flax_path + ("mean",), f"{torch_prefix}.running_mean", "vector"
  yield "batch_stats", flax_path + ("var",), f"{torch_prefix}.running_var", "vector"


def _conv(flax_path: Tuple[str, ...], torch_prefix: str, bias: bool = False):
  yield "params", flax_path + ("kernel",), f"{torch_prefix}.weight", "conv"
  if bias:
    yield "params", flax_path + ("bias",), f"{torch_prefix}.bias", "vector"


def _dense(flax_path: Tuple[str, ...], torch_prefix: str, kind: str = "dense"):
  yield "params", flax_path + ("kernel",), f"{torch_prefix}.weight", kind
  yield "params", flax_path + ("bias",), f"{torch_prefix}.bias", "vector"


def _resnet_map(params: dict):
  yield from _conv(("conv1",), "conv1")
  yield from _bn(("bn1",), "bn1")
  for block in sorted(k for k in params if re.fullmatch(r"layer\d_\d+", k)):
    stage, index = block[len("layer"):].split("_")
    prefix = f"layer{stage}.{index}"
    for name in sorted(params[block]):
      m = re.fullmatch(r"(conv|bn)(\d)", name)
      if m and m.group(1) == "conv":
        yield from _conv((block, name), f"{prefix}.{name}")
      elif m:
        yield from _bn((block, name), f"{prefix}.{name}")
    if "downsample_conv" in params[block]:
      yield from _conv((block, "downsample_conv"), f"{prefix}.downsample.0")
      yield from _bn((block, "downsample_bn"), f"{prefix}.downsample.1")
  yield from _dense(("fc",), "fc")


def _mobilenet_map(params: dict):
  yield from _conv(("stem_conv",), "features.0.0")
  yield from _bn(("stem_bn",), "features.0.1")
  blocks = sorted((k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:]))
  for block in blocks:
    prefix = f"features.{int(block[5:]) + 1}.conv"
    parts = (["expand"] if "expand_conv" in params[block] else []) + ["depthwise"]
    for i, part in enumerate(parts):  # Conv2dNormActivation: .0 conv, .1 BN
      yield from _conv((block, f"{part}_conv"), f"{prefix}.{i}.0")
      yield from _bn((block, f"{part}_bn"), f"{prefix}.{i}.1")
    yield from _conv((block, "project_conv"), f"{prefix}.{len(parts)}")
    yield from _bn((block, "project_bn"), f"{prefix}.{len(parts) + 1}")
  last = len(blocks) + 1
  yield from _conv(("head_conv",), f"features.{last}.0")
  yield from _bn(("head_bn",), f"features.{last}.1")
  yield from _dense(("classifier",), "classifier.1")


def _vgg_map(params: dict, batch_norm: bool):
  index = conv = 0
  for item in _VGG19:
    if item == "M":
      index += 1
      continue
    yield from _conv((f"conv{conv}",), f"features.{index}", bias=True)
    index += 1
    if batch_norm:
      yield from _bn((f"bn{conv}",), f"features.{index}")
      index += 1
    index += 1  # ReLU
    conv += 1
  yield from _dense(("fc0",), "classifier.0", kind="dense_nchw")
  yield from _dense(("fc1",), "classifier.3")
  yield from _dense(("fc2",), "classifier.6")


def _mapping(model: str, params: dict):
  if model.startswith("resnet"):
    return list(_resnet_map(params))
  if model == "mobilenet_v2":
    return list(_mobilenet_map(params))
  return list(_vgg_map(params, batch_norm=model == "vgg19_bn"))


def _to_flax(kind: str, value: np.ndarray, want: tuple) -> np.ndarray:
  """A torch tensor in the Flax layout of ``kind``, for a leaf of shape ``want``."""
  if kind == "conv" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if kind == "dense" and value.ndim == 2:
    return value.T
  if kind == "dense_nchw" and value.ndim == 2 and len(want) == 2:
    out, fan_in = value.shape
    side = 7  # torchvision's adaptive pool size
    channels = fan_in // (side * side)
    if channels * side * side == fan_in:
      return value.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(fan_in, out)
  return value


def convert(model: str, tensors: Dict[str, np.ndarray], params: Any, batch_stats: Any, *,
            small_input: bool, source: str = "weights") -> Tuple[Any, Any, dict]:
  """``params`` / ``batch_stats`` filled from a torchvision ``state_dict``.

  Args:
    model: a name of ``SUPPORTED``.
    tensors: the file's tensors (:func:`read_state_dict`).
    params, batch_stats: the freshly initialised trees of the run's model
      (their shapes decide the head and the stem's input channels).
    small_input: the run's ``config.small_input``.
    source: the file name for messages.

  Returns:
    ``(params, batch_stats, record)``; ``record`` has ``kept_fresh`` (the
    ``/``-joined paths left at their initial values) and ``adapted`` (what
    was changed, in words).

  Raises:
    WeightImportError: another architecture or width, a missing, extra or
      mis-shaped tensor (the message names the layer), or ResNet's
      ``small_input`` stem.
  """
  if model not in SUPPORTED:
    raise WeightImportError(f"{source}: torchvision weights are supported for "
                            f"{', '.join(SUPPORTED)}, not {model!r}")
  if small_input and model.startswith("resnet"):
    raise WeightImportError(
        f"{source}: torchvision {model} has a 7x7 stride-2 stem with max-pool; this run's "
        "small_input=True builds a 3x3 stride-1 stem that has no released weights: set "
        "--config.small_input=false (and an image_size of at least 64)")
  trees = {"params": flax.traverse_util.flatten_dict(flax.core.unfreeze(params)),
           "batch_stats": flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats or {}))}
  head, stem = models.HEAD_NAMES[model], _STEMS[model]
  kept_fresh, adapted, used = [], [], set()
  for collection, path, key, kind in _mapping(model, flax.core.unfreeze(params)):
    if path not in trees[collection]:
      raise WeightImportError(f"{source}: the model has no {'/'.join(path)} for {key}")
    if key not in tensors:
      raise WeightImportError(f"{source}: no tensor {key!r} (for {'/'.join(path)}); expected "
                              f"a torchvision {model} state_dict")
    used.add(key)
    want = tuple(trees[collection][path].shape)
    value = _to_flax(kind, np.asarray(tensors[key], np.float32), want)
    if path[0] == head and value.shape != want:
      kept_fresh.append("/".join(path))
      continue
    if path == (stem, "kernel") and value.shape != want and value.ndim == 4 and (
        value.shape[2] == 3 and want[2] == 1 and value.shape[:2] + value.shape[3:]
        == want[:2] + want[3:]):
      value = value.sum(axis=2, keepdims=True)
      adapted.append(f"{stem}: kernel summed over its RGB inputs for 1-channel images")
    if value.shape != want:
      raise WeightImportError(
          f"{source}: {key} has shape {tuple(np.shape(tensors[key]))}, the model's "
          f"{'/'.join(path)} needs {want} in Flax layout (another architecture or "
          "width_multiplier?)")
    trees[collection][path] = np.asarray(value, np.float32)
  extra = sorted(k for k in tensors if k not in used and not k.endswith("num_batches_tracked"))
  if extra:
    raise WeightImportError(f"{source}: {len(extra)} tensor(s) the model has no place for, "
                            f"first {extra[0]!r}: not a torchvision {model} state_dict")
  if kept_fresh:
    adapted.append(f"{head}: freshly initialised (the file's head has another class count)")
  if small_input:
    adapted.append("small_input: released weights with a stride-1 stem"
                   if model == "mobilenet_v2" else
                   "small_input: released weights with the first two max-pools removed")
  unflat = flax.traverse_util.unflatten_dict
  return (unflat(trees["params"]), unflat(trees["batch_stats"]) if trees["batch_stats"] else
          batch_stats, {"kept_fresh": kept_fresh, "adapted": adapted})


def sha256(path: Any) -> str:
  """The file's SHA-256 (hex), recorded with the run."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def load(path: Any, model: str, params: Any, batch_stats: Any, *,
         small_input: bool) -> Tuple[Any, Any, dict]:
  """:func:`read_state_dict` then :func:`convert`; the record adds the file's
  name, format and SHA-256."""
  path = pathlib.Path(str(path))
  tensors = read_state_dict(path)
  params, batch_stats, record = convert(model, tensors, params, batch_stats,
                                        small_input=small_input, source=path.name)
  return params, batch_stats, {"file": str(path), "format": "torchvision " + path.suffix,
                               "sha256": sha256(path), **record}

