"""Benchmarks: each prints both sides of a comparison measured in one run. Run from the repository root: python -m benchmarks.bench_sampling --quick"""
