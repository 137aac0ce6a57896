"""Inference behind a small backend interface (backend.py); LiteRT (TFLite) is its implementation.

Importing the package registers every backend.
"""

from . import litert as litert  # registers the LiteRT backend
