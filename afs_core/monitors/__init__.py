"""Monitors: cost, GPU, disk, NaN and out-of-memory checks that alert once, at the right time.

Hand-written checks re-alert on every step or judge a GPU by one sample. These
fire each threshold once per run, wait for a condition to hold before calling
it a problem, say when it recovered, and remember what already fired across a
resume. Everything goes through the manager, so routing, throttling, rank
handling and durability apply. One module per monitor.
"""

from afs_core.monitors.cost import CostMonitor
from afs_core.monitors.disk import DiskMonitor
from afs_core.monitors.failures import is_out_of_memory, report_exception
from afs_core.monitors.gpu import GpuMonitor, GpuSample, GpuSource, NvmlSource, visible_devices
from afs_core.monitors.loss import check_loss

__all__ = [
    "CostMonitor", "DiskMonitor", "GpuMonitor", "GpuSample", "GpuSource", "NvmlSource", "check_loss",
    "is_out_of_memory", "report_exception", "visible_devices",
]
