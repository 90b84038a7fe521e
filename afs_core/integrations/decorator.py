"""``@notify_on_completion``: started, completed or failed for any training function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager

_F = TypeVar("_F", bound=Callable[..., Any])


def notify_on_completion(
    manager: NotificationManager | None = None, model_name: str | None = None, run_id: str | None = None
) -> Callable[[_F], _F]:
    """Report the decorated call's start, its completion (duration; a returned number is
    the final loss, a returned mapping the final metrics) or its failure (which is
    re-raised: the decorator never swallows an error)."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from afs_core.integrations.reporter import RunReporter, numeric_metrics
            from afs_core.run_context import RunContext

            run = RunContext.from_env()  # under afs run, its names come before the function's
            reporter = RunReporter(manager, model_name or (run and run.model_name) or function.__name__, run_id)
            reporter.started()
            try:
                result = function(*args, **kwargs)
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt):
                    reporter.paused("interrupted (KeyboardInterrupt)")
                else:
                    reporter.failed(error)
                raise
            if isinstance(result, dict):
                metrics = numeric_metrics(result)
                reporter.completed(final_loss=metrics.get("loss"), eval_metrics=metrics)
            else:
                reporter.completed(final_loss=result if isinstance(result, (int, float)) else None)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
