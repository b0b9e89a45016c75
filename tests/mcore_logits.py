"""Our GPTModel's logits for given tokens, with weights from a checkpoint, in one process.

    python tests/mcore_logits.py CKPT TOKENS.pt OUT.pt [hydra overrides...]
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(ckpt: str, tokens_path: str, out: str, *overrides: str) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import compose
    from mixexp import devices
    from mixexp.layout import validate

    cfg = compose(*overrides)
    layout = validate(cfg)
    devices.prepare("cpu", cfg)
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel

    devices.finish("cpu")
    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.train.seed)
    from mixexp import checkpoint
    from mixexp.model import build_model_chunks

    (model,) = build_model_chunks(cfg, layout)
    checkpoint.load(Path(ckpt), [model], None, None, cfg, layout, weights_only=True)
    tokens = torch.load(tokens_path)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    model.eval()
    with torch.no_grad():
        logits = model(tokens, positions, None)
    torch.save(logits[..., : cfg.model.vocab_size].contiguous(), out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main(*sys.argv[1:])
