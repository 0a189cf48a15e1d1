"""Flat YAML configs and typed settings: validation, CLI precedence, model creation, one file for all commands."""

from __future__ import annotations

import glob
import os

import pytest

import dvt_ms
from dvt_ms.config import ConfigError, build_parser, load_yaml, resolve
from dvt_ms.options import (
    ALL_OPTIONS,
    COMMAND_SETTINGS,
    ConvertSettings,
    EvalSettings,
    ModelSettings,
    PredictSettings,
    ServeSettings,
    TrainSettings,
    parse_command,
)
from tests.helpers import load_config

MODEL_OPTIONS = ModelSettings.options()
EVAL_OPTIONS = EvalSettings.options()
TRAIN_OPTIONS = TrainSettings.options()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_shipped_configs_load_and_name_a_model(path):
    cfg = load_config(path)
    spec = ModelSettings.from_config(cfg).model_spec()
    assert cfg["model"] in dvt_ms.list_models()
    assert spec.num_exits >= 2


def test_tiny_config_is_what_tests_rely_on():
    spec = ModelSettings.from_config(load_config(os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml"))).model_spec()
    assert spec.img_size == 32 and spec.grids() == [4, 6, 8] and spec.num_classes == 10
    assert {(e.embed_dim, e.depth, e.num_heads) for e in spec.exits} == {(64, 4, 2)}
    assert all(e.feature_reuse and e.relation_reuse for e in spec.exits[1:])


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: dvt_vit\nnum_clases: 10\n")
    expected = r"bad.yaml: unknown config key 'num_clases' \(did you mean 'num_classes'\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_yaml(path, MODEL_OPTIONS)


def test_wrong_type_and_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: dvt_vit\nnum_classes: ten\n")
    with pytest.raises(ConfigError, match="num_classes must be an integer, got 'ten'"):
        load_yaml(path, MODEL_OPTIONS)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="flat mapping"):
        load_yaml(path, MODEL_OPTIONS)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml", MODEL_OPTIONS)


def test_cli_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nimg_size: 32\nexit_grids: [4, 8]\nnum_classes: 3\n")
    cfg = resolve(MODEL_OPTIONS, ["-c", str(path), "--num_classes", "7", "--exit_grids", "2,4,8",
                                  "--feature_reuse", "False"])
    assert cfg["num_classes"] == 7 and cfg["exit_grids"] == [2, 4, 8] and cfg["feature_reuse"] is False
    assert cfg["img_size"] == 32
    model = ModelSettings.from_config({**cfg, "embed_dim": 32, "depth": 1, "num_heads": 2}).build_model()
    assert model.num_exits == 3


def test_create_model_errors():
    with pytest.raises(ValueError, match=r"unknown model 'dvt_t2t_vit12'\. Did you mean"):
        dvt_ms.create_model("dvt_t2t_vit12")
    with pytest.raises(ValueError, match="has no argument"):
        dvt_ms.create_model("dvt_deit_small", t2t_unfolds=[[(7, 4, 2)] * 3] * 3)
    with pytest.raises(ValueError, match="exit_grids asks for"):
        dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 6, 8], patch_sizes=[8, 8, 8])
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 8], embed_dim=30, num_heads=4)


def test_exponent_numbers_from_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nlr: 1e-3\nmin_lr: 1.0e-5\ncrop_scale: [8e-2, 1]\n")
    cfg = load_config(path)
    assert cfg["lr"] == 1e-3 and cfg["min_lr"] == 1e-5 and cfg["crop_scale"] == [0.08, 1.0]
    assert resolve(TRAIN_OPTIONS, ["--lr", "2e-4"])["lr"] == 2e-4


