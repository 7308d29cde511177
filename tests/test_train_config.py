"""Config loading: TOML + overrides, unknown keys and wrong types are errors, the resolved config round-trips."""

import argparse
import json

import pytest

from rnnlab.errors import UserError
from rnnlab.train.cli_args import add_config_flags, config_overrides
from rnnlab.train.config import Config, config_to_dict, load_config, save_config


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nhidden_size = 64\ncell = "gru"\n[optim]\nlr = 1\n[task]\ncolumns = ["a", "b"]\n')
    cfg = load_config(path, {"model.hidden_size": 32})
    assert cfg.model.hidden_size == 32  # the flag beats the file
    assert cfg.model.cell == "gru"  # the file beats the default
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int is accepted for a float
    assert cfg.task.columns == ["a", "b"]
    assert cfg.train.seed == Config().train.seed


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nhiden_size = 64\n")
    with pytest.raises(UserError, match=r"unknown key 'hiden_size' in \[model\]"):
        load_config(path)
    with pytest.raises(UserError, match=r"unknown section \[modle\]"):
        load_config(None, {"modle.hidden_size": 3})


def test_wrong_type_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nhidden_size = "big"\n')
    with pytest.raises(UserError, match=r"model.hidden_size should be of type int, got str"):
        load_config(path)
    with pytest.raises(UserError, match=r"train.max_steps should be of type int, got bool"):
        load_config(None, {"train.max_steps": True})
    with pytest.raises(UserError, match=r"task.columns should be a list"):
        load_config(None, {"task.columns": "a"})


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(UserError, match="cannot parse"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {"model.hidden_size": 7, "task.target": ["x"], "run.progress": False})
    save_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 7
    assert load_config(tmp_path / "config.json") == cfg


def test_every_field_has_a_flag_with_help():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    helps = {a.dest: a.help for a in parser._actions if a.dest.startswith("cfg__")}
    n_fields = sum(len(section) for section in config_to_dict(Config()).values())
    assert len(helps) == n_fields and all(h and len(h) > 10 for h in helps.values())
    args = parser.parse_args(["--hidden-size", "9", "--task", "sine", "--no-progress", "--columns", "a", "b"])
    assert config_overrides(args) == {"model.hidden_size": 9, "task.name": "sine", "run.progress": False,
                                      "task.columns": ["a", "b"]}


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert len(files) >= 5
    for f in files:
        load_config(f)  # no unknown keys, no wrong types
    # the main job's file is the defaults, spelled out
    assert load_config(Path(__file__).parent.parent / "configs" / "shakespeare.toml") == Config()
