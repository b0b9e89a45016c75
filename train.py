"""Train a Mixtral MoE with megatron-core: `python train.py [group=option ...] [key=value ...]`.

Examples: `python train.py parallel=tp2`, `python train.py model=mixtral_8x7b
parallel=tp8_pp2_cp4 hardware=ascend_910b cluster.nnodes=8 train.dry_run=true`,
`python train.py -m parallel=single,pp2,dp2`.
"""

from mixexp.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("train", "mixexp.cli:run_job")
