"""keyop's example configs, shipped as package data: they run as they are against the simulators
(`mapping.yaml`: the Modbus press; `mapping-opcua.yaml`: the OPC UA PLC; `assembly.mapping.yaml`:
the serial scanner station; `gateway.yaml`, `hub.yaml`), with the JSON Schemas of the mapping
and the packet that the mappings' first line points editors at.

`keyop demo`, the benchmarks and the tests read them from here, in a checkout and in an
installed wheel alike; `keyop init examples DIR` copies them out.
"""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent
"""The folder holding the example files."""

FILES = ("gateway.yaml", "mapping.yaml", "mapping-opcua.yaml", "assembly.mapping.yaml",
         "hub.yaml", "mapping.schema.json", "packet.schema.json")
