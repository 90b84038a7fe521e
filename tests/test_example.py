"""The README's main job: the example training script, run as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_tiny.py"


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_")}
    env["AFS_LOAD_PLUGINS"] = ""  # the console channel alone, whatever else is installed
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--checkpoint-dir", "ckpt", "--run-id", "r1", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_example_trains_and_reports_to_the_console():
    done = run("--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("final loss ")
    for line in ("INFO Training started: tiny-linear", "Epoch 3/3 completed", "Checkpoint saved",
                 "SUCCESS Evaluation completed", "SUCCESS Training completed: tiny-linear"):
        assert line in done.stderr
    assert sorted(p.name for p in Path("ckpt").iterdir())[0] == "epoch-1.txt"


def test_example_reports_a_diverging_run_as_failed():
    done = run("--epochs", "20", "--lr", "50")
    assert done.returncode == 1
    assert "ERROR NaN detected: tiny-linear" in done.stderr
    assert "ERROR Training failed: tiny-linear" in done.stderr
    assert "FloatingPointError: loss became inf" in done.stderr
    assert "Traceback" in done.stderr
