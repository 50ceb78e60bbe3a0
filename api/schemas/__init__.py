"""Request and response bodies: Parley's own (core), the CSM sidecar's and the OpenAI-
compatible ones.
"""
