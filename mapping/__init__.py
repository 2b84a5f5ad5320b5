"""The mapping: integrator YAML → validated model → compiled rules → a pure engine.

`mapping.load.load_mapping` reads and checks a file; `mapping.engine.Engine` turns samples into
packet drafts without I/O or a clock of its own.
"""
