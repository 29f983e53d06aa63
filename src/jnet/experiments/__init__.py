"""Experiments: benchmarks, complexity profiling, sweeps and their report, and the demo."""
