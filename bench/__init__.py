"""Benchmarks: measured against baselines in the same run, reported as ratios."""
