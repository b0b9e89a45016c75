"""Convert Hugging Face Mixtral safetensors to a mixexp checkpoint and back.

    python -m mixexp.convert hf_to_mcore hf=DIR out=DIR [model=mixtral_8x7b]
    python -m mixexp.convert mcore_to_hf ckpt=DIR out=DIR [dtype=bf16|fp16|fp32] [tokenizer=HF_DIR]

hf_to_mcore writes a weights-only dist_checkpointing checkpoint (the model's
global sharded keys, see mixexp.hf_mixtral) that any layout loads:
`python train.py ckpt.load=OUT ckpt.finetune=true`. With `model=NAME` the HF
config must match conf/model/NAME.yaml. mcore_to_hf takes such a checkpoint, or
any training checkpoint (iter_XXXXXXX/), and writes safetensors, an index and
config.json for transformers' MixtralForCausalLM, plus the tokenizer files of
`tokenizer=HF_DIR` (by default those of the HF directory hf_to_mcore read, if it
is still there), so that AutoTokenizer loads the output too.

Every tensor is accounted for: an HF tensor the model does not use, or one the
model needs and the files lack, is an error naming it; so is a checkpoint key.

Memory: nothing is loaded whole. hf_to_mcore memory-maps each HF tensor, or
the rows of one attention head, straight from its safetensors file (its header
gives the byte offsets) and hands these maps to dist_checkpointing as chunks
of the global tensors: w1 and w3 are the two row halves of an expert's fc1,
q/k/v the head blocks of the interleaved QKV, so no tensor is concatenated or
copied in memory. The writer reads the maps as it writes, so the resident
memory is file cache the kernel can drop, not 8x7B's 93 GB. mcore_to_hf loads
one decoder layer at a time (about 1.4 GB for 8x7B in bf16) and writes it out
as one safetensors file before reading the next.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mixexp.ckpt_dirs import CONTENT, checkpoint_files, file_entry, write_manifest
from mixexp.hf_mixtral import Block, MixtralShape, blocks, hf_names, hf_shapes, layer_of, region

FORMAT = 1
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old exports carry; derived, not weights
_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.int16}


class ConvertError(ValueError):
    """Input that cannot be converted; the message names the tensor or field."""


def _progress(message: str) -> None:
    """A progress line on stderr (stdout carries the result line)."""
    print(f"[mixexp] {message}", file=sys.stderr, flush=True)


def _numel(shape: tuple) -> int:
    return int(np.prod(shape, dtype=np.int64))



# ---- safetensors, memory-mapped ----------------------------------------------------------------


def _safetensors_header(f: Path) -> tuple[int, dict]:
    """(where the data starts, {tensor: info}) of one file, checked against the file's size:
    a truncated or foreign file is named here, not by a failing memory map later."""
    have = f.stat().st_size
    with open(f, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if have < 8 or 8 + size > have:
            raise ConvertError(f"{f}: truncated or not safetensors (the header needs {8 + size} bytes, "
                               f"the file has {have})")
        try:
            header = json.loads(fh.read(size))
        except ValueError:
            raise ConvertError(f"{f}: not a safetensors file (its header is not JSON)") from None
    header.pop("__metadata__", None)
    need = 8 + size + max((info["data_offsets"][1] for info in header.values()), default=0)
    if need > have:
        raise ConvertError(f"{f}: truncated: its tensors need {need} bytes, the file has {have}; "
                           f"download it again")
    return 8 + size, header


class SafetensorsDir:
    """The tensors of a directory of *.safetensors files: names, shapes, and memory maps of rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"{path} has no *.safetensors files")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            base, header = _safetensors_header(f)
            for name, info in header.items():
                self.entries[name] = (f, base, info)

    def names(self) -> set[str]:
        return set(self.entries)

    def shape(self, name: str) -> tuple:
        return tuple(self.entries[name][2]["shape"])

    def rows(self, name: str, rows: tuple | None = None):
        """Rows [start, stop) of a tensor (all with None) as a tensor over a private memory map."""
        import torch

        path, base, info = self.entries[name]
        dtype = info["dtype"]
        if dtype not in _NUMPY:
            raise ConvertError(f"{name}: dtype {dtype} is not supported")
        shape = list(info["shape"])
        start, stop = rows or (0, shape[0])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(_NUMPY[dtype]).itemsize
        array = np.memmap(path, dtype=_NUMPY[dtype], mode="c", offset=base + info["data_offsets"][0] + start * row_bytes,
                          shape=tuple([stop - start] + shape[1:]))
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if dtype == "BF16" else tensor


