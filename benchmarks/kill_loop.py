"""Random-kill loop: `kill -9` a training run at random moments, resume it, and check nothing is lost.

Each round starts a small `keras-lc train` (tiny backbone, synthetic scenes) in a fresh folder, kills it
with SIGKILL after a random delay (again and again, up to --kills times per round, each time resuming
with the same command), then lets the last resume finish. A round passes when the finishing run exits 0,
`model.keras` and `best.keras` load, and the history has every epoch of both phases exactly once.
Bounded: --rounds rounds, each kill delay drawn from [--min-delay, --max-delay] seconds.

    python benchmarks/kill_loop.py [--rounds 6] [--kills 3] [--min-delay 0.5] [--max-delay 35] [--json OUT]
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["train", "--num-images", "48", "--image-size", "48", "--channels", "16", "--initial-epochs", "3",
         "--cascade-epochs", "2", "--val-images", "16", "--save-every", "2"]


def _run(out, delay=None):
    cmd = [sys.executable, "-m", "keras_lc.cli", *TRAIN, "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if delay is None:
        log, _ = proc.communicate(timeout=900)
        return proc.returncode, log
    try:
        proc.wait(timeout=delay)
        return proc.returncode, proc.stdout.read()  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, ""


def _check(out):
    import keras

    import keras_lc  # noqa: F401 - registers the classes

    problems = []
    for name in ("model.keras", "best.keras"):
        try:
            keras.models.load_model(out / name)
        except Exception as e:  # noqa: BLE001 - any failure to load is what this loop looks for
            problems.append(f"{name}: {type(e).__name__}: {str(e)[:120]}")
    try:
        history = json.loads((out / "history.json").read_text())
        lengths = {phase: len(h.get("loss", [])) for phase, h in history.items()}
        if lengths != {"initial": 3, "cascade": 2}:
            problems.append(f"history epochs {lengths}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"history.json: {type(e).__name__}: {e}")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--min-delay", type=float, default=0.5)
    p.add_argument("--max-delay", type=float, default=35.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    rounds = []
    start = time.time()
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="keras_lc_kill_") as tmp:
            out = Path(tmp) / "run"
            delays, finished_early = [], False
            for _ in range(args.kills):
                delay = rng.uniform(args.min_delay, args.max_delay)
                code, _ = _run(out, delay)
                delays.append(round(delay, 2))
                if code is not None:
                    finished_early = True
                    break
            code, log = _run(out)
            problems = [] if code == 0 else [f"exit {code}: {log.strip().splitlines()[-1:]}"]
            problems += _check(out) if code == 0 else []
            rounds.append({"round": r, "kill_delays_s": delays, "finished_before_a_kill": finished_early,
                           "ok": not problems, "problems": problems})
            print(f"round {r}: kills after {delays} s -> {'ok' if not problems else problems}", flush=True)
    result = {"rounds": rounds, "passed": sum(x["ok"] for x in rounds), "total": len(rounds),
              "kills": sum(len(x["kill_delays_s"]) - x["finished_before_a_kill"] for x in rounds),
              "seconds": round(time.time() - start, 1), "train": TRAIN}
    print(f"{result['passed']}/{result['total']} rounds ok after {result['kills']} kills ({result['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["passed"] == result["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
