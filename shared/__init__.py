"""Code shared by the API and the worker: settings, SQL, Redis context, audio, errors.

Nothing in this package imports torch, transformers, ``api`` or ``worker``.
"""
