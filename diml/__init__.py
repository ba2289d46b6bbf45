"""DIML: interpretable deep metric learning with structural matching (Zhao et al., ICCV 2021).

Pure PyTorch research library. It never imports ray, mlflow, pydantic or pipeline.
"""

__version__ = "0.1.0"
