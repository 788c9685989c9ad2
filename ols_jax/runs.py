"""Reading a finished run back: its config, its selected weights, its logits."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import data as data_lib


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The run's saved ``config.json``.

  Raises:
    ConfigError: no readable ``config.json`` (not a run folder).
  """
  path = pathlib.Path(workdir) / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise config_lib.ConfigError(
        f"{path}: not a run's config ({type(e).__name__}: {e})") from None


def restore_selected(workdir: str | pathlib.Path, config, num_classes: int,
                     channels: int) -> tuple[Any, dict[str, Any]]:
  """``(model, variables)`` of the run's selected (best-validation) checkpoint."""
  from ols_jax import train  # pylint: disable=import-outside-toplevel
  model = train.make_model(config, num_classes)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0),
      jnp.zeros((1, config.image_size, config.image_size, channels)), train=False))
  variables = checkpointing.restore_teacher_variables(
      pathlib.Path(workdir), abstract, num_classes)
  return model, variables


def split_logits(workdir: str | pathlib.Path, split: str = "test",
                 batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Logits and labels of one split under the run's selected checkpoint.

  Uses the evaluation input path of training (no augmentation, padded last
  batch), on the default device.
  """
  config = load_config(workdir)
  dataset = data_lib.load_dataset(config.dataset, image_size=config.image_size,
                                  data_dir=config.data_dir or None,
                                  manual_dir=config.manual_dir or None)
  k = dataset.info.num_classes
  model, variables = restore_selected(workdir, config, k, config.channels)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits, labels = [], []
  for batch in data_lib.eval_iterator(dataset.splits[split], global_batch_size=batch_size,
                                      image_size=config.image_size,
                                      channels=config.channels):
    keep = batch["mask"] > 0
    logits.append(np.asarray(apply(variables, batch["image"]))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(logits), np.concatenate(labels).astype(np.int64)
