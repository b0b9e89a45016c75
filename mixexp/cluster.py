"""Where this node sits in the job: node rank and rendezvous address, from the config or SLURM.

Under `hydra/launcher=slurm` (hydra-submitit-launcher, one task per node)
every node runs the same Hydra job; SLURM tells each which node it is and
which host leads, and torchrun's static rendezvous takes it from there.
"""

from __future__ import annotations

import os
import subprocess

from mixexp.errors import ConfigError

DEFAULT_PORT = 29500


def _slurm_first_host() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        return out.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def resolve(cluster) -> dict:
    """nnodes, node_rank, master_addr, master_port for this process's node."""
    nnodes, node_rank, addr, port = cluster.nnodes, cluster.node_rank, cluster.master_addr, cluster.master_port
    if "SLURM_JOB_ID" in os.environ and "SLURM_NODEID" in os.environ and nnodes > 1:
        slurm_nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", nnodes)))
        if slurm_nodes != nnodes:
            raise ConfigError(f"cluster.nnodes={nnodes} but SLURM allocated {slurm_nodes} nodes; "
                              f"set hydra.launcher.nodes=${{cluster.nnodes}}")
        node_rank = int(os.environ["SLURM_NODEID"])
        addr = _slurm_first_host()
        port = port or DEFAULT_PORT + int(os.environ["SLURM_JOB_ID"]) % 1000
    elif nnodes > 1 and not port:
        raise ConfigError(f"cluster.nnodes={nnodes} needs a fixed cluster.master_port that every node uses "
                          f"(and cluster.master_addr of node 0)")
    return {"nnodes": nnodes, "node_rank": node_rank, "master_addr": addr, "master_port": port}
