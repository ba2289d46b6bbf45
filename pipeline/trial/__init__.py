"""The trial side of the Ray boundary: everything here runs inside Ray, in a Tune trial's driver or its workers.

- :mod:`~pipeline.trial.driver`: the Tune function trainable; builds and fits one Ray Train ``TorchTrainer``.
- :mod:`~pipeline.trial.worker`: the Train loop every worker runs (train, evaluate, checkpoint, report).
- :mod:`~pipeline.trial.build`: the one mapping from a :class:`~pipeline.specs.RunSpec` to :mod:`diml` objects.
- :mod:`~pipeline.trial.logger`: rank 0's MLflow logging of a trial.

A trial receives its :class:`~pipeline.specs.RunSpec` as JSON and re-validates it; the launch's settings arrive as
a :class:`~pipeline.specs.TrialLaunch`. Nothing here imports :mod:`pipeline.launch`.
"""
