"""Two real processes move production at the same moment: the moves serialize, nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from registry_helpers import checksum_of, write_report

from tuneforge.registry import Registry

# Each worker loads the registry (and mlflow) first, says it is ready, then waits for the shared
# start signal so both promotions hit the registry together.
WORKER = """
import sys, time
from pathlib import Path
from tuneforge.registry import Registry
from tuneforge.workspace import Workspace
ws, version, ready, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
reg = Registry(Workspace(Path(ws)))
reg.aliases("support")
ready.touch()
deadline = time.time() + 120
while not go.exists():
    if time.time() > deadline:
        sys.exit("no start signal")
    time.sleep(0.005)
entry = reg.promote("support", version, "production", reason=f"worker {version}")
print(entry.id if entry else "none")
"""


def test_two_processes_promoting_at_once_leave_a_consistent_state(registry: Registry, adapters,
                                                                  tmp_path: Path) -> None:
    for i, a in enumerate(adapters, start=1):
        registry.register(a, "support", eval_report=write_report(tmp_path / f"e{i}.json", checksum_of(a)))
    go = tmp_path / "go"
    env = {**os.environ, "TUNEFORGE_HOME": str(registry.workspace.root)}
    procs = []
    for version in (1, 2):
        ready = tmp_path / f"ready-{version}"
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", WORKER, str(registry.workspace.root), str(version), str(ready), str(go)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.time() + 180
    while not all(ready.exists() for ready, _ in procs):
        assert time.time() < deadline and all(p.poll() is None for _, p in procs), \
            [p.communicate() for _, p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    for _, p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err

    moves = registry.history("support", alias="production")
    assert len(moves) == 2
    first, second = moves
    assert {first.to_version, second.to_version} == {1, 2}
    # The chain is consistent: the second move starts where the first ended (no lost update).
    assert first.from_version is None and second.from_version == first.to_version
    assert registry.aliases("support")["production"] == second.to_version
    assert {first.reason, second.reason} == {"worker 1", "worker 2"}
    assert registry.verify_history() == []
