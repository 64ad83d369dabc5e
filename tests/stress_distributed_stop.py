"""Not a CI test: stop a 2-process x 4-device run 5 times in different ways and check that nothing hangs.

    python tests/stress_distributed_stop.py

Each round: SIGINT (or SIGTERM) to process 1, process 0, or both at once, once training logged its
second step; both must exit 130 within 30 s with exactly one checkpoint. Prints one line per round.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_distributed import launch_with_flags  # noqa: E402
from test_training import write_copy_task, write_tiny_model, write_tokenizer  # noqa: E402

ROUNDS = [("SIGINT", [1]), ("SIGINT", [0]), ("SIGINT", [0, 1]), ("SIGTERM", [1]), ("SIGINT", [1])]


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="stop-stress-"))
    task = {"tokenizer": write_tokenizer(root / "tokenizer"), "model": write_tiny_model(root / "model"),
            "train": write_copy_task(root / "train.jsonl", 200, seed=0), "root": root}
    failures = 0
    for number, (name, targets) in enumerate(ROUNDS, 1):
        out = root / f"round{number}"
        run = launch_with_flags(task, out)
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
            time.sleep(0.02)
        sent = time.monotonic()
        for target in targets:
            os.kill(run.procs[target].pid, getattr(signal, name))
        try:
            codes = run.wait(30)
        except AssertionError:
            codes = ["hung"]
        took = time.monotonic() - sent
        steps = sorted(os.listdir(out / "checkpoints")) if (out / "checkpoints").is_dir() else []
        ok = codes == [130, 130] and len(steps) == 1
        failures += not ok
        print(f"round {number}: {name} to process {'+'.join(map(str, targets))}: exit codes {codes} after "
              f"{took:.1f} s, checkpoints {steps} -> {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            print(run.output()[-3000:])
    print(f"{len(ROUNDS) - failures}/{len(ROUNDS)} rounds ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
