"""ols_jax: Online Label Smoothing (Zhang et al., IEEE TIP 2021) in JAX/Flax.

Modules: ``ols`` (the method), ``losses``, ``train_state``, ``steps``,
``parallel`` (data parallelism), ``distributed`` (process start-up),
``models``, ``data``, ``metrics``, ``calibration``, ``embeddings``, ``train``
(``train_and_evaluate``), ``cli`` (the main job's command line), ``evaluation``
(the final evaluation), ``selective`` (risk-coverage, AURC, abstention),
``conformal`` (prediction sets), ``ood`` (out-of-distribution scores),
``corruptions`` and ``shift`` (evaluation under shift), ``predict`` (a
finished run on new images), ``fileio`` (atomic writes), and the multi-run
study, the subpackage ``study``.
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("ols_jax")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"
