"""PagerDuty channel for AFS notifications (``pip install afs-pagerduty``)."""

from afs_pagerduty.channel import PagerDutyChannel

__all__ = ["PagerDutyChannel"]
