"""Alembic migrations of the store: one history for SQLite and Postgres (see ``db.py``)."""