# ---- one process of torch.distributed for dist_checkpointing -----------------------------------


def _init_single_process():
    from mixexp.devices import cpu

    cpu.prepare()  # the checkpoint writer calls CUDA APIs; on CPU they become no-ops
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def _quiet():
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")


# ---- HF -> mcore ---------------------------------------------------------------------------------


def _check_hf_tensors(files: SafetensorsDir, shape: MixtralShape) -> None:
    expected = hf_shapes(shape)
    present = {n for n in files.names() if not n.endswith(IGNORED_HF_SUFFIXES)}
    missing = sorted(set(expected) - present)
    unused = sorted(present - set(expected))
    if missing:
        raise ConvertError(f"{files.path}: {len(missing)} tensor(s) missing, e.g. {', '.join(missing[:5])}")
    if unused:
        raise ConvertError(f"{files.path}: {len(unused)} tensor(s) unused by a Mixtral of this config, "
                           f"e.g. {', '.join(unused[:5])}")
    for name, want in expected.items():
        if files.shape(name) != want:
            raise ConvertError(f"{name}: shape {list(files.shape(name))}, the config says {list(want)}")


def _sharded(block: Block, data):
    from megatron.core.dist_checkpointing import ShardedTensor

    return ShardedTensor.from_rank_offsets(block.key, data, *block.rank_offsets, replica_id=0,
                                           prepend_axis_num=block.prepend)


def _model_config_check(shape: MixtralShape, model: str | None) -> None:
    if not model:
        return
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{model}.yaml"
    if not conf.exists():
        raise ConvertError(f"model={model}: no {conf}")
    ours = MixtralShape.from_model_config(OmegaConf.load(conf))
    theirs = dataclasses.replace(shape, max_position_embeddings=ours.max_position_embeddings)
    diffs = ours.differences(theirs)
    if diffs:
        raise ConvertError(f"the HF config differs from model={model} (ours vs HF): {'; '.join(diffs)}")


HF_REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
               "num_local_experts")


def _read_hf_config(path: Path) -> dict:
    """A Hugging Face Mixtral config.json, or a ConvertError naming what is wrong with it."""
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ConvertError(f"{path} is not valid JSON ({getattr(exc, 'msg', exc)}, line "
                           f"{getattr(exc, 'lineno', '?')})") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path} is not a model config (a JSON object)")
    missing = [k for k in HF_REQUIRED if k not in config]
    if missing:
        kind = config.get("model_type") or "unknown"
        raise ConvertError(f"{path} is not a Mixtral config (model_type {kind}): no {', '.join(missing)}")
    return config


def hf_to_mcore(hf: Path, out: Path, model: str | None = None) -> Path:
    hf, out = Path(hf), Path(out)
    if not (hf / "config.json").is_file():
        raise ConvertError(f"hf={hf} has no config.json: point hf= at a Hugging Face Mixtral model directory "
                           f"(config.json and *.safetensors)")
    config = _read_hf_config(hf / "config.json")
    try:
        shape = MixtralShape.from_hf(config)
    except ValueError as exc:
        raise ConvertError(f"{hf / 'config.json'}: {exc}") from None
    _model_config_check(shape, model)
    files = SafetensorsDir(hf)
    _check_hf_tensors(files, shape)
    if out.exists():
        raise ConvertError(f"out={out} exists; choose a new directory")
    _quiet()
    _init_single_process()
    from megatron.core import dist_checkpointing

    from mixexp.ckpt_compat import require_writer_dependencies

    require_writer_dependencies()
    state = {"model": {f"{b.hf}/{i}": _sharded(b, files.rows(b.hf, b.rows)) for i, b in enumerate(blocks(shape))},
             "format": FORMAT, "content": "weights", "iteration": 0, "source": str(hf),
             "model_config": shape.model_config(model or "converted"), "hf_config": config}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gigabytes = sum(f.stat().st_size for f in hf.glob("*.safetensors")) / 1e9
    _progress(f"converting {len(files.names())} tensors ({gigabytes:.2f} GB) of {hf} into {out} ...")
    start = time.perf_counter()
    dist_checkpointing.save(state, str(tmp))
    seconds = time.perf_counter() - start
    _progress(f"wrote {gigabytes:.2f} GB in {seconds:.1f} s ({gigabytes / max(seconds, 1e-9):.2f} GB/s)")
    (tmp / CONTENT).write_text(json.dumps({"content": "weights", "source": str(hf)}) + "\n")
    write_manifest(tmp, {name: file_entry(tmp / name) for name in checkpoint_files(tmp)})
    tmp.rename(out)
    return out


