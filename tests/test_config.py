"""Typed configs: validation that names the flag, YAML loading, flags over YAML."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from pos2distill.config import (DataOptions, DemoConfig, ExperimentConfig, GridConfig,
                                ModelOptions, PairsConfig, ProbeConfig, ReportConfig, TeachConfig,
                                TrainConfig)
from pos2distill.options import add_arguments, from_args, from_mapping, from_yaml, to_json
from pos2distill.errors import ConfigError

ALL = [ProbeConfig, TeachConfig, PairsConfig, TrainConfig, ReportConfig, DemoConfig,
       ExperimentConfig, GridConfig]


@pytest.mark.parametrize("cls", ALL)
def test_defaults_are_valid_and_every_field_has_help(cls: type) -> None:
    cfg = cls()
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    assert from_mapping(cls, dataclasses.asdict(cfg)) == cfg
    assert to_json(cfg).startswith("{")


@pytest.mark.parametrize("cls, values, flag", [
    (ProbeConfig, {"template": "nope"}, "--template"),
    (ProbeConfig, {"chat": "maybe"}, "--chat"),
    (ProbeConfig, {"dtype": "int8"}, "--dtype"),
    (ProbeConfig, {"data_format": "csv"}, "--data-format"),
    (ProbeConfig, {"n_documents": 0}, "--n-documents"),
    (ProbeConfig, {"limit": -1}, "--limit"),
    (ProbeConfig, {"batch_size": 0}, "--batch-size"),
    (ProbeConfig, {"max_new_tokens": 0}, "--max-new-tokens"),
    (ProbeConfig, {"instruction": "   "}, "--instruction: only whitespace"),
    (TeachConfig, {"instruction": "\n\t"}, "--instruction: only whitespace"),
    (ExperimentConfig, {"instruction": " "}, "--instruction: only whitespace"),
    (TeachConfig, {"batch_size": -2}, "--batch-size"),
    (TeachConfig, {"advantageous": "auto"}, "--advantageous auto needs --probe"),
    (PairsConfig, {"anchors": -1}, "--anchors"),
    (TrainConfig, {"method": "r3"}, "--method"),
    (TrainConfig, {"anchor_weight": -0.5}, "--anchor-weight"),
    (TrainConfig, {"temperature": 0.0}, "--temperature"),
    (TrainConfig, {"epochs": 0.0}, "--epochs"),
    (TrainConfig, {"min_lr_ratio": 1.5}, "--min-lr-ratio"),
    (DemoConfig, {"n_test": 0}, "--n-test"),
    (DemoConfig, {"formula": "x"}, "--formula"),
])
def test_validation_names_the_flag(cls: type, values: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        cls(**values)


def test_probe_config_inherits_model_and_data_options() -> None:
    names = {f.name for f in dataclasses.fields(ProbeConfig)}
    assert {f.name for f in dataclasses.fields(ModelOptions)} <= names
    assert {f.name for f in dataclasses.fields(DataOptions)} <= names
    assert TeachConfig().data == "synthetic:train" and ProbeConfig().data == "synthetic:test"


def test_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.001\nbatch-size: 8\nformula: paper\nepochs: 2\n")
    cfg = from_yaml(TrainConfig, path)
    assert (cfg.lr, cfg.batch_size, cfg.formula, cfg.epochs) == (0.001, 8, "paper", 2.0)
    assert isinstance(cfg.epochs, float)
    assert cfg.seed == TrainConfig().seed


def test_from_yaml_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("befor: x\nzzz: 1\nout: y\n")
    with pytest.raises(ConfigError) as info:
        from_yaml(ReportConfig, path)
    assert str(info.value) == (f"{path}: unknown key(s) befor, zzz; "
                               "known keys: after, before, out, title")


@pytest.mark.parametrize("text, message", [
    ("lr: [1, 2]\n", "key 'lr' must be float"),
    ("formula: 3\n", "key 'formula' must be str"),
    ("batch_size: 2.5\n", "key 'batch_size' must be int"),
    ("- a\n- b\n", "must hold a mapping"),
    ("lr: [\n", "is not valid YAML"),
])
def test_from_yaml_bad_values(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        from_yaml(TrainConfig, path)


def test_from_yaml_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        from_yaml(TrainConfig, tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert from_yaml(TrainConfig, tmp_path / "empty.yaml") == TrainConfig()


def _parse(cls: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return parser.parse_args(argv)


def test_flags_win_over_yaml(tmp_path: Path) -> None:
    path = tmp_path / "pairs.yaml"
    path.write_text("K: 6\nanchors: 2\nfirst_line: false\nseed: 3\n")
    cfg = from_args(PairsConfig, _parse(PairsConfig, ["--config", str(path), "--K", "2",
                                                      "--first-line"]))
    assert (cfg.K, cfg.anchors, cfg.first_line, cfg.seed) == (2, 2, True, 3)
    cfg = from_args(PairsConfig, _parse(PairsConfig, ["--no-first-line"]))
    assert cfg == PairsConfig(first_line=False)


def test_flag_types() -> None:
    cfg = from_args(TrainConfig, _parse(TrainConfig, ["--lr", "1e-3", "--batch-size", "8",
                                                      "--grad-accum", "2"]))
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum) == (1e-3, 8, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        from_args(TrainConfig, _parse(TrainConfig, ["--batch-size", "5", "--grad-accum", "2"]))


def test_instruction_flag_and_yaml(tmp_path: Path) -> None:
    assert ProbeConfig().instruction == "" and TeachConfig().instruction == ""
    cfg = from_args(ProbeConfig, _parse(ProbeConfig, ["--instruction", "Answer the question."]))
    assert cfg.instruction == "Answer the question."
    path = tmp_path / "exp.yaml"
    path.write_text("instruction: |-\n  You are a careful assistant.\n  Be brief.\n")
    assert from_yaml(ExperimentConfig, path).instruction == ("You are a careful assistant.\n"
                                                             "Be brief.")


def test_instruction_counts_in_the_fingerprint_only_when_set() -> None:
    from pos2distill.runinfo import fingerprint

    plain, custom = ProbeConfig(), ProbeConfig(instruction="Answer the question.")
    # Unset, it leaves the fingerprint of runs made before it existed unchanged ...
    assert fingerprint(plain) == fingerprint(plain, ignore=("instruction",))
    # ... set, a run with another instruction never resumes this one.
    assert fingerprint(custom) != fingerprint(custom, ignore=("instruction",))
    assert fingerprint(custom) != fingerprint(plain)


def test_yaml_scientific_notation(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("lr: 3e-6\n")
    assert from_yaml(TrainConfig, path).lr == 3e-6


def test_yaml_bool_is_not_an_int(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("batch_size: yes\n")
    with pytest.raises(ConfigError, match="batch_size"):
        from_yaml(ProbeConfig, path)


def test_list_and_mapping_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ExperimentConfig)
    cfg = from_args(ExperimentConfig, parser.parse_args(
        ["--report-to", "", "--train", '{"lr": 0.001}', "--grids", '[{"K": [0, 4], "seeds": [1]}]']))
    assert cfg.train == {"lr": 0.001} and cfg.report_to == []
    assert cfg.grid_configs()[0].K == [0, 4] and cfg.grid_configs()[0].seeds == [1]
    with pytest.raises(SystemExit):
        parser.parse_args(["--train", "{lr: 1"])
    grid_parser = argparse.ArgumentParser()
    add_arguments(grid_parser, GridConfig)
    assert from_args(GridConfig, grid_parser.parse_args(["--K", "1,2,8"])).K == [1, 2, 8]
    with pytest.raises(SystemExit):
        grid_parser.parse_args(["--K", "1,two"])


def test_yaml_list_and_mapping_types(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train: [1]\n")
    with pytest.raises(ConfigError, match="key 'train' must be a mapping"):
        from_yaml(ExperimentConfig, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("report_to: [1]\n")
    with pytest.raises(ConfigError, match="key 'report_to' must be a list of str"):
        from_yaml(ExperimentConfig, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("grids: [{seeds: [true]}]\n")
    with pytest.raises(ConfigError, match="key 'seeds' must be a list of int"):
        from_yaml(ExperimentConfig, tmp_path / "c.yaml")
