"""Hugging Face ``Trainer``: ``Trainer(..., callbacks=[AFSCallback(manager)])``.

The Trainer has no hook for failures, so an exception escaping ``train()`` is
caught on its way out of the process; its logging turns a NaN loss into 0.0 by
default (``logging_nan_inf_filter``), so the gradient norm and evaluation loss are
watched for NaN too.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from afs_core.integrations.reporter import RunReporter


class AFSCallback(TrainerCallback):  # type: ignore[misc]
    """Reports start or resume, epochs, loss improvements, NaN, evaluations,
    checkpoints (after they are written), completion and failure."""

    def __init__(self, manager: Any = None, model_name: str | None = None, run_id: str | None = None,
                 **monitors: Any) -> None:
        self.reporter = RunReporter(manager, model_name, run_id, **monitors)
        self._named = model_name is not None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        reporter = self.reporter
        reporter.is_main = bool(state.is_world_process_zero)
        if not self._named:
            reporter.model_name = _model_name(model) or args.run_name or reporter.model_name
        resumed = state.global_step > 0
        reporter.started(epochs=args.num_train_epochs, batch_size=args.per_device_train_batch_size,
                         resumed_from=f"step {state.global_step}" if resumed else None)
        reporter.watch_process_end()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.progress(state.global_step)  # for the stall watchdog (AFS_STALL_AFTER)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.reporter.loss(logs["loss"], step=state.global_step)
        self.reporter.step_value(logs.get("grad_norm"), step=state.global_step, metric="grad_norm")

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        self.reporter.evaluation(metrics)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loss = self.reporter.last_loss
        self.reporter.epoch(round(state.epoch or 0), {"loss": loss} if loss is not None else None,
                            total=args.num_train_epochs)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.reporter.checkpoint(path, epoch=round(state.epoch or 0), step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.completed()


def _model_name(model: Any) -> str | None:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else (type(model).__name__ if model is not None else None)
