"""The multi-run study: many runs of the main job, collected and compared.

  ``grid_runner``   run cells, each a subprocess of ``python -m ols_jax.cli``;
  ``sweep``         tuned sweeps: arms, candidate grids, selection on the
                    calibration split, then seeds;
  ``sweep_report``  the report of one collected sweep (with ``stats``: paired
                    bootstrap and seed intervals); ``pooled``: the earlier
                    fixed-effect verdict over collected sweeps; ``meta`` and
                    ``regime``: the regime study's random-effects analysis.

The grid-study tables of the archived 2026-11 studies (``grid_report``,
``experiments/compare.py``, ``experiments/collect_results.py``) were retired;
they live at commit f316bbc, which reproduces those studies.

``collected`` owns the collected layout under ``docs/results/<study>/``
(``<model>/<run>/seed<k>.json`` and its companions): collecting a finished
run, reading it back, restoring it as a run folder.
"""
