"""Real protocol servers for tests and demos, and the scenario runner that knows the ground truth.

Simulators are both test fixtures (started in-process on free loopback ports) and command-line
tools (`python -m simulators.modbus_device --port 5020`).
"""
