"""Punie: a Python coding agent on local MLX models, launched from declarative profiles."""

__version__ = "0.1.0"
