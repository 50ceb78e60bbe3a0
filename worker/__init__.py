"""The Parley worker: runs the CSM speech engine behind the job queue (torch lives here only)."""
