"""What the routes do, as functions the routes (and the CLI) call; no route module is imported
as a library.
"""
