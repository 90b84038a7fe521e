"""Hugging Face Trainer with a tiny model, no downloads."""

import os
import subprocess
import sys

import torch
from transformers import Trainer, TrainingArguments

from afs_core.integrations.transformers import AFSCallback


class Tiny(torch.nn.Module):
    def __init__(self, nan_at=None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, x, labels=None):
        self.calls += 1
        out = self.linear(x).squeeze(-1)
        loss = torch.nn.functional.mse_loss(out, labels)
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "logits": out}


def data(n=16):
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    return [{"x": x[i], "labels": x[i].sum()} for i in range(n)]


def trainer(tmp_path, model, callback, epochs=2):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=epochs, per_device_train_batch_size=4,
                             logging_steps=1, save_strategy="epoch", eval_strategy="epoch", report_to=[],
                             use_cpu=True, learning_rate=0.05, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data(), eval_dataset=data(8), callbacks=[callback])


def test_a_successful_run(events, tmp_path):
    callback = AFSCallback(events.manager, model_name="tiny", run_id="hf-1")
    trainer(tmp_path, Tiny(), callback).train()
    types = events.types
    assert types[0] == "training_started" and types[-1] == "training_completed"
    assert types.count("epoch_completed") == 2 and types.count("evaluation_completed") == 2
    assert types.count("checkpoint_saved") == 2
    checkpoint = next(e for e in events.events if e.event_type.value == "checkpoint_saved")
    assert os.path.isdir(checkpoint.context["checkpoint_path"])  # reported once it exists
    done = events.events[-1]
    assert done.context["final_loss"] is not None and "eval_loss" in done.metrics
    assert "nan_detected" not in types


def test_a_nan_loss_is_caught_despite_the_logging_filter(events, tmp_path):
    callback = AFSCallback(events.manager, model_name="tiny", run_id="hf-nan")
    trainer(tmp_path, Tiny(nan_at=3), callback, epochs=1).train()
    types = events.types
    assert types.count("nan_detected") == 1
    assert types[-1] == "training_failed" and "training_completed" not in types


CRASH = """
import os, sys
sys.path.insert(0, {here!r})
from test_transformers import Tiny, trainer
from pathlib import Path
from afs_core import NotificationManager
from afs_core.delivery.store import Store
from afs_core.testing import RecordingChannel
from afs_core.integrations.transformers import AFSCallback

class Boom(Tiny):
    def forward(self, x, labels=None):
        if self.calls >= 2:
            raise ValueError("shape mismatch in step 3")
        return super().forward(x, labels)

manager = NotificationManager(store=Store(os.environ["DB"]))
manager.register_handler("r", RecordingChannel())
trainer(Path(os.environ["OUT"]), Boom(), AFSCallback(manager, model_name="tiny", run_id="hf-crash")).train()
"""


def test_an_exception_escaping_train_is_reported(tmp_path):
    from afs_core.delivery.store import Store

    script = tmp_path / "crash.py"
    script.write_text(CRASH.format(here=os.path.dirname(__file__)))
    db = tmp_path / "afs.db"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DB": str(db), "OUT": str(tmp_path), "AFS_LOAD_PLUGINS": ""})
    assert done.returncode != 0 and "shape mismatch" in done.stderr
    history = [e.event_type for e in reversed(Store(db).history(run_id="hf-crash"))]
    assert history[0] == "training_started" and history[-1] == "training_failed"
