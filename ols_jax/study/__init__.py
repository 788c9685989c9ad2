"""The multi-run study: many runs of the main job, collected and compared.

Two pipelines share the run cells and the collected layout:

  grid studies    ``grid_runner`` (methods x models x seeds, each cell a
                  subprocess of ``python -m ols_jax.cli``), ``grid_report``
                  (mean ± std tables, paired wins, the cross-study overview);
  tuned sweeps    ``sweep`` (arms, candidate grids, selection on validation),
                  ``sweep_report`` (the report of one collected sweep, with
                  ``stats``: paired bootstrap and seed intervals), ``pooled``
                  (the verdict pooled over several collected sweeps).

``collected`` owns the collected layout under ``docs/results/<study>/``
(``<model>/<run>/seed<k>.json`` and its companions): collecting a finished
run, reading it back, restoring it as a run folder.
"""
