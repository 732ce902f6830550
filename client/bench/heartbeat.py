"""The heartbeat program of the cancel benchmarks, run as an ``exec`` task.

``python3 -c <this file's text> PATH``: overwrites PATH about every millisecond with one
fixed-width record, ``pid previous_beat beat`` (ns since the Unix epoch), rewritten in
place (``pwrite`` at offset 0) so a reader never sees a mix of two lengths. The last beat
is when the task's code was last alive; the pid tells when the process is gone, so the
last beat is final. Read by reins-bench (client/src/bench/heartbeat.rs) and blackbox.py.
"""

import os
import sys
import time

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
pid = os.getpid()
previous = now = time.time_ns()
while True:
    os.pwrite(fd, b"%010d %020d %020d\n" % (pid, previous, now), 0)
    time.sleep(0.001)
    previous, now = now, time.time_ns()
