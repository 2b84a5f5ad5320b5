"""The collaboration hub: ingest, dedupe, store, route and redact, fan out to suppliers.

The hub imports only the wire contract (`sync.packet`, `sync.topics`), SQLAlchemy, paho-mqtt,
pydantic and PyYAML: never `gateway`, `drivers`, `mapping` or `edge_store`.
"""
