import pytest

from mgvsr.config import Config, ConfigError, load_config, parse_override


def test_defaults_are_the_basicvsr_recipe():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 2e-4 and cfg.optim.betas == [0.9, 0.99]
    assert cfg.optim.flow_lr_mult == 0.125 and cfg.optim.fix_flow_iters == 5000
    assert cfg.schedule.num_frames == 15 and cfg.schedule.patch_size == 64
    assert cfg.optim.loss == "charbonnier" and cfg.optim.eta_min == 1e-7


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_feat: 16\nschedule:\n  kind: multigrid\n")
    cfg = load_config(path, ["train.seed=7", "schedule.spatial_stages=[16, 24]", "optim.lr=1"])
    assert cfg.model.num_feat == 16
    assert cfg.schedule.kind == "multigrid"
    assert cfg.train.seed == 7
    assert cfg.schedule.spatial_stages == [16, 24]
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    # YAML 1.1 reads 2e-3 (no dot) as a string; float fields accept it
    assert load_config(path, ["optim.lr=2e-3"]).optim.lr == 0.002


def test_nested_dataset_override_creates_section():
    cfg = load_config(None, ["data.val.root=/x", "data.val.kind=vid4"])
    assert cfg.data.val is not None and cfg.data.val.root == "/x" and cfg.data.val.kind == "vid4"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.num_feats=3", "unknown key 'model.num_feats'"),
        ("model.name=swinir", "model.name: 'swinir' is not allowed"),
        ("train.seed=abc", "train.seed: expected an integer"),
        ("schedule.patch_size=8", "schedule.patch_size"),
        ("schedule.stage_shares=[1]", "schedule.stage_shares"),
        ("optim.lr_scaling=linear", "optim.ref_batch"),
        ("bogus.x=1", "unknown key 'bogus'"),
        ("train.dist_timeout_min=0", "train.dist_timeout_min: must be > 0"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert needle in str(info.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_config_errors_are_mgvsr_errors():
    from mgvsr.errors import MgvsrError

    assert load_config().train.dist_timeout_min == 30
    with pytest.raises(MgvsrError):  # reported by `mgvsr` in one line, no traceback
        load_config(None, ["train.seed=x"])
    with pytest.raises(ValueError):  # and still a ValueError, as before
        load_config(None, ["train.seed=x"])
