"""Benchmarks: measured, printed, never asserted (speed is not a unit-test concern)."""
