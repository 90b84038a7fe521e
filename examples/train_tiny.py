"""A tiny, real training loop that reports what it does through AFS notifications.

Fits y = 3x + 2 by gradient descent in pure Python, so it runs anywhere in a
second. With nothing configured, events appear on the console (stderr); put
SLACK_WEBHOOK_URL=... in a .env file and the same events go to Slack too.

    python examples/train_tiny.py --epochs 5
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

from afs_core import NotificationManager


def make_data(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(x, 3.0 * x + 2.0 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(n))]


def mse(w: float, b: float, data: list[tuple[float, float]]) -> float:
    try:
        return sum((w * x + b - y) ** 2 for x, y in data) / len(data)
    except OverflowError:  # a diverging run: report it like a framework's inf loss
        return math.inf


def train(args: argparse.Namespace, manager: NotificationManager) -> float:
    data = make_data(512, seed=0)
    train_set, eval_set = data[:448], data[448:]
    w = b = 0.0
    best = math.inf
    started = time.monotonic()
    manager.notify_training_started(args.model, args.run_id, epochs=args.epochs, batch_size=args.batch_size)
    for epoch in range(1, args.epochs + 1):
        for start in range(0, len(train_set), args.batch_size):
            batch = train_set[start : start + args.batch_size]
            grad_w = sum(2 * (w * x + b - y) * x for x, y in batch) / len(batch)
            grad_b = sum(2 * (w * x + b - y) for x, y in batch) / len(batch)
            w -= args.lr * grad_w
            b -= args.lr * grad_b
        loss = mse(w, b, train_set)
        if not math.isfinite(loss):
            manager.notify_nan_detected(args.model, args.run_id, step=epoch)
            raise FloatingPointError(f"loss became {loss} at epoch {epoch}; try a smaller --lr")
        manager.notify_epoch_completed(
            args.model, args.run_id, epoch, metrics={"loss": loss}, total_epochs=args.epochs
        )
        if loss < best:
            if math.isfinite(best):
                manager.notify_loss_improved(args.model, args.run_id, loss, previous_loss=best, step=epoch)
            best = loss
            checkpoint = Path(args.checkpoint_dir) / f"epoch-{epoch}.txt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(f"w={w!r}\nb={b!r}\n")
            manager.notify_checkpoint_saved(args.model, args.run_id, str(checkpoint), epoch=epoch)
    manager.notify_evaluation_completed(
        args.model, args.run_id, {"eval_mse": mse(w, b, eval_set), "w": w, "b": b}
    )
    manager.notify_training_completed(
        args.model, args.run_id, duration=time.monotonic() - started, final_loss=loss
    )
    return loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--model", default="tiny-linear")
    parser.add_argument("--run-id", default=f"tiny-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    args = parser.parse_args(argv)

    manager = NotificationManager.from_env()
    try:
        loss = train(args, manager)
    except Exception as exc:
        manager.notify_training_failed(args.model, args.run_id, exc)
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    print(f"final loss {loss:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
