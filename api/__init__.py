"""Parley's HTTP front end (FastAPI). Never imports torch, transformers or ``worker``."""
