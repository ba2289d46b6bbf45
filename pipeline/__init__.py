"""Experiment platform around :mod:`diml`: specs, Ray Tune/Train orchestration, MLflow tracking, reports."""
