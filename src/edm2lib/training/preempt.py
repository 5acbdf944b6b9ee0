"""Preemption: SIGUSR1/SIGTERM set a flag; the loop finishes its step, checkpoints, requeues and exits 75.

Exit code `EXIT_PREEMPTED` = 75 (EX_TEMPFAIL of sysexits.h: "try again later") means "a checkpoint was
written; start me again and I resume". SLURM: submit with `--signal=USR1@300 --requeue`; on the signal rank 0
writes the checkpoint and runs `scontrol requeue $SLURM_JOB_ID` when the job is requeueable. Snakemake: a
non-zero exit consumes one of the rule's `retries`, and the rerun resumes from the checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: checkpoint written, rerun to resume
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Installs handlers for SIGUSR1/SIGTERM that record the signal; `restore()` puts the old ones back.

    Handlers can only be installed from the main thread; elsewhere the flag stays down.
    """

    def __init__(self, nimg_now: Callable[[], int] = lambda: -1):
        self.signum: int | None = None
        self.signal_nimg: int | None = None  # training time when the first signal arrived
        self._nimg_now = nimg_now
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            self.signal_nimg = self._nimg_now()

    @property
    def raised(self) -> bool:
        """True once a preemption signal arrived on this rank."""
        return self.signum is not None

    def restore(self) -> None:
        """Reinstall the handlers that were active before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def slurm_requeueable(job_id: str) -> bool:
    """Whether SLURM job `job_id` was submitted requeueable (`Requeue=1` in `scontrol show job`)."""
    if not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return False
    return re.search(r"\bRequeue=1\b", out) is not None


def maybe_requeue(mode: str, log: Callable[[str], None]) -> bool:
    """Under SLURM run `scontrol requeue $SLURM_JOB_ID` (mode auto: only if requeueable); True if it did."""
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    if mode == "never" or not job_id:
        return False
    if mode == "auto" and not slurm_requeueable(job_id):
        log(f"SLURM job {job_id} is not requeueable (submit with --requeue); exiting for a retry instead")
        return False
    try:
        subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=True
        )
    except (subprocess.SubprocessError, OSError) as e:
        log(f"scontrol requeue {job_id} failed: {e}")
        return False
    log(f"requeued SLURM job {job_id}")
    return True
