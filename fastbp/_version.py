"""The version of fastbp (one definition; pyproject.toml states the same)."""
__version__ = "0.1.0"
