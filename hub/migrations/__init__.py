"""Alembic migrations of the hub schema (run by `hub.migrate.upgrade` when the hub starts)."""
