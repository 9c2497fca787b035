"""CareMatrix benchmarks: every figure is a ratio against plain Synapse measured in the same run."""
