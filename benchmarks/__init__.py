"""Benchmarks: measured speed and accuracy, printed as a table and written as JSON."""
