"""The benchmarks behind `keyop bench`: each measures one path and returns its figures."""
