"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, with what a mixexp sweep needs.

The plugin's launcher submits one array job and waits for each job's result; a job that SLURM ended
without one (scancel, a node failure, a time limit with no requeue left) raises in the submitting
process and the whole sweep stops without its comparison. Here each such job is a failed row instead:
a summary naming the SLURM job and its state (from sacct), and the sweep goes on. The jobs' exit codes
reach the sweep's (it exits non-zero when any job failed), and a submission that sbatch refuses is one
line with sbatch's reason.

Preemption and time limits work as in the plugin: submitit's SIGUSR2 (`signal_delay_s` before the
limit) reaches mixexp.launch.supervise, the workers save, then submitit requeues the job (at most
`max_num_timeout` times) and the requeued job resumes from the run directory's `latest` checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class SubmissionError(RuntimeError):
    """The jobs could not be submitted (sbatch refused them, no SLURM here); the reason on one line."""


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(exc).__name__])[-1]


POLL_S = 5.0  # sacct at most this often (submitit's own waiting backs off to 10 minutes)


def _wait(jobs) -> None:
    """Until every job has its result or SLURM says it ended (one sacct call for all, every POLL_S)."""
    pending, last = list(jobs), float("-inf")
    while pending:
        if time.monotonic() - last >= POLL_S:
            pending[0].watcher.update()
            last = time.monotonic()
        pending = [job for job in pending if not job.done()]
        if pending:
            time.sleep(1.0)


class SweepSlurmLauncher(PluginSlurmLauncher):
    def _executor(self):
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        common = set(OmegaConf.structured(BaseQueueConf).keys())  # the rest are slurm_-prefixed
        executor.update_parameters(**{k if k in common else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mixexp import cli

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        args = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        try:
            jobs = self._executor().map_array(self, *zip(*args))
        except Exception as exc:  # noqa: BLE001 - sbatch's answer, whatever submitit wraps it in
            raise SubmissionError(f"submitting to SLURM failed: {_one_line(exc)}") from None
        cli.jobs_starting()  # submitted: stderr need not be held for a one-line error any more
        log.info(f"SLURM jobs: {', '.join(job.job_id for job in jobs)}")
        _wait(jobs)
        returns = [self._outcome(job, overrides, num) for job, (overrides, _, num, _, _) in zip(jobs, args)]
        for ret in returns:
            cli.record_exit(ret.return_value)
        return returns

    def _outcome(self, job, overrides: list[str], num: int) -> JobReturn:
        """The job's own JobReturn, or for a job SLURM ended without a result, a failed one (exit code 1)
        with a summary in the job's directory that names the SLURM job and its state."""
        from submitit.core.utils import UncompletedJobError

        try:
            ret = job.results()[0]
        except UncompletedJobError:
            state = job.get_info(mode="force").get("State") or "UNKNOWN"
            return self._failed(overrides, num, f"SLURM job {job.job_id} ended {state} without finishing "
                                                 f"(log: {job.paths.stdout})")
        if ret.status == JobStatus.FAILED:  # the task raised: keep the sweep going, say why
            return self._failed(overrides, num, f"SLURM job {job.job_id}: {_one_line(ret._return_value)}")
        return ret

    def _failed(self, overrides: list[str], num: int, reason: str) -> JobReturn:
        from mixexp.report import write_summary

        job_dir = self._job_dir(overrides, num)
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        if not (job_dir / ".hydra" / "overrides.yaml").exists():  # cancelled before it started
            OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
        write_summary(job_dir, status="failed", error=reason)
        log.error(f"job #{num}: {reason}")
        ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir))
        ret.status, ret.return_value = JobStatus.COMPLETED, 1
        return ret

    def _job_dir(self, overrides: list[str], num: int) -> Path:
        """Where Hydra puts this job: hydra.sweep.dir/hydra.sweep.subdir of its own config."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
        HydraConfig.instance().set_config(config)  # the subdir interpolates ${hydra.job.num}
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
