"""Middleware that wraps every request: body limit, request id, rate limit, HTTP metrics."""
