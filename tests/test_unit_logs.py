"""The access line's own path (server/logs.py), in a process of its own: setup_logging
replaces loguru's sinks, which the other tests' sinks must keep."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

SCRIPT = """
import asyncio, io, json, os, sys
class Stderr(io.StringIO):
    writes = []
    def write(self, text):
        self.writes.append(text)
        return len(text)
    def isatty(self):
        return False
sys.stderr = Stderr()
from loguru import logger
from server import logs
from server.logs import access, setup_logging
setup_logging(False)

async def turn():
    access("a1 {}", 1)
    access("a2")
    held = len(Stderr.writes)
    logger.warning("w")
    access("a3")
    after_warning = len(Stderr.writes)
    await asyncio.sleep(0.01)
    access("a4")  # left pending when the process forks
    pid = os.fork()
    if pid == 0:  # what the child would write at its first flush
        logs._plain.flush()
        os._exit(0 if Stderr.writes[3:] == [] else 3)
    return held, after_warning, os.waitpid(pid, 0)[1]

held, after_warning, child = asyncio.run(turn())
print(json.dumps({"held": held, "after": after_warning, "child": child, "writes": Stderr.writes}))
"""


def test_access_lines_leave_once_per_loop_turn_in_order_and_not_twice_after_a_fork():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    got = json.loads(run.stdout)
    writes = got["writes"]
    assert got["held"] == 0  # nothing written yet in the turn
    assert got["after"] == 2  # the warning sent the two lines before it first, in one write
    assert [w.count("\n") for w in writes] == [2, 1, 1, 1], writes
    assert " a1 1\n" in writes[0] and writes[0].endswith(" a2\n") and "WARNING" in writes[1]
    assert writes[2].endswith(" a3\n") and writes[3].endswith(" a4\n")
    assert got["child"] == 0  # the forked child did not write the parent's pending line
    assert all(" INFO    " in w or "WARNING" in w for w in writes)
