"""Benchmark cases: each module measures one figure; run as a script, it is the measured child."""
