"""Exact parameters per rank of each pipeline stage for many layouts, cached.

The counts come from `dryrun.stage_parameter_counts` (the meta-device model in
a fake process group). Only tp, ep and etp change what one layer, the
embedding and the output head hold on a rank; pp only decides how many layers
a stage gets (Megatron's layers are identical): so for each (tp, ep, etp)
three shallow models are built - 1 layer, 2 layers, and 2 layers on 2 stages -
and every stage of every pp follows exactly from their differences
(tests compare with full-depth builds). cp and dp do not shard parameters and
virtual stages only reorder which layers a rank holds. Counting runs in worker
subprocesses, so the CPU adaptor's patches of torch stay out of the caller,
and results are kept in `$MIXEXP_CACHE/param_counts.json` (default `.cache/`
in the repository) keyed by the model's shape.

`python -m mixexp.param_counts` is the worker: a JSON request on stdin, the
counts as JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from mixexp.lifetime import die_with_parent_preexec

REPO = Path(__file__).resolve().parents[1]
SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
              "vocab_size", "make_vocab_size_divisible_by", "untie_embeddings", "num_experts", "moe_ffn_hidden_size")
LAYOUT_KEYS = ("tp", "ep", "etp")


def cache_path() -> Path:
    return Path(os.environ.get("MIXEXP_CACHE", REPO / ".cache")) / "param_counts.json"


def model_key(model: dict) -> str:
    shape = json.dumps({k: model.get(k) for k in SHAPE_KEYS}, sort_keys=True)
    return hashlib.sha1(shape.encode()).hexdigest()[:16]


def layout_key(layout) -> str:
    return "_".join(f"{k}{getattr(layout, k)}" for k in LAYOUT_KEYS)


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs time


def compose(parts: dict, num_layers: int, pp: int) -> list[int]:
    """Stage counts of a `num_layers`-deep model on `pp` stages from the shallow builds' parts."""
    per_stage = num_layers // pp * parts["layer"]
    if pp == 1:
        return [per_stage + parts["single_extra"]]
    return [per_stage + parts["first_extra"]] + [per_stage] * (pp - 2) + [per_stage + parts["last_extra"]]


_MEMORY: dict[str, dict] = {}  # model key -> layout key -> parts, for this process


WORKERS = 2  # processes that count, for 16 layouts or more


def prefetch(requests: list) -> None:
    """Count, in as few worker processes as possible, what `requests` [(config, layouts), ...] need."""
    todo: dict[str, tuple[dict, dict]] = {}  # model key -> (config, {layout key: degrees})
    disk = _load(cache_path())
    for config, layouts in requests:
        mkey = model_key(config["model"])
        known = _MEMORY.setdefault(mkey, {})
        known.update({k: v for k, v in disk.get(mkey, {}).items() if k not in known})
        for layout in layouts:
            key = layout_key(layout)
            if key not in known:
                todo.setdefault(mkey, (config, {}))[1][key] = {k: getattr(layout, k) for k in LAYOUT_KEYS}
    jobs = [(mkey, config, key, degrees) for mkey, (config, missing) in todo.items() for key, degrees in missing.items()]
    if not jobs:
        return
    workers = 1 if len(jobs) < 16 else WORKERS  # each worker pays megatron-core's import (~6 s of CPU)
    procs = [_start(jobs[i::workers]) for i in range(min(workers, len(jobs)))]
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            raise RuntimeError(f"parameter counting failed: {last}")
        for mkey, key, parts in json.loads(out.strip().splitlines()[-1]):
            _MEMORY[mkey][key] = parts
    disk = _load(cache_path())
    for mkey in todo:
        disk.setdefault(mkey, {}).update(_MEMORY[mkey])
    _save(cache_path(), disk)


def stage_counts(config: dict, layouts: list) -> dict:
    """{layout: [params of a rank of stage 0, 1, ...]} for every layout.

    `config` is a plain dict with the model, train, parallel and hardware sections.
    """
    prefetch([(config, layouts)])
    known, layers = _MEMORY[model_key(config["model"])], config["model"]["num_layers"]
    return {layout: compose(known[layout_key(layout)], layers, layout.pp) for layout in layouts}


def _start(jobs: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mixexp.param_counts"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=die_with_parent_preexec())
    proc.stdin.write(json.dumps(jobs))
    proc.stdin.close()
    proc.stdin = None
    return proc


def _parts(cfg, tp: int, ep: int, etp: int) -> dict:
    """One layer, the first stage's and the last stage's extras, from three shallow meta builds."""
    from math import lcm

    from mixexp.dryrun import stage_parameter_counts
    from mixexp.layout import Layout

    dp = lcm(tp, ep * etp) // tp  # the smallest world in which these expert groups exist

    def build(num_layers: int, pp: int) -> list[int]:
        cfg.model.num_layers = num_layers
        cfg.parallel.update(tp=tp, pp=pp, ep=ep, etp=etp, cp=1, vpp=1, dp=dp)
        return stage_parameter_counts(cfg, Layout(tp=tp, pp=pp, ep=ep, etp=etp, cp=1, dp=dp))

    one, two, staged = build(1, 1)[0], build(2, 1)[0], build(2, 2)
    layer = two - one
    return {"layer": layer, "single_extra": one - layer, "first_extra": staged[0] - layer,
            "last_extra": staged[1] - layer}


def _worker() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from omegaconf import OmegaConf

    results = []
    for mkey, config, key, degrees in json.loads(sys.stdin.read()):
        cfg = OmegaConf.create(config)
        # Count with the portable local spec: the accelerator specs (Transformer Engine, grouped GEMM)
        # hold the same parameters, and need not be installed where the plan is made.
        cfg.hardware.device = "cpu"
        results.append((mkey, key, _parts(cfg, **degrees)))
    sys.stdout.write("\n" + json.dumps(results) + "\n")


if __name__ == "__main__":
    _worker()