# ---- mcore -> HF ---------------------------------------------------------------------------------


def _stored_tensors(ckpt: Path, shape: MixtralShape) -> dict:
    """Model key -> (stored key, its metadata); every key the model needs is there, none is unused."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from mixexp.ckpt_compat import alternatives

    metadata = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    stored = {k: v for k, v in metadata.items()
              if isinstance(v, TensorStorageMetadata) and not k.startswith("optimizer.")}
    found, missing = {}, []
    for key in dict.fromkeys(b.key for b in blocks(shape)):
        name = next((k for k in [key, *alternatives(key)] if k in stored), None)
        if name is None:
            missing.append(key)
        else:
            found[key] = (name, stored[name])
    if missing:
        raise ConvertError(f"{ckpt} lacks {', '.join(missing)}")
    unused = sorted(set(stored) - {name for name, _ in found.values()})
    if unused:
        raise ConvertError(f"{ckpt} holds tensors no Mixtral tensor maps to: {', '.join(unused[:5])}")
    return found


def _read_regions(ckpt: Path, requests: dict):
    """Read {stored key: (offset, empty tensor)}: each tensor's region of the global tensor, nothing more."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class Regions(DefaultLoadPlanner):
        def create_local_plan(self):
            items = []
            for fqn, (offset, tensor) in requests.items():
                chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=tensor.size())
                items += create_read_items_for_chunk_list(fqn, self.metadata.state_dict_metadata[fqn], [chunk])
            return LoadPlan(items)

        def lookup_tensor(self, index):
            return requests[index.fqn][1]

    dcp_load({k: t for k, (_, t) in requests.items()}, storage_reader=FileSystemReader(str(ckpt)),
             planner=Regions(flatten_state_dict=False, flatten_sharded_tensors=False), no_dist=True)


def _load_group(ckpt: Path, group: list[Block], stored: dict, shapes: dict) -> dict:
    """The HF tensors of `group` (one decoder layer, or the rest): its slab of each global tensor is
    read, then each HF tensor is cut out of it (QKV de-interleaved, fc1 split into w1 and w3)."""
    import torch

    slabs = {}
    for b in group:
        offset, _ = region(b, shapes[b.hf])
        name, meta = stored[b.key]
        if name not in slabs:  # the whole tensor, or its slice at this layer (the first axis)
            size = tuple(meta.size)
            start = (offset[0],) + (0,) * (len(size) - 1) if b.prepend else (0,) * len(size)
            slab_shape = ((1,) + size[1:]) if b.prepend else size
            slabs[name] = (start, torch.empty(slab_shape, dtype=meta.properties.dtype))
    _read_regions(ckpt, slabs)
    parts: dict[str, list] = {}
    for b in group:
        offset, sizes = region(b, shapes[b.hf])
        slab_offset, slab = slabs[stored[b.key][0]]
        index = tuple(slice(o - so, o - so + n) for o, so, n in zip(offset, slab_offset, sizes))
        parts.setdefault(b.hf, []).append(slab[index].reshape(sizes[b.prepend:]))
    return {name: p[0].clone() if len(p) == 1 else torch.cat(p) for name, p in parts.items()}


