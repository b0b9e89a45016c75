"""Config groups compose in every combination; the schemas reject wrong types and unknown keys."""

import itertools
from pathlib import Path

import pytest

from conftest import REPO, compose
from mixexp.layout import validate


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_every_group_combination_composes():
    combos = itertools.product(options("model"), options("hardware"), options("data"), options("optim"),
                               options("logger"), options("engine"))
    count = 0
    for model, hardware, data, optim, logger, engine in combos:
        cfg = compose(f"model={model}", f"hardware={hardware}", f"data={data}", f"optim={optim}",
                      f"logger={logger}", f"engine={engine}")
        assert (cfg.model.name, cfg.hardware.name, cfg.data.name, cfg.logger.name) == (model, hardware, data, logger)
        count += 1
    assert count >= 3 * 5 * 3 * 2 * 2


@pytest.mark.parametrize("parallel", options("parallel"))
def test_every_layout_composes_and_names_itself(parallel):
    cfg = compose(f"parallel={parallel}")
    assert cfg.parallel.name == parallel


SMALL = ["single", "tp2", "pp2", "ep2", "ep2_allgather", "cp2", "dp2", "tp2_pp2", "tp2_ep2", "pp2_vpp2"]


@pytest.mark.parametrize("parallel", SMALL)
def test_small_layouts_validate_on_cpu_with_the_tiny_model(parallel):
    assert validate(compose(f"parallel={parallel}")).world_size in (1, 2, 4)


@pytest.mark.parametrize("parallel", ["tp8_pp2_cp4", "tp8_cp4", "tp8_pp4_cp2", "tp1_pp4_ep8_vpp8", "tp2_ep8"])
def test_published_layouts_validate_for_8x7b_on_64_npus(parallel):
    cfg = compose("model=mixtral_8x7b", f"parallel={parallel}", "hardware=ascend_910b", "cluster.nnodes=8",
                  "train.seq_length=32768", "train.global_batch_size=64", "train.micro_batch_size=1")
    assert validate(cfg).world_size == 64


def test_published_model_shapes():
    m = compose("model=mixtral_8x7b").model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
            m.vocab_size, m.rotary_base, m.norm_epsilon, m.num_experts, m.moe_router_topk, m.untie_embeddings) == \
        (32, 4096, 14336, 32, 8, 32000, 1e6, 1e-5, 8, 2, True)
    m = compose("model=mixtral_8x22b").model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups) == \
        (56, 6144, 16384, 48, 8)


def test_wrong_type_fails_at_compose():
    with pytest.raises(Exception, match="Error merging override parallel.tp=two") as err:
        compose("parallel.tp=two")
    assert "Value 'two' of type 'str' could not be converted to Integer" in str(err.value.__cause__)


def test_unknown_key_fails_at_compose():
    with pytest.raises(Exception, match="Could not override 'parallel.tpp'") as err:
        compose("parallel.tpp=2")
    assert "Key 'tpp' not in 'ParallelConfig'" in str(err.value.__cause__)


def test_unknown_key_in_a_yaml_file_fails(tmp_path: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "model" / "broken.yaml").write_text("defaults:\n  - model_schema\n  - _self_\nname: broken\n"
                                                "num_layer: 4\n")
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        with pytest.raises(Exception, match="num_layer"):
            hydra_compose("train", overrides=["model=broken"])
