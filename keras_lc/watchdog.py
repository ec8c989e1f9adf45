"""The progress watchdog process of `keras_lc.distribute.ProgressWatchdog` (run by its path).

    python keras_lc/watchdog.py PARENT_PID TIMEOUT_S WHAT

Reads bytes from stdin (the trainer sends one after every batch); with none for TIMEOUT_S seconds it
prints what happened and kills the parent. It exits when the trainer closes the pipe. Only the
standard library: it must start fast and import nothing heavy.
"""

import os
import select
import signal
import sys


def main(argv=None):
    parent, timeout, what = argv or sys.argv[1:4]
    parent, timeout = int(parent), float(timeout)
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            sys.stderr.write(f"\nkeras-lc: {what} made no progress for {timeout:g} s: a worker is missing, died or "
                             "cannot be reached (check TF_CONFIG and the other workers' logs). Stopping.\n")
            sys.stderr.flush()
            os.kill(parent, signal.SIGKILL)
            return 3
        if not os.read(fd, 4096):  # the trainer closed the pipe: it finished or exited
            return 0


if __name__ == "__main__":
    sys.exit(main())
