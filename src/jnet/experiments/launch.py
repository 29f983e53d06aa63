"""Run a sweep's cells as jobs through submitit: on a SLURM cluster, or as local processes.

``jnet sweep --launcher slurm`` submits each unfinished cell as one SLURM job (``--partition``,
``--gpus-per-node``, ``--time``, ``--cpus-per-task``; at most ``--max-parallel`` at a time);
``--launcher local --max-parallel N`` runs N cells at once as processes on this machine
(submitit's local executor; each gets ``cpus_per_task`` torch threads, so that N processes do not
fight over the cores). A finished cell (``cells/NAME/cell.json``) is never run again; an
interrupted one resumes from its last checkpoint, as in-process sweeps do. Job logs live in
``OUT/jobs/``. A failed cell does not stop the others: its error is collected and reported at
the end, and re-running the sweep retries only the unfinished cells.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from jnet.errors import ConfigError, JnetError
from jnet.utils.options import choose

LAUNCHERS = ("none", "local", "slurm")
POLL_S = 1.0


@dataclass(frozen=True)
class LaunchOptions:
    """How cells run: ``launcher`` none (in this process, one after another), local or slurm."""

    launcher: str = "none"
    max_parallel: int = 1
    partition: str | None = None
    gpus_per_node: int = 0
    time_min: int = 240
    cpus_per_task: int | None = None

    def check(self) -> "LaunchOptions":
        choose(self.launcher, LAUNCHERS, "--launcher")
        if not isinstance(self.max_parallel, int) or self.max_parallel < 1:
            raise ConfigError(f"--max-parallel: expected an integer >= 1, found {self.max_parallel!r}")
        if self.time_min < 1 or self.gpus_per_node < 0:
            raise ConfigError(f"--time / --gpus-per-node: expected >= 1 minute and >= 0 GPUs, found "
                              f"{self.time_min} and {self.gpus_per_node}")
        return self

    def threads(self) -> int:
        """Torch threads per job: the given cpus_per_task, else this machine's cores shared out."""
        if self.cpus_per_task:
            return int(self.cpus_per_task)
        if self.launcher == "local":
            return max(1, (os.cpu_count() or 1) // self.max_parallel)
        return 4


def make_executor(folder: Path, options: LaunchOptions):
    """The submitit executor of ``options`` (logs and pickles under ``folder``).

    The executors are built directly (not through AutoExecutor), so that the options are the
    executors' own and a missing SLURM is a plain error.
    """
    from submitit.local.local import LocalExecutor
    from submitit.slurm.slurm import SlurmExecutor

    if options.launcher == "local":
        executor = LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=options.time_min, tasks_per_node=1, nodes=1)
        return executor
    try:
        executor = SlurmExecutor(folder=str(folder))
    except RuntimeError as e:  # submitit: 'Could not detect "srun"'
        raise ConfigError(f"--launcher slurm: no SLURM on this machine ({e}); run the sweep on a "
                          f"login node, or use --launcher local") from e
    params: dict[str, Any] = {"time": options.time_min, "ntasks_per_node": 1, "nodes": 1,
                              "cpus_per_task": options.threads(), "gpus_per_node": options.gpus_per_node,
                              "array_parallelism": options.max_parallel, "job_name": "jnet-sweep"}
    if options.partition:
        params["partition"] = options.partition
    executor.update_parameters(**params)
    return executor


def run_cell_job(cell: Any, cell_dir: str, sweep: Mapping[str, Any], threads: int,
                 alongside: int = 0) -> dict:
    """What one job runs (a module-level function: submitit pickles it by reference)."""
    import torch

    from jnet.experiments.sweep import run_cell

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return run_cell(cell, Path(cell_dir), sweep, quiet=True, alongside=alongside)


def launch_cells(cells: Sequence[Any], out: Path, sweep: Mapping[str, Any], options: LaunchOptions,
                 *, quiet: bool = False) -> list[dict]:
    """Run the unfinished ``cells`` as submitit jobs, at most ``max_parallel`` at a time.

    Returns:
        The rows of all cells in cell order (finished earlier or now).
    Raises:
        JnetError: some cells failed (each named with the first line of its error); the rows of
            the others are on disk, and a re-run retries only the failed ones.
    """
    from tqdm.auto import tqdm

    executor = make_executor(Path(out) / "jobs", options)
    # local jobs share this machine, so each one's speed is timed beside the others
    alongside = options.max_parallel - 1 if options.launcher == "local" else 0
    pending = [c for c in cells if not (Path(out) / "cells" / c.name / "cell.json").exists()]
    running: dict[str, Any] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(pending), desc=f"sweep ({options.launcher})", unit="cell", disable=quiet)
    queue = list(pending)
    while queue or running:
        while queue and len(running) < options.max_parallel:
            cell = queue.pop(0)
            cell_dir = Path(out) / "cells" / cell.name
            running[cell.name] = executor.submit(run_cell_job, cell, str(cell_dir), dict(sweep),
                                                 options.threads(), alongside)
        done = [name for name, job in running.items() if job.done()]
        if not done:
            time.sleep(POLL_S)
            continue
        for name in done:
            job = running.pop(name)
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit wraps the job's own exception
                failed[name] = _first_error_line(e)
            bar.update(1)
            bar.set_postfix_str(name)
    bar.close()
    if failed:
        listing = "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise JnetError(f"sweep: {len(failed)} of {len(pending)} cell(s) failed ({listing}); job logs "
                        f"in {Path(out) / 'jobs'}; re-run the same command to retry them")
    return [json.loads((Path(out) / "cells" / c.name / "cell.json").read_text()) for c in cells]


def _first_error_line(e: BaseException) -> str:
    # submitit's FailedJobError carries the job's traceback; its last line names the error
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return (errors[-1] if errors else lines[-1] if lines else type(e).__name__)[:300]
