import pytest

from raybilevel.config import ConfigError, dump_config, load_config


def test_defaults_are_the_toy_world_and_validate():
    cfg = load_config()
    assert cfg.world.kind == "toy" and cfg.solver.name == "alternating" and cfg.solver.K == 10


def test_overrides_are_typed():
    cfg = load_config(None, ["solver.K=5", "lower.taps=[down, mid]", "engine.precision=bf16", "lower.lr=1e-3"])
    assert cfg.solver.K == 5 and cfg.lower.taps == ["down", "mid"] and cfg.lower.lr == 1e-3


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  name: penalty\n  K: 20\n")
    cfg = load_config(path, ["solver.K=4"])
    assert (cfg.solver.name, cfg.solver.K) == ("penalty", 4)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["solver.name=joint", "pruning.sparsity=0.3"])
    (tmp_path / "r.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "r.yaml") == cfg


@pytest.mark.parametrize("override, field, words", [
    (["solver.k=3"], "solver.k", "did you mean 'K'"),
    (["pruning.sparsity=1.0"], "pruning.sparsity", "0 <= sparsity < 1"),
    (["solver.lam=-1"], "solver.lam", "lam >= 0"),
    (["solver.K=0"], "solver.K", ">= 1"),
    (["engine.zero_stage=4"], "engine.zero_stage", "0, 1, 2 or 3"),
    (["lower.lr=fast"], "lower.lr", "expected a number"),
    (["lower.taps=[side]"], "lower.taps", "not a tap"),
    (["upper.anchor=other"], "upper.anchor", "empty or neighbour"),
    (["world.kind=diffusers"], "world.pretrained", "diffusers folder or hub id"),
    (["nosuch.key=1"], "nosuch", "unknown key"),
    (["solver=3"], "solver", "expected a mapping"),
    (["solver.K"], "--set solver.K", "key.path=value"),
])
def test_bad_values_name_the_field_and_the_fix(override, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    message = str(info.value)
    assert f"'{field}'" in message and words in message and "\n" not in message


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("solver:\n  K: [1,\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no file at"):
        load_config(tmp_path / "nope.yaml")
