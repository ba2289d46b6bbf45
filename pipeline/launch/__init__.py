"""The launcher side of the Ray boundary: everything here runs in the ``python -m pipeline.launch`` process.

- :mod:`~pipeline.launch.cli`: the command line (validate, dry run, run, print the results).
- :mod:`~pipeline.launch.study`: load a spec file, apply ``--set``, expand the grid into a :class:`Study`.
- :mod:`~pipeline.launch.capacity`: what each trial needs and how many run at once (the dry-run table).
- :mod:`~pipeline.launch.autoscaler`: how far the cluster can grow (the autoscaler's node types and max_workers).
- :mod:`~pipeline.launch.tune_run`: start or join Ray, the MLflow parent run, the Tune experiment, resume.
- :mod:`~pipeline.launch.tune_state`: kill-safe snapshots of Tune's experiment state.

Nothing here runs inside a Ray trial; the trial side is :mod:`pipeline.trial`.
"""
