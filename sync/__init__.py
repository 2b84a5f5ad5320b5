"""The wire contract shared by edge and hub (`packet`, `topics`) and the edge uplink."""
