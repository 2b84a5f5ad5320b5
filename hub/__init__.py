"""The collaboration hub: ingest, dedupe, store, route and redact, fan out to suppliers.

The hub imports only the wire contract (`sync.packet`, `sync.topics`), SQLAlchemy and Alembic,
paho-mqtt, pydantic, PyYAML, FastAPI (served by uvicorn) and numpy: never `gateway`, `drivers`,
`mapping` or `edge_store`.
"""
