"""Multi-process training: re-run `tuneforge train` under torchrun or accelerate, and rank helpers.

The parent process only builds the launcher command and waits: `tuneforge train --launcher torchrun
--nproc 2 ...` runs torch.distributed.run (or `accelerate launch`) on ``-m tuneforge.cli train ...``
with the same arguments and ``TUNEFORGE_LAUNCHED`` set, so each worker trains instead of launching
again. Inside the workers transformers' Trainer sets up DDP (or FSDP) from the launcher's
environment (RANK, WORLD_SIZE, MASTER_ADDR...); this module only says which rank may write shared
files. Global rank 0 alone writes checkpoints and the adapter, so a multi-node run needs the
workspace (TUNEFORGE_HOME) and --out on a filesystem every node sees.

Raises:
    TrainError: an unknown launcher, a process count below 1, node options without a launcher,
        FSDP without CUDA, the launcher missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.errors import TrainError

if TYPE_CHECKING:
    from tuneforge.config import DistributedConfig

LAUNCHED_ENV = "TUNEFORGE_LAUNCHED"  # set in the workers: never launch again from inside a launch
LAUNCHERS = ("none", "torchrun", "accelerate")


@dataclass(frozen=True)
class LaunchSpec:
    """How to start the workers. ``nproc`` is per node; the world size is nproc * nnodes."""

    launcher: str = "none"
    nproc: int | None = None  # None: one per CUDA device, else 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise TrainError(f"unknown launcher {self.launcher!r}", where="--launcher",
                             fix=f"use one of: {', '.join(LAUNCHERS)}")
        multi = (self.nproc not in (None, 1) or self.nnodes != 1 or self.node_rank != 0
                 or self.master_addr is not None or self.master_port is not None)
        if self.launcher == "none" and multi:
            raise TrainError("--nproc, --nnodes, --node-rank, --master-addr and --master-port need a launcher",
                             where="--launcher (not given)",
                             fix="add --launcher torchrun (or accelerate) to start several processes")
        if self.nproc is not None and self.nproc < 1:
            raise TrainError(f"--nproc must be at least 1 (got {self.nproc})", where="--nproc",
                             fix="pass the number of processes per node, e.g. --nproc 2 (one per GPU on CUDA)")
        if self.nnodes < 1:
            raise TrainError(f"--nnodes must be at least 1 (got {self.nnodes})", where="--nnodes",
                             fix="pass the number of machines taking part")
        if not 0 <= self.node_rank < self.nnodes:
            raise TrainError(f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1}", where="--node-rank",
                             fix="number the machines 0 to nnodes-1; node 0 hosts --master-addr")
        if self.nnodes > 1 and not self.master_addr:
            raise TrainError("a multi-node launch needs the address of node 0", where="--master-addr",
                             fix="pass --master-addr HOST (reachable from every node) and the same --master-port")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise TrainError(f"--master-port {self.master_port} is not a TCP port", where="--master-port",
                             fix="pass a free port between 1024 and 65535")


def launched() -> bool:
    """True inside a worker started by `launch`."""
    return bool(os.environ.get(LAUNCHED_ENV))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Only the global rank 0 writes the adapter, commits checkpoints, reports progress and tracks."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def command(spec: LaunchSpec, argv: list[str]) -> list[str]:
    """The launcher command line that runs ``tuneforge <argv>`` in every worker."""
    nproc = spec.nproc or default_nproc()
    target = ["-m", "tuneforge.cli", *argv]
    if spec.launcher == "torchrun":
        cmd = [sys.executable, "-c", "from tuneforge.train._launch import torchrun_main; torchrun_main()",
               f"--nproc-per-node={nproc}"]
        if spec.nnodes == 1 and spec.master_addr is None and spec.master_port is None:
            cmd.append("--standalone")  # a private rendezvous on a free port: parallel runs never clash
        else:
            cmd += [f"--nnodes={spec.nnodes}", f"--node-rank={spec.node_rank}",
                    f"--master-addr={spec.master_addr or '127.0.0.1'}", f"--master-port={_port(spec)}"]
        return [*cmd, *target]
    if spec.launcher == "accelerate":
        if not _has_module("accelerate"):
            raise TrainError("--launcher accelerate needs the accelerate package", where="--launcher",
                             fix="pip install accelerate, or use --launcher torchrun")
        # --multi_gpu selects accelerate's torch.distributed.run path; on a CPU machine the
        # workers still train on CPU with gloo (train() sets use_cpu), without needing mpirun.
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                f"--num_processes={nproc * spec.nnodes}", f"--num_machines={spec.nnodes}",
                f"--machine_rank={spec.node_rank}", f"--main_process_ip={spec.master_addr or '127.0.0.1'}",
                f"--main_process_port={_port(spec)}", "--dynamo_backend=no",
                "--mixed_precision=no", *target]
    raise AssertionError(f"no command for launcher {spec.launcher}")


def launch(spec: LaunchSpec, argv: list[str]) -> int:
    """Run the workers, their output streaming to ours; return their exit status.

    Ctrl-C: the launcher's agent forwards it once to the workers (each in its own session), which
    checkpoint and stop; this process keeps waiting for them instead of exiting first.
    """
    cmd = command(spec, argv)
    env = {**os.environ, LAUNCHED_ENV: spec.launcher}
    # The agent kills workers that have not stopped this long after forwarding a signal: leave
    # time to write the Ctrl-C checkpoint of a large model (torch's default is 30 s).
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    # Two workers on a CPU machine would each start one thread per core and fight over them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (spec.nproc or default_nproc()))))
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def torchrun_main() -> None:
    """`torch.distributed.run` whose worker failures end in one line per rank, not a traceback:
    each worker has already printed its own error."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(sys.argv[1:]))
    except SignalException as exc:  # Ctrl-C: the workers were told and have stopped
        print(f"launcher stopped by signal {exc.sigval}", file=sys.stderr)
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        for global_rank, failure in sorted(exc.failures.items()):
            how = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"status {failure.exitcode}"
            print(f"worker rank {global_rank} exited with {how}", file=sys.stderr)
        sys.exit(1)


