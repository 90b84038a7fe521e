"""Events from what training code says: one pure function per kind of event.

The manager's ``notify_*`` methods, the ``afs`` command, ``afs run``, the monitors
and the framework callbacks all build their events here, so a title or message
reads the same wherever it came from. Each function returns a
:class:`~afs_core.events.NotificationEvent`; input the event model refuses raises
``TypeError`` or ``ValueError``, which the manager turns into a rejected result.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core.events import _METRIC_TYPES, EventType, NotificationEvent, NotificationLevel, as_metric_value
from afs_core.formatting import format_cost, format_duration, format_number, trim_traceback

if TYPE_CHECKING:
    from traceback import FrameSummary


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _usable_metrics(metrics: Mapping[Any, Any] | None) -> dict[str, Any]:
    """Metrics the event model accepts: one odd value must not cost the whole message,
    so ``None`` is dropped and anything else that is not a number is shown as text."""
    usable: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if type(key) is str and type(value) in _METRIC_TYPES:  # nearly every metric: kept as it is
            usable[key] = value
            continue
        if value is None:
            continue
        try:
            usable[_safe_str(key)] = as_metric_value(_safe_str(key), value)
        except TypeError:
            usable[_safe_str(key)] = _safe_str(value)
    return usable


def _error_context(error: BaseException | str | None) -> tuple[str | None, dict[str, Any]]:
    """``(error_details, context)`` for an error given as text or as an exception."""
    if error is None:
        return None, {}
    if isinstance(error, BaseException):
        details = f"{type(error).__name__}: {_safe_str(error)}"
        context: dict[str, Any] = {"error_type": type(error).__name__}
        if error.__traceback__ is not None:
            try:
                import traceback

                lines = traceback.format_exception(type(error), error, error.__traceback__)
                context["traceback"] = trim_traceback("".join(lines))
            except Exception:  # an exception whose str() fails; keep what we have
                pass
        return details, context
    return _safe_str(error), {}


def _run_label(model_name: str | None, run_id: str | None) -> str:
    if model_name and run_id:
        return f"{model_name} ({run_id})"
    return model_name or run_id or "run"


def custom(
    title: str,
    message: str = "",
    event_type: EventType | str = EventType.ERROR_OCCURRED,
    level: NotificationLevel | str | None = None,
    model_name: str | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    **context: Any,
) -> NotificationEvent:
    """Any event. ``level`` defaults to INFO as before.

    Known event fields in ``context`` (``epoch``, ``batch``, ``cost``, ``tags``,
    ``error_details``) set those fields; anything else lands in ``event.context``.
    """
    fields = {k: context.pop(k) for k in ("epoch", "batch", "cost", "tags", "error_details") if k in context}
    extra = context.pop("context", None) or {}
    return NotificationEvent(
        event_type,
        title,
        message,
        level=NotificationLevel.INFO if level is None else level,
        model_name=model_name,
        run_id=run_id,
        metrics=_usable_metrics(metrics),
        context={**extra, **context},
        **fields,
    )


def _event(
    event_type: EventType,
    title: str,
    message: str,
    *,
    level: NotificationLevel | None = None,
    **fields: Any,
) -> NotificationEvent:
    fields["context"] = {k: v for k, v in (fields.get("context") or {}).items() if v is not None}
    fields["metrics"] = _usable_metrics(fields.get("metrics"))
    return NotificationEvent(event_type, title, message, level=level or event_type.default_level, **fields)


# -- one builder per convenience method of the manager ---------------------------------------


def training_started(
    model_name: str, run_id: str, epochs: int | None = None, batch_size: int | None = None
) -> NotificationEvent:
    plan = []
    if epochs is not None:
        plan.append(f"{epochs} epochs")
    if batch_size is not None:
        plan.append(f"batch size {batch_size}")
    message = f"Run {run_id} started" + (f": {', '.join(plan)}." if plan else ".")
    return _event(
        EventType.TRAINING_STARTED,
        f"Training started: {model_name}",
        message,
        model_name=model_name,
        run_id=run_id,
        context={"epochs": epochs, "batch_size": batch_size},
    )


def training_completed(
    model_name: str,
    run_id: str,
    duration: float,
    final_loss: float | None = None,
    eval_metrics: Mapping[str, Any] | None = None,
) -> NotificationEvent:
    message = f"Run {run_id} finished in {format_duration(duration)}"
    if final_loss is not None:
        message += f", final loss {format_number(final_loss)}"
    return _event(
        EventType.TRAINING_COMPLETED,
        f"Training completed: {model_name}",
        message + ".",
        model_name=model_name,
        run_id=run_id,
        metrics=eval_metrics or {},
        context={"duration": float(duration), "final_loss": final_loss},
    )


def training_failed(model_name: str, run_id: str, error: BaseException | str) -> NotificationEvent:
    """``error`` may be text or the exception itself (its traceback is kept, trimmed)."""
    details, context = _error_context(error)
    return _event(
        EventType.TRAINING_FAILED,
        f"Training failed: {model_name}",
        f"Run {run_id} failed: {details}",
        model_name=model_name,
        run_id=run_id,
        error_details=details,
        context=context,
    )


def training_paused(model_name: str, run_id: str, reason: str | None = None) -> NotificationEvent:
    return _event(
        EventType.TRAINING_PAUSED,
        f"Training paused: {model_name}",
        f"Run {run_id} paused" + (f": {reason}" if reason else "."),
        model_name=model_name,
        run_id=run_id,
    )


def training_resumed(model_name: str, run_id: str, checkpoint_path: str | None = None) -> NotificationEvent:
    message = f"Run {run_id} resumed" + (f" from {checkpoint_path}." if checkpoint_path else ".")
    return _event(
        EventType.TRAINING_RESUMED,
        f"Training resumed: {model_name}",
        message,
        model_name=model_name,
        run_id=run_id,
        context={"checkpoint_path": checkpoint_path},
    )


STACK_FRAMES = 15  # innermost frames of a stalled thread's stack kept in the event


def _library_paths() -> tuple[str, ...]:
    """Where the standard library, installed packages and afs-core live: not the user's code."""
    import sysconfig

    found = sysconfig.get_paths()
    paths = {found[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if found.get(key)}
    paths.add(os.path.dirname(os.path.abspath(__file__)))  # afs_core itself
    return tuple(os.path.join(path, "") for path in sorted(paths))


def _is_user_frame(filename: str, libraries: tuple[str, ...]) -> bool:
    if filename.startswith("<frozen") or "site-packages" in filename or "dist-packages" in filename:
        return False
    return not filename.startswith(libraries)


def _called(line: str | None) -> str | None:
    """What a line of source calls first (``time.sleep`` in ``time.sleep(5)``), if anything."""
    import keyword
    import re

    for match in re.finditer(r"([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\(", line or ""):
        name = "".join(match[1].split())
        if not keyword.iskeyword(name):
            return name
    return None


def _where(frames: Sequence[FrameSummary]) -> str | None:
    """Where a stack stands, named by its innermost frame in the user's own code (not the
    standard library nor an installed package): ``time.sleep (train.py:42, in wait_for_batch)``."""
    if not frames:
        return None
    libraries = _library_paths()
    frame = next((f for f in reversed(frames) if _is_user_frame(str(f.filename), libraries)), frames[-1])
    place = f"{str(frame.filename).replace(chr(92), '/').rsplit('/', 1)[-1]}:{frame.lineno}"
    call = _called(frame.line)
    return f"{call} ({place}, in {frame.name})" if call else f"{frame.name} ({place})"


def _stack_text(frames: Sequence[FrameSummary]) -> str:
    """The innermost :data:`STACK_FRAMES` frames as a traceback reads (innermost last)."""
    import traceback

    kept = list(frames)[-STACK_FRAMES:]
    left_out = len(frames) - len(kept)
    head = "Stack of the main thread (most recent call last" + (f"; {left_out} outer frames left out):" if left_out
                                                                 else "):")
    return trim_traceback(head + "\n" + "".join(traceback.format_list(kept)))


def training_stalled(
    model_name: str | None,
    run_id: str | None,
    silent_for: float,
    stack: Sequence[FrameSummary] | str | None = None,
    last_progress: datetime.datetime | str | None = None,
) -> NotificationEvent:
    """A run that made no progress for ``silent_for`` seconds. ``stack``: where its main
    thread is (``traceback.extract_stack`` frames, innermost last, or text already
    formatted); ``last_progress``: when progress was last seen."""
    if isinstance(last_progress, datetime.datetime):
        last_progress = last_progress.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = None
    if isinstance(stack, str):
        text: str | None = trim_traceback(stack) if stack.strip() else None
    elif stack:
        text, where = _stack_text(stack), _where(stack)
    else:
        text = None
    said = f"no progress for {format_duration(silent_for)}" + (f"; the main thread is in {where}" if where else "")
    return _event(
        EventType.TRAINING_STALLED,
        "Training stalled" + (f": {model_name}" if model_name else ""),
        (f"Run {run_id}: {said}" if run_id else said[0].upper() + said[1:]) + ".",
        model_name=model_name,
        run_id=run_id,
        context={"silent_for": float(silent_for), "last_progress": last_progress, "traceback": text},
    )


def training_progress_resumed(model_name: str | None, run_id: str | None, stalled_for: float) -> NotificationEvent:
    """A run that had stalled makes progress again, after ``stalled_for`` seconds without any."""
    after = f"made progress again after {format_duration(stalled_for)} without any"
    return _event(
        EventType.TRAINING_PROGRESS_RESUMED,
        "Training progressing again" + (f": {model_name}" if model_name else ""),
        (f"Run {run_id} {after}" if run_id else f"Training {after}") + ".",
        model_name=model_name,
        run_id=run_id,
        context={"stalled_for": float(stalled_for)},
    )


def checkpoint_saved(
    model_name: str,
    run_id: str,
    checkpoint_path: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
) -> NotificationEvent:
    where = f" to {checkpoint_path}" if checkpoint_path else ""
    return _event(
        EventType.CHECKPOINT_SAVED,
        f"Checkpoint saved: {model_name}",
        f"Run {run_id} saved a checkpoint{where}.",
        model_name=model_name,
        run_id=run_id,
        epoch=epoch,
        context={"checkpoint_path": checkpoint_path, "step": step},
    )


def checkpoint_loading(model_name: str, run_id: str, checkpoint_path: str | None = None) -> NotificationEvent:
    where = f" from {checkpoint_path}" if checkpoint_path else ""
    return _event(
        EventType.CHECKPOINT_LOADING,
        f"Loading checkpoint: {model_name}",
        f"Run {run_id} is loading a checkpoint{where}.",
        model_name=model_name,
        run_id=run_id,
        context={"checkpoint_path": checkpoint_path},
    )


def evaluation_started(model_name: str, run_id: str) -> NotificationEvent:
    return _event(
        EventType.EVALUATION_STARTED,
        f"Evaluation started: {model_name}",
        f"Run {run_id} started evaluation.",
        model_name=model_name,
        run_id=run_id,
    )


def evaluation_completed(model_name: str, run_id: str, metrics: Mapping[str, Any]) -> NotificationEvent:
    return _event(
        EventType.EVALUATION_COMPLETED,
        f"Evaluation completed: {model_name}",
        f"Run {run_id} finished evaluation.",
        model_name=model_name,
        run_id=run_id,
        metrics=metrics,
    )


def evaluation_failed(model_name: str, run_id: str, error: BaseException | str) -> NotificationEvent:
    details, context = _error_context(error)
    return _event(
        EventType.EVALUATION_FAILED,
        f"Evaluation failed: {model_name}",
        f"Run {run_id} evaluation failed: {details}",
        model_name=model_name,
        run_id=run_id,
        error_details=details,
        context=context,
    )


def epoch_completed(
    model_name: str,
    run_id: str,
    epoch: int,
    metrics: Mapping[str, Any] | None = None,
    total_epochs: int | None = None,
) -> NotificationEvent:
    of = f"/{total_epochs}" if total_epochs else ""
    return _event(
        EventType.EPOCH_COMPLETED,
        f"Epoch {epoch}{of} completed: {model_name}",
        f"Run {run_id} completed epoch {epoch}{of}.",
        model_name=model_name,
        run_id=run_id,
        epoch=epoch,
        metrics=metrics or {},
        context={"total_epochs": total_epochs},
    )


def batch_processed(
    model_name: str,
    run_id: str,
    batch: int,
    metrics: Mapping[str, Any] | None = None,
    epoch: int | None = None,
) -> NotificationEvent:
    return _event(
        EventType.BATCH_PROCESSED,
        f"Batch {batch} processed: {model_name}",
        f"Run {run_id} processed batch {batch}.",
        model_name=model_name,
        run_id=run_id,
        batch=batch,
        epoch=epoch,
        metrics=metrics or {},
    )


def _loss_change(
    event_type: EventType,
    verb: str,
    model_name: str,
    run_id: str,
    loss: float,
    previous_loss: float | None,
    step: int | None,
) -> NotificationEvent:
    message = f"Run {run_id}: loss {verb} to {format_number(loss)}"
    if previous_loss is not None:
        message += f" (was {format_number(previous_loss)})"
    return _event(
        event_type,
        f"Loss {verb}: {model_name}",
        message + (f" at step {step}." if step is not None else "."),
        model_name=model_name,
        run_id=run_id,
        metrics={"loss": loss},
        context={"previous_loss": previous_loss, "step": step},
    )


def loss_improved(
    model_name: str,
    run_id: str,
    loss: float,
    previous_loss: float | None = None,
    step: int | None = None,
) -> NotificationEvent:
    return _loss_change(EventType.LOSS_IMPROVED, "improved", model_name, run_id, loss, previous_loss, step)


def loss_degraded(
    model_name: str,
    run_id: str,
    loss: float,
    previous_loss: float | None = None,
    step: int | None = None,
) -> NotificationEvent:
    return _loss_change(EventType.LOSS_DEGRADED, "degraded", model_name, run_id, loss, previous_loss, step)


def cost_alert(
    current_cost: float,
    threshold: float,
    model_name: str | None = None,
    run_id: str | None = None,
) -> NotificationEvent:
    return _event(
        EventType.COST_THRESHOLD_EXCEEDED,
        "Cost threshold exceeded" + (f": {model_name}" if model_name else ""),
        f"Cost reached {format_cost(current_cost)}, over the {format_cost(threshold)} threshold.",
        model_name=model_name,
        run_id=run_id,
        cost=current_cost,
        context={"threshold": float(threshold)},
    )


def gpu_memory_warning(
    memory_used: float,
    threshold: float | None = None,
    gpu: int | str | None = None,
    model_name: str | None = None,
    run_id: str | None = None,
) -> NotificationEvent:
    """``memory_used`` and ``threshold`` are fractions of the GPU's memory (0.95 = 95 %)."""
    return _gpu_alert(
        EventType.GPU_MEMORY_WARNING,
        "memory high",
        "memory is {:.0%} used",
        "gpu_memory_used",
        memory_used,
        threshold,
        gpu,
        model_name,
        run_id,
    )


def gpu_utilization_low(
    utilization: float,
    threshold: float | None = None,
    gpu: int | str | None = None,
    model_name: str | None = None,
    run_id: str | None = None,
) -> NotificationEvent:
    """``utilization`` and ``threshold`` are fractions (0.05 = 5 %)."""
    return _gpu_alert(
        EventType.GPU_UTILIZATION_LOW,
        "utilization low",
        "utilization is {:.0%}",
        "gpu_utilization",
        utilization,
        threshold,
        gpu,
        model_name,
        run_id,
    )


def _gpu_alert(
    event_type: EventType,
    title: str,
    sentence: str,
    metric: str,
    value: float,
    threshold: float | None,
    gpu: int | str | None,
    model_name: str | None,
    run_id: str | None,
) -> NotificationEvent:
    which = f"GPU {gpu}" if gpu is not None else "GPU"
    limit = f" (threshold {threshold:.0%})" if threshold is not None else ""
    return _event(
        event_type,
        f"{which} {title}" + (f": {model_name}" if model_name else ""),
        f"{which} {sentence.format(value)}{limit}.",
        model_name=model_name,
        run_id=run_id,
        metrics={metric: value},
        context={"gpu": gpu, "threshold": None if threshold is None else f"{threshold:.0%}"},
    )


def disk_space_warning(
    path: str,
    usage: float,
    threshold: float | None = None,
    free_bytes: int | None = None,
    model_name: str | None = None,
    run_id: str | None = None,
) -> NotificationEvent:
    """``usage`` and ``threshold`` are fractions of the disk (0.9 = 90 % used)."""
    free = f", {free_bytes / 2**30:.1f} GiB free" if free_bytes is not None else ""
    return _event(
        EventType.DISK_SPACE_WARNING,
        "Disk space low" + (f": {model_name}" if model_name else ""),
        f"{path} is {usage:.0%} full{free}.",
        model_name=model_name,
        run_id=run_id,
        metrics={"disk_used": usage},
        context={"path": str(path), "threshold": None if threshold is None else f"{threshold:.0%}"},
    )


def out_of_memory(
    model_name: str, run_id: str, error: BaseException | str | None = None, *, memory: str | None = None
) -> NotificationEvent:
    """``memory``: what the allocator said, e.g. "Tried to allocate 2.00 GiB"."""
    details, context = _error_context(error)
    if memory:
        context["memory"] = memory
    return _event(
        EventType.OUT_OF_MEMORY,
        f"Out of memory: {model_name}",
        f"Run {run_id} ran out of memory" + (f": {details}" if details else "."),
        model_name=model_name,
        run_id=run_id,
        error_details=details,
        context=context,
    )


def nan_detected(model_name: str, run_id: str, metric: str = "loss", step: int | None = None) -> NotificationEvent:
    at = f" at step {step}" if step is not None else ""
    return _event(
        EventType.NAN_DETECTED,
        f"NaN detected: {model_name}",
        f"Run {run_id}: {metric} became NaN or infinite{at}.",
        model_name=model_name,
        run_id=run_id,
        context={"metric": metric, "step": step},
    )


def error(
    error: BaseException | str,
    model_name: str | None = None,
    run_id: str | None = None,
) -> NotificationEvent:
    details, context = _error_context(error)
    return _event(
        EventType.ERROR_OCCURRED,
        "Error" + (f": {_run_label(model_name, run_id)}" if (model_name or run_id) else ""),
        details or "",
        model_name=model_name,
        run_id=run_id,
        error_details=details,
        context=context,
    )


def gpu_recovered(
    kind: str, value: float, gpu: int | str | None = None, model_name: str | None = None, run_id: str | None = None
) -> NotificationEvent:
    """A GPU alert that cleared: ``kind`` "memory" (now ``value`` used) or
    "utilization" (busy again at ``value``)."""
    which = f"GPU {gpu}" if gpu is not None else "GPU"
    if kind == "memory":
        event_type, title = EventType.GPU_MEMORY_WARNING, f"{which} memory back to {value:.0%}"
    elif kind == "utilization":
        event_type, title = EventType.GPU_UTILIZATION_LOW, f"{which} busy again at {value:.0%}"
    else:
        raise ValueError(f"kind must be 'memory' or 'utilization', got {kind!r}")
    return _event(
        event_type,
        title,
        f"{title}.",
        level=NotificationLevel.SUCCESS,
        model_name=model_name,
        run_id=run_id,
        context={"gpu": gpu, "recovered": True},
    )


def command_started(model_name: str, run_id: str, command: Sequence[str]) -> NotificationEvent:
    """``afs run`` started a training command."""
    line = " ".join(command)
    return _event(
        EventType.TRAINING_STARTED,
        f"Training started: {model_name}",
        f"Run {run_id} started: {line}",
        level=NotificationLevel.INFO,
        model_name=model_name,
        run_id=run_id,
        context={"command": line},
    )


def command_failed(
    model_name: str,
    run_id: str,
    explanation: str,
    *,
    exit_code: int | None = None,
    signal: str | None = None,
    duration: float | None = None,
    tail: Sequence[str] = (),
) -> NotificationEvent:
    """A command under ``afs run`` ended badly: ``explanation`` ("exited with code 1",
    "was killed by SIGKILL"), and the last lines it printed, shown as code."""
    return _event(
        EventType.TRAINING_FAILED,
        f"Training failed: {model_name}",
        f"Run {run_id} {explanation}.",
        model_name=model_name,
        run_id=run_id,
        error_details=explanation,
        context={"exit_code": exit_code, "signal": signal, "duration": duration, "traceback": "\n".join(tail) or None},
    )


def command_stalled(model_name: str, run_id: str, silent_for: float, *, tail: Sequence[str] = ()) -> NotificationEvent:
    """A command under ``afs run --stall-after`` printed nothing and reported no progress
    for ``silent_for`` seconds; ``tail``: the last lines it printed, shown as code."""
    return _event(
        EventType.TRAINING_STALLED,
        f"Training stalled: {model_name}",
        f"Run {run_id}: the command printed nothing and reported no progress for {format_duration(silent_for)}"
        + ("; its last lines are below." if tail else "; it has printed nothing yet."),
        model_name=model_name,
        run_id=run_id,
        context={"silent_for": float(silent_for), "traceback": "\n".join(tail) or None},
    )
