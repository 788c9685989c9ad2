"""ols_jax: Online Label Smoothing (Zhang et al., IEEE TIP 2021) in JAX/Flax.

Modules: ``ols`` (the method), ``losses``, ``train_state``, ``steps``,
``parallel``, ``models``, ``data``, ``metrics``, ``calibration``,
``embeddings``, ``train`` (``train_and_evaluate``), ``selective``
(risk-coverage, AURC, abstention), ``predict`` (a finished run on new images),
``study``.
"""

__version__ = "0.1.0"