def test_each_command_accepts_the_keys_of_the_commands_sharing_its_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nlr: 1e-3\ncalib_size: 100\n")
    cfg = resolve(EVAL_OPTIONS, ["-c", str(path)], shared_with=TRAIN_OPTIONS)
    assert cfg["lr"] == 1e-3 and cfg["calib_size"] == 100
    with pytest.raises(SystemExit):  # a training key is not a flag of the evaluation command
        resolve(EVAL_OPTIONS, ["--lr", "1e-3"], shared_with=TRAIN_OPTIONS)
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):  # nor a key when nobody shares it
        resolve(EVAL_OPTIONS, ["-c", str(path)])
    path.write_text("model: dvt_vit\nlr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number"):  # shared keys are still validated
        resolve(EVAL_OPTIONS, ["-c", str(path)], shared_with=TRAIN_OPTIONS)


def test_one_config_file_serves_every_command(tmp_path):
    path = tmp_path / "all.yaml"  # keys of training, evaluation, export and prediction in one file
    for name in ("a.png", "names.txt", "m.ckpt", "s.pth"):  # the inputs it names (checked before a command runs)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "out" / "x").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    path.write_text("model: dvt_vit\nlr: 1e-3\ncalib_size: 100\nimages: [a.png]\ntop_k: 3\nexported: out/x\n"
                    "class_names: names.txt\nckpt: m.ckpt\noutput_dir: out/o\ndata_dir: d\n")
    for cls in COMMAND_SETTINGS:
        extra = {ConvertSettings: ["--src", "s.pth", "--dst", "d.ckpt"],
                 PredictSettings: ["--exported", ""], ServeSettings: ["--exported", ""]}.get(cls, [])
        settings = parse_command(cls, ["-c", str(path), *extra], "", "test")
        assert getattr(settings, "model", "dvt_vit") == "dvt_vit" and settings.config_file == str(path)
        assert getattr(settings, "data_dir", "d") == "d"
    assert parse_command(EvalSettings, ["-c", str(path)], "", "t").calib_size == 100
    assert parse_command(PredictSettings, ["-c", str(path), "--exported", ""], "", "t").top_k == 3


def test_options_of_the_same_name_agree_between_commands():
    kinds: dict[str, tuple] = {}
    for cls in COMMAND_SETTINGS:
        for option in cls.options():
            seen = kinds.setdefault(option.name, (option.kind, option.choices, cls.__name__))
            assert seen[:2] == (option.kind, option.choices), f"{option.name}: {cls.__name__} vs {seen[2]}"
    assert {o.name for o in ALL_OPTIONS} == set(kinds)


def test_settings_check_values_as_flags_do():
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        EvalSettings(ckpt="m.ckpt", eval_mode=0, batch_size=0)
    with pytest.raises(ConfigError, match="eval_mode must be one of 0, 1, 2, got 3"):
        EvalSettings(ckpt="m.ckpt", eval_mode=3)
    with pytest.raises(ConfigError, match="either --thresholds or --budget"):
        EvalSettings(ckpt="m.ckpt", eval_mode=0, thresholds=[0.5, 0.6], budget=1.0)
    with pytest.raises(ConfigError, match="needs --data_dir"):
        EvalSettings(ckpt="m.ckpt", eval_mode=2)
    with pytest.raises(ConfigError, match="--warmup_epochs must lie in"):
        TrainSettings(model="dvt_vit", data_dir="d", epoch_size=2, warmup_epochs=5)
    settings = EvalSettings(ckpt="m.ckpt", eval_mode=0, batch_size="8")  # converted like a flag value
    assert settings.batch_size == 8 and settings.replace(batch_size=16).batch_size == 16
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        settings.replace(batch_size=-1)
    assert TrainSettings(model="a", data_dir="d").betas is not TrainSettings(model="b", data_dir="d").betas


def test_help_shows_each_default_once_and_aliases_work(capsys, tmp_path):
    with pytest.raises(SystemExit):
        build_parser(TRAIN_OPTIONS, prog="t").parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "[default: 128]" in text
    assert text.count("default: 128") == 1
    (tmp_path / "a.pth").write_bytes(b"")
    settings = parse_command(ConvertSettings, ["--src", "a.pth", "--dst", "b.ckpt", "--to-torch"], "", "t")
    assert settings.to_torch is True