def check_strategy(dcfg: DistributedConfig, *, cuda: bool) -> None:
    if dcfg.strategy == "fsdp" and not cuda:
        raise TrainError(
            "FSDP shards weights across GPUs and needs CUDA; this machine has no CUDA device",
            where="train.distributed.strategy=fsdp",
            fix="use train.distributed.strategy=ddp (works on CPU with gloo), or run on CUDA GPUs",
        )
    if dcfg.backend == "nccl" and not cuda:
        raise TrainError("the nccl backend needs CUDA", where="train.distributed.backend=nccl",
                         fix="use train.distributed.backend=auto (gloo on CPU)")


def trainer_kwargs(dcfg: DistributedConfig) -> dict[str, Any]:
    """TrainingArguments keys for the strategy; harmless in a single process."""
    kwargs: dict[str, Any] = {
        "ddp_find_unused_parameters": dcfg.find_unused_parameters,
        "ddp_timeout": dcfg.timeout_s,
    }
    # An explicit backend makes accelerate expect a process group, so only under a launcher; auto
    # leaves the choice to it: gloo with use_cpu (set without CUDA), nccl on CUDA.
    if dcfg.backend != "auto" and world_size() > 1:
        kwargs["ddp_backend"] = dcfg.backend
    if dcfg.strategy == "fsdp":
        kwargs["fsdp"] = " ".join([dcfg.fsdp_sharding, "auto_wrap", *(["offload"] if dcfg.fsdp_offload else [])])
        kwargs["fsdp_config"] = {"version": 2, **dcfg.fsdp_config}
    return kwargs


def describe(dcfg: DistributedConfig) -> dict[str, Any]:
    """What tuneforge.json records about the process layout."""
    ws = world_size()
    return {"world_size": ws, "strategy": dcfg.strategy,
            "launcher": os.environ.get(LAUNCHED_ENV) or ("external" if ws > 1 else "none")}


def _port(spec: LaunchSpec) -> int:
    # Every node must name the same port; a single node can take any free one.
    return spec.master_port or (29500 if spec.nnodes > 1 else _free_port())


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
