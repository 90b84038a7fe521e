"""What every integration reports, and when: the framework-independent half.

A framework callback translates its hooks into these calls; this class decides
what they mean (started or resumed, a new best loss, a NaN, a failure that
ended "normally") and sends it through the manager, which routes, throttles and
keeps it durable.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core.monitors import CostMonitor, DiskMonitor, GpuMonitor, check_loss, is_out_of_memory
from afs_core.run_context import RunContext
from afs_core.source import Source

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def numeric_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numbers among a framework's logged values (tensors and numpy scalars included)."""
    numbers = {}
    for key, value in (metrics or {}).items():
        number = _number(value)
        if number is not None:
            numbers[str(key)] = number
    return numbers


class RunReporter:
    """Reports one training run.

    :param degrade_ratio: LOSS_DEGRADED when the loss rises this far above the best
        so far (0.25: 25 %), once until a new best.
    :param cost: a CostMonitor updated at each epoch; ``gpu``: a GpuMonitor started
        and stopped with the run; ``disk``: a DiskMonitor checked at each checkpoint.
    """

    def __init__(
        self,
        manager: NotificationManager | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
        *,
        degrade_ratio: float = 0.25,
        cost: CostMonitor | None = None,
        gpu: GpuMonitor | None = None,
        disk: DiskMonitor | None = None,
    ) -> None:
        self._manager = manager
        run = RunContext.from_env()  # under afs run: the run it named, unless given here
        self.model_name = model_name or (run and run.model_name) or "model"
        self.run_id = run_id or (run and run.run_id) or f"{self.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.degrade_ratio = degrade_ratio
        self.cost, self.gpu, self.disk = cost, gpu, disk
        self.is_main = Source.current().is_main_process
        self.best: float | None = None
        self.last_loss: float | None = None
        self.degraded = False
        self.saw_nan = False
        self.started_at: float | None = None
        self.finished = False
        self.eval_metrics: dict[str, float] = {}
        self._lock = threading.Lock()
        self._recorded: dict[str, int | None] = {}  # the last step recorded, by metric

    @property
    def manager(self) -> NotificationManager:
        if self._manager is None:
            from afs_core.manager import NotificationManager

            self._manager = NotificationManager.from_env()
        return self._manager

    # -- the run's life ---------------------------------------------------------------------

    def started(self, epochs: Any = None, batch_size: Any = None, resumed_from: str | None = None) -> None:
        self.started_at = time.monotonic()
        self.finished = False
        if self.gpu is not None:
            self.gpu.start()
        if not self.is_main:
            return
        if resumed_from is not None:
            self.manager.notify_training_resumed(self.model_name, self.run_id,
                                                 checkpoint_path=str(resumed_from) or None)
            return
        epochs_n = _number(epochs)
        batch_n = _number(batch_size)
        self.manager.notify_training_started(
            self.model_name, self.run_id,
            epochs=int(epochs_n) if epochs_n is not None and epochs_n.is_integer() else None,
            batch_size=int(batch_n) if batch_n is not None else None,
        )

    def epoch(self, epoch: int, metrics: Mapping[str, Any] | None = None, total: Any = None) -> None:
        if self.cost is not None:
            self.cost.update()
        if not self.is_main:
            return
        total_n = _number(total)
        self.manager.notify_epoch_completed(self.model_name, self.run_id, int(epoch), metrics=numeric_metrics(metrics),
                                            total_epochs=int(total_n) if total_n else None)

    def loss(self, value: Any, step: int | None = None) -> None:
        """A training loss: recorded for the run's curve; NaN/inf is reported once; a new
        best or a clear rise is told."""
        self.record(value, step)
        number = _number(value)
        if number is None:
            return
        if not math.isfinite(number):
            self.nan(step)
            return
        with self._lock:
            self.last_loss = number
            previous = self.best
            if previous is None:
                self.best = number
                return
            if number < previous:
                self.best, self.degraded = number, False
                improved, degraded = True, False
            else:
                improved = False
                degraded = not self.degraded and number > previous * (1 + self.degrade_ratio)
                self.degraded = self.degraded or degraded
        if not self.is_main:
            return
        if improved:
            self.manager.notify_loss_improved(self.model_name, self.run_id, number, previous_loss=previous, step=step)
        elif degraded:
            self.manager.notify_loss_degraded(self.model_name, self.run_id, number, previous_loss=previous, step=step)

    def progress(self, step: int | None = None) -> None:
        """A step ended (on every rank): progress for the manager's stall watchdog."""
        self.manager.mark_progress(self.run_id, self.model_name)

    def record(self, value: Any, step: int | None = None, metric: str = "loss") -> None:
        """Record ``metric`` at ``step`` for the run's curves (``log_metrics``, which marks
        progress too); a value already recorded for this step (an epoch's loss after its
        last batch's) is not recorded twice."""
        if value is None or (step is not None and self._recorded.get(metric) == step):
            self.progress(step)
            return
        self._recorded[metric] = step
        self.manager.log_metrics(step=step, run_id=self.run_id, model_name=self.model_name, **{metric: value})

    def step_value(self, value: Any, step: int | None = None, metric: str = "loss") -> None:
        """A per-step value (loss, gradient norm): recorded; only NaN or infinity is
        reported, once. It marks progress too."""
        self.record(value, step, metric)
        number = _number(value)
        if number is not None and not math.isfinite(number):
            self.nan(step, metric)

    def nan(self, step: int | None = None, metric: str = "loss") -> None:
        self.saw_nan = True
        check_loss(self.manager, math.nan, step=step, model_name=self.model_name, run_id=self.run_id, metric=metric)

    def evaluation(self, metrics: Mapping[str, Any] | None) -> None:
        numbers = numeric_metrics(metrics)
        for key, value in numbers.items():
            if "loss" in key and not math.isfinite(value):
                self.nan(metric=key)
        self.eval_metrics = {k: v for k, v in numbers.items() if math.isfinite(v)}
        if self.is_main and numbers:
            self.manager.notify_evaluation_completed(self.model_name, self.run_id, numbers)

    def checkpoint(self, path: str, epoch: int | None = None, step: int | None = None) -> None:
        if self.disk is not None:
            self.disk.check()
        if self.is_main:
            self.manager.notify_checkpoint_saved(self.model_name, self.run_id, str(path), epoch=epoch, step=step)

    def completed(self, final_loss: Any = None, eval_metrics: Mapping[str, Any] | None = None) -> None:
        """The framework says training ended; a run that ended on NaN is reported failed."""
        if self.finished:
            return
        self.finished = True
        self._stop_monitors()
        loss = _number(final_loss)
        if loss is None:
            loss = self.last_loss
        if self.saw_nan or (loss is not None and not math.isfinite(loss)):
            self.failed("training stopped after the loss became NaN or infinite")
            return
        if not self.is_main:
            return
        duration = time.monotonic() - self.started_at if self.started_at is not None else 0.0
        metrics = numeric_metrics(eval_metrics) or self.eval_metrics
        self.manager.notify_training_completed(self.model_name, self.run_id, duration, final_loss=loss,
                                               eval_metrics=metrics)

    def failed(self, error: BaseException | str) -> None:
        """From any rank: the manager sends failures from every rank, once per failure."""
        self.finished = True
        self._stop_monitors()
        if isinstance(error, BaseException) and is_out_of_memory(error):
            self.manager.notify_out_of_memory(self.model_name, self.run_id, error)
        else:
            self.manager.notify_training_failed(self.model_name, self.run_id, error)

    def paused(self, reason: str) -> None:
        self.finished = True
        self._stop_monitors()
        if self.is_main:
            self.manager.notify_training_paused(self.model_name, self.run_id, reason=reason)

    def _stop_monitors(self) -> None:
        if self.gpu is not None:
            self.gpu.stop()

    # -- frameworks without an exception hook ------------------------------------------------

    def watch_process_end(self) -> None:
        """For frameworks without hooks for them: an exception escaping the training
        call is reported as failed, a SIGTERM (preemption) as paused; the process's
        own handlers still run afterwards."""
        self._watch_sigterm()
        previous: Callable[..., Any] = sys.excepthook
        reporter = self

        def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
            if not reporter.finished and reporter.started_at is not None and not issubclass(kind, KeyboardInterrupt):
                try:
                    reporter.failed(error.with_traceback(tb))
                except Exception:
                    pass
            previous(kind, error, tb)

        sys.excepthook = hook

    def _watch_sigterm(self) -> None:
        import os
        import signal

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signal.SIGTERM)
        reporter = self

        def on_sigterm(signum: int, frame: Any) -> None:
            if not reporter.finished and reporter.started_at is not None:
                try:
                    reporter.paused("SIGTERM received (preemption?)")
                    reporter.manager.flush(timeout=2.0)
                except Exception:
                    pass
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default: end the process as SIGTERM would
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)
