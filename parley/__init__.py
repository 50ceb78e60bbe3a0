"""The ``parley`` command: the composition root that starts the API, workers and migrations."""
