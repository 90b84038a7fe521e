"""Lightning: ``L.Trainer(callbacks=[AFSCallback(manager)])``.

Lightning calls ``on_save_checkpoint`` before the file is written, so a saved
checkpoint is reported at the next hook, once its file exists. A SIGTERM (the
usual preemption signal) is reported as paused, not failed.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import Callback

from afs_core.integrations.reporter import RunReporter


class AFSCallback(Callback):  # type: ignore[misc]
    """Reports start or resume, epochs, losses, NaN, validation, checkpoints,
    completion, failure (any rank) and preemption."""

    def __init__(self, manager: Any = None, model_name: str | None = None, run_id: str | None = None,
                 **monitors: Any) -> None:
        self.reporter = RunReporter(manager, model_name, run_id, **monitors)
        self._named = model_name is not None
        self._reported_checkpoints: set[str] = set()
        self._checkpoint_pending = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        reporter = self.reporter
        reporter.is_main = bool(trainer.is_global_zero)
        if not self._named:
            reporter.model_name = type(pl_module).__name__
        reporter.started(epochs=trainer.max_epochs, resumed_from=trainer.ckpt_path or None)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.reporter.step_value(loss, step=trainer.global_step)
        self._report_saved_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = dict(trainer.callback_metrics)
        for key in ("train_loss", "loss"):
            if key in metrics:
                self.reporter.loss(metrics[key], step=trainer.global_step)
                break
        self.reporter.epoch(trainer.current_epoch, metrics, total=trainer.max_epochs)
        self._report_saved_checkpoints(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if "val" in k}
        self.reporter.evaluation(metrics)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_pending = True  # the file is written after this hook returns

    def _report_saved_checkpoints(self, trainer: Any) -> None:
        if not self._checkpoint_pending:
            return
        callback = trainer.checkpoint_callback
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path and path not in self._reported_checkpoints and os.path.exists(path):
                self._reported_checkpoints.add(path)
                self._checkpoint_pending = False
                self.reporter.checkpoint(path, epoch=trainer.current_epoch, step=trainer.global_step)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._report_saved_checkpoints(trainer)
        if getattr(trainer, "received_sigterm", False):
            self.reporter.paused("SIGTERM received (preemption?)")
            return
        metrics = dict(trainer.callback_metrics)
        self.reporter.completed(final_loss=metrics.get("train_loss", metrics.get("loss")),
                                eval_metrics={k: v for k, v in metrics.items() if "val" in k})

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if getattr(trainer, "received_sigterm", False):
            self.reporter.paused("SIGTERM received (preemption?)")
        elif isinstance(exception, KeyboardInterrupt):
            self.reporter.paused("interrupted")
        else:
            self.reporter.failed(exception)
