"""Keras 3: ``model.fit(..., callbacks=[AFSCallback(manager)])``.

Keras has no hook for failures (an exception escaping ``fit`` is caught on its
way out of the process) and ``TerminateOnNaN`` ends training "normally": a run
whose loss became NaN is reported failed, not completed. Keras has no public
rank function, so the launchers' rank variables decide the main process.
"""

from __future__ import annotations

from typing import Any

import keras

from afs_core.integrations.reporter import RunReporter


class AFSCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports start, epochs, losses, NaN, validation, completion and failure."""

    def __init__(self, manager: Any = None, model_name: str | None = None, run_id: str | None = None,
                 **monitors: Any) -> None:
        super().__init__()
        self.reporter = RunReporter(manager, model_name, run_id, **monitors)
        self._named = model_name is not None
        self._step = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._named and self.model is not None:
            self.reporter.model_name = getattr(self.model, "name", None) or self.reporter.model_name
        self.reporter.started(epochs=(self.params or {}).get("epochs"))
        self.reporter.watch_process_end()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1
        self.reporter.step_value((logs or {}).get("loss"), step=self._step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.reporter.loss(logs["loss"], step=self._step)
        validation = {k: v for k, v in logs.items() if k.startswith("val_")}
        if validation:
            self.reporter.evaluation(validation)
        self.reporter.epoch(epoch + 1, {k: v for k, v in logs.items() if not k.startswith("val_")},
                            total=(self.params or {}).get("epochs"))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.reporter.completed(final_loss=logs.get("loss"),
                                eval_metrics={k: v for k, v in logs.items() if k.startswith("val_")})
