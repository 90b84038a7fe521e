import pytest

from afs_core import notify_on_completion


def test_a_decorated_function_reports_start_and_completion(events):
    @notify_on_completion(events.manager, model_name="m", run_id="r")
    def train():
        return {"loss": 0.25, "accuracy": 0.9}

    assert train() == {"loss": 0.25, "accuracy": 0.9}
    assert events.types == ["training_started", "training_completed"]
    done = events.events[-1]
    assert done.context["final_loss"] == 0.25 and done.metrics["accuracy"] == 0.9


def test_a_failure_is_reported_and_re_raised(events):
    @notify_on_completion(events.manager, model_name="m", run_id="r")
    def train():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError):
        train()
    assert events.types == ["training_started", "out_of_memory"]
    assert "Traceback" in events.events[-1].context["traceback"]
