"""aesq: aesthetic data quality for text-to-image training data and model versions."""

__version__ = "0.1.0"
