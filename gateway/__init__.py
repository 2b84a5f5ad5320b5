"""The edge daemon and the `keyop` command line: the only package that wires the others."""
