"""SQL: the engine and sessions, the models, migrations."""
