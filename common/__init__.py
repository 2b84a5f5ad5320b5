"""What both daemons need and neither owns: the MQTT 5 client adapter that runs paho on the
event loop, the located YAML loader, one backoff policy, shared ids and patterns.

Both `sync/` (the edge uplink) and `hub/` may import this room; it imports nothing of the
project but the wire contract (`sync.packet`).
"""
