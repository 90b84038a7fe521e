"""Keras 3 on the torch backend with a tiny model."""

import os
import subprocess
import sys

import keras
import numpy as np

from afs_core.integrations.keras import AFSCallback


def model():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return net


def data(nan=False):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(-1, keepdims=True)
    if nan:
        x[5:] = np.nan
    return x, y


def test_a_successful_run(events):
    x, y = data()
    model().fit(x, y, epochs=2, batch_size=8, validation_split=0.25, verbose=0,
                callbacks=[AFSCallback(events.manager, model_name="tiny", run_id="k-1")])
    types = events.types
    assert types[0] == "training_started" and types[-1] == "training_completed"
    assert types.count("epoch_completed") == 2 and types.count("evaluation_completed") == 2
    assert "val_loss" in events.events[-1].metrics


def test_terminate_on_nan_ending_normally_is_still_a_failure(events):
    x, y = data(nan=True)
    model().fit(x, y, epochs=3, batch_size=8, verbose=0,
                callbacks=[keras.callbacks.TerminateOnNaN(), AFSCallback(events.manager, model_name="tiny", run_id="k-nan")])
    types = events.types
    assert types.count("nan_detected") == 1
    assert types[-1] == "training_failed" and "training_completed" not in types


CHILD_FIT = """
import os, signal
os.environ["KERAS_BACKEND"] = "torch"
import keras, numpy as np
from afs_core import NotificationManager
from afs_core.delivery.store import Store
from afs_core.testing import RecordingChannel
from afs_core.integrations.keras import AFSCallback

class Trouble(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            {trouble}

manager = NotificationManager(store=Store(os.environ["DB"]))
manager.register_handler("r", RecordingChannel())
net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
net.compile(optimizer="sgd", loss="mse")
x = np.zeros((32, 4), "float32")
net.fit(x, x[:, :1], epochs=1, batch_size=4, verbose=0,
        callbacks=[AFSCallback(manager, model_name="tiny", run_id="{run_id}"), Trouble()])
"""


def fit_in_a_child(tmp_path, trouble, run_id):
    """A tiny fit in its own process, in trouble at batch 2; its exit and the stored events."""
    from afs_core.delivery.store import Store

    script = tmp_path / "child.py"
    script.write_text(CHILD_FIT.format(trouble=trouble, run_id=run_id))
    db = tmp_path / "afs.db"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DB": str(db), "AFS_LOAD_PLUGINS": ""})
    return done, [e.event_type for e in reversed(Store(db).history(run_id=run_id))]


def test_an_exception_escaping_fit_is_reported(tmp_path):
    done, types = fit_in_a_child(tmp_path, 'raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")', "k-crash")
    assert done.returncode != 0
    assert types == ["training_started", "out_of_memory"]


def test_a_sigterm_is_reported_as_paused_and_still_ends_the_process(tmp_path):
    import signal

    # What a scheduler does before it takes the machine away.
    done, types = fit_in_a_child(tmp_path, "os.kill(os.getpid(), signal.SIGTERM)", "k-term")
    assert done.returncode == -signal.SIGTERM
    assert types == ["training_started", "training_paused"]
