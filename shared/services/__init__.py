"""Domain services over SQL (conversations, turns, voices, jobs, keys, quotas). They flush;
callers commit.
"""
