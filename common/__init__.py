"""What both daemons need and neither owns: the MQTT 5 client adapter that runs paho on the
event loop, one backoff policy, the located YAML loader of every config file (`yamlsrc`), the
embedded uvicorn server (`http_server`), the garbage collector's steady-state tuning (`heap`)
and scrape-time metric helpers (`metrics`). Shared ids and patterns are the wire contract's
(`sync.packet`), which this room may import.

Both `sync/` (the edge uplink) and `hub/` may import this room; it imports nothing of the
project but the wire contract (`sync.packet`).
"""
