"""Small helpers shared by every part of the fabric. Nothing here imports a part or the facade."""

from fabric.utilities.throughput import Throughput, ThroughputMonitor, measure_flops

__all__ = ["Throughput", "ThroughputMonitor", "measure_flops"]
