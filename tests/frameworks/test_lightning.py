"""Lightning on the CPU with a tiny module."""

import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from afs_core.integrations.lightning import AFSCallback


class Tiny(L.LightningModule):
    def __init__(self, fail_at=None, nan_at=None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.fail_at, self.nan_at = fail_at, nan_at

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step >= self.fail_at:
            raise ValueError("bad batch")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader():
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(-1)), batch_size=4)


def fit(tmp_path, module, callback, epochs=2):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=str(tmp_path),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, loader(), loader())
    return trainer


def test_a_successful_run(events, tmp_path):
    fit(tmp_path, Tiny(), AFSCallback(events.manager, model_name="tiny", run_id="pl-1"))
    types = events.types
    assert types[0] == "training_started" and types[-1] == "training_completed"
    assert types.count("epoch_completed") == 2 and types.count("evaluation_completed") == 2
    saved = [e for e in events.events if e.event_type.value == "checkpoint_saved"]
    # Reported once the file existed; Lightning keeps only the latest, so that one is still there.
    assert saved and os.path.exists(saved[-1].context["checkpoint_path"])
    assert len({e.context["checkpoint_path"] for e in saved}) == len(saved)
    assert "val_loss" in events.events[-1].metrics


def test_a_failure_is_reported_from_the_exception_hook(events, tmp_path):
    with pytest.raises(ValueError):
        fit(tmp_path, Tiny(fail_at=2), AFSCallback(events.manager, model_name="tiny", run_id="pl-2"))
    assert events.types[0] == "training_started" and events.types[-1] == "training_failed"
    assert "bad batch" in events.events[-1].error_details


def test_a_nan_loss_is_reported_once_and_the_run_is_not_called_completed(events, tmp_path):
    fit(tmp_path, Tiny(nan_at=3), AFSCallback(events.manager, model_name="tiny", run_id="pl-nan"))
    assert events.types.count("nan_detected") == 1
    assert events.types[-1] == "training_failed"


DDP = """
import os, sys
sys.path.insert(0, {here!r})
import lightning as L
from test_lightning import Tiny, loader
from afs_core import NotificationManager
from afs_core.delivery.store import Store
from afs_core.testing import RecordingChannel
from afs_core.integrations.lightning import AFSCallback

manager = NotificationManager(store=Store(os.environ["DB"]))
manager.register_handler("r", RecordingChannel())
trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    default_root_dir=os.environ["OUT"], enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[AFSCallback(manager, model_name="tiny", run_id="pl-ddp")])
trainer.fit(Tiny(), loader(), loader())
manager.close(timeout=10)
"""


def test_two_processes_only_rank_zero_sends(tmp_path):
    from afs_core.delivery.store import Store

    script = tmp_path / "ddp.py"
    script.write_text(DDP.format(here=os.path.dirname(__file__)))
    db = tmp_path / "afs.db"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DB": str(db), "OUT": str(tmp_path), "AFS_LOAD_PLUGINS": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    types = [e.event_type for e in reversed(Store(db).history(run_id="pl-ddp", limit=100))]
    assert types.count("training_started") == 1 and types.count("training_completed") == 1
    assert types.count("epoch_completed") == 1
