"""Parley's Redis protocol: key names, clients, the context window, live audio streams,
heartbeats, metric totals.
"""
