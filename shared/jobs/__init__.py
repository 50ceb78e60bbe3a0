"""Job orchestration: the Celery app and queue, per-conversation dispatch, recovery."""
