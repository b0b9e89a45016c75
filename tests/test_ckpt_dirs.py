"""The checkpoint directory protocol and key fallbacks, without torch runs."""

from types import SimpleNamespace

import pytest

from mixexp import ckpt_dirs
from mixexp.errors import ConfigError


def ckpt(**kw):
    return SimpleNamespace(**{"dir": None, "load": None, "finetune": False, **kw})


def fake_checkpoint(path):
    path.mkdir(parents=True)
    (path / ckpt_dirs.METADATA).write_text("{}")
    return path


def saved(root, step, keep_last=2):
    tmp = ckpt_dirs.begin(root, step)
    (tmp / ckpt_dirs.METADATA).write_text("{}")
    return ckpt_dirs.commit(root, tmp, keep_last)


def test_commit_renames_points_latest_and_keeps_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        saved(root, step)
    ckpt_dirs.begin(root, 8)  # a save that died: left as .tmp, never loaded
    assert (root / "latest").read_text() == "iter_0000006\n"
    assert ckpt_dirs.latest(root) == root / "iter_0000006"
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000006", "iter_0000008.tmp", "latest"]
    saved(root, 8)  # the next save replaces the leftover
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000006", "iter_0000008", "latest"]


def test_the_runs_own_latest_wins_then_ckpt_load(tmp_path):
    run_dir, other = tmp_path / "run", fake_checkpoint(tmp_path / "converted")
    assert ckpt_dirs.resolve(ckpt(), run_dir) == (None, False)
    assert ckpt_dirs.resolve(ckpt(load="auto"), run_dir) == (None, False)
    assert ckpt_dirs.resolve(ckpt(load=str(other), finetune=True), run_dir) == (other, True)
    saved(run_dir / "checkpoints", 3)
    mine = run_dir / "checkpoints" / "iter_0000003"
    assert ckpt_dirs.resolve(ckpt(load=str(other), finetune=True), run_dir) == (mine, False)
    # a root with `latest` (another run's checkpoints) loads the checkpoint it names
    assert ckpt_dirs.resolve(ckpt(load=str(run_dir / "checkpoints")), tmp_path / "new") == (mine, False)
    assert ckpt_dirs.resolve(ckpt(dir=str(run_dir / "checkpoints")), tmp_path / "new") == (mine, False)


def test_finetune_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="ckpt.finetune=true needs ckpt.load=DIR"):
        ckpt_dirs.resolve(ckpt(finetune=True), tmp_path)


def test_key_alternatives():
    from mixexp.ckpt_compat import alternatives

    assert alternatives("optimizer.state.param.output_layer.weight") == [
        "optimizer.state.fp32_param.output_layer.weight", "output_layer.weight"]
    assert alternatives("optimizer.state.exp_avg.decoder.layers.input_layernorm.weight") == [
        "optimizer.state.exp_avg.decoder.layers.self_attention.linear_qkv.layer_norm_weight"]
    assert alternatives("decoder.layers.mlp.router.weight") == []
