"""The CSM speech engine: model loading, prompt building from cached Mimi codes, generation.

Import ``worker.engine.csm.CsmEngine`` for the engine and ``worker.engine.tiny`` for the tiny
test checkpoint; this package itself imports nothing heavy.
"""
