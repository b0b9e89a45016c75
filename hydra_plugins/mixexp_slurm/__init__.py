"""Hydra instantiates launchers only from the `hydra_plugins` namespace; the behaviour is mixexp.slurm_launcher's."""

from mixexp.slurm_launcher import SweepSlurmLauncher


class SlurmLauncher(SweepSlurmLauncher):
    """`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml)."""