# What an HF model directory holds besides weights and config.json, copied as they are.
HF_SIDE_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json")


def _side_files(tokenizer: str | None, common: dict) -> list[Path]:
    """The tokenizer (and generation config) files to copy: from `tokenizer`, else from the source HF dir."""
    if tokenizer is None:
        source = common.get("source")
        if source is None or not Path(source).is_dir():
            return []
        return [Path(source) / f for f in HF_SIDE_FILES if (Path(source) / f).is_file()]
    files = [Path(tokenizer) / f for f in HF_SIDE_FILES if (Path(tokenizer) / f).is_file()]
    if not files:
        raise ConvertError(f"tokenizer={tokenizer} holds none of {', '.join(HF_SIDE_FILES)}: point it at the "
                           f"Hugging Face model directory the weights came from")
    return files


def mcore_to_hf(ckpt: Path, out: Path, dtype: str | None = None, tokenizer: str | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt, out = Path(ckpt), Path(out)
    if out.exists():
        raise ConvertError(f"out={out} exists; choose a new directory")
    cast = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype not in cast:
        raise ConvertError(f"dtype={dtype}: one of bf16, fp16, fp32 (default: as stored)")
    _quiet()
    if not (ckpt / "common.pt").is_file():
        raise ConvertError(f"ckpt={ckpt} is not a checkpoint (no common.pt): point ckpt= at an iter_XXXXXXX "
                           f"directory or at what hf_to_mcore wrote")
    common = torch.load(ckpt / "common.pt", weights_only=False)
    side_files = _side_files(tokenizer, common)
    config = common.get("hf_config")
    shape = MixtralShape.from_hf(config) if config else MixtralShape.from_model_config(common["model_config"])
    config = config or shape.hf_config()
    stored = _stored_tensors(ckpt, shape)
    shapes, all_blocks = hf_shapes(shape), blocks(shape)
    groups = [[b for b in all_blocks if layer_of(b.hf) is None]]
    groups += [[b for b in all_blocks if layer_of(b.hf) == n] for n in range(shape.num_layers)]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    group_numel = [sum(_numel(shapes[name]) for name in hf_names(g)) for g in groups]
    done, start = 0, time.perf_counter()
    for i, group in enumerate(groups):
        tensors = _load_group(ckpt, group, stored, shapes)
        if cast[dtype] is not None:
            tensors = {k: v.to(cast[dtype]) for k, v in tensors.items()}
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        done += group_numel[i]
        elapsed = time.perf_counter() - start
        eta = elapsed * (sum(group_numel) - done) / done
        _progress(f"{file}: {done / sum(group_numel):6.1%} of {sum(group_numel):,} parameters, "
                  f"{elapsed:.1f} s, ETA {eta:.0f} s")
        del tensors
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in side_files:
        shutil.copyfile(f, tmp / f.name)
    if not side_files:
        _progress(f"{out} has no tokenizer files: add tokenizer=HF_DIR to copy them from a Hugging Face "
                  f"model directory")
    tmp.rename(out)
    return out


# ---- command line --------------------------------------------------------------------------------

USAGE = ("usage: python -m mixexp.convert hf_to_mcore hf=DIR out=DIR [model=NAME]\n"
         "       python -m mixexp.convert mcore_to_hf ckpt=DIR out=DIR [dtype=bf16|fp16|fp32] [tokenizer=HF_DIR]")
COMMANDS = {"hf_to_mcore": (hf_to_mcore, ("hf", "out"), ("model",)),
            "mcore_to_hf": (mcore_to_hf, ("ckpt", "out"), ("dtype", "tokenizer"))}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    func, required, optional = COMMANDS[argv[0]]
    args = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    bad = [a for a in argv[1:] if "=" not in a or a.split("=", 1)[0] not in required + optional]
    missing = [k for k in required if k not in args]
    if bad or missing:
        print(f"error: {argv[0]}: " + ("unknown argument " + bad[0] if bad else f"{missing[0]}=DIR is required"),
              file=sys.stderr)
        return 2
    try:
        out = func(*(args[k] for k in required), **{k: args[k] for k in optional if k in args})
    except (ConvertError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[mixexp] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
