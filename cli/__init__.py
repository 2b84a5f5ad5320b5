"""`keyop`: the command line of the edge daemon, the hub, the authoring tools and benchmarks."""
