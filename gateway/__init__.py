"""The edge daemon: config, wiring, driver supervision, local API, metrics, mapping reload."""
