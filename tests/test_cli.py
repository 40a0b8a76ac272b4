"""The CLI dispatches: --help of every subcommand, one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pos2distill import __version__, cli
from pos2distill.config import (AnalyzeConfig, CacheConfig, CrossTaskConfig, DemoConfig,
                                ExperimentConfig, PairsConfig, ProbeConfig, ReportConfig,
                                TeachConfig, TrainConfig)

COMMANDS = {"probe": ProbeConfig, "teach": TeachConfig, "pairs": PairsConfig,
            "cache": CacheConfig, "train": TrainConfig, "report": ReportConfig,
            "crosstask": CrossTaskConfig, "demo": DemoConfig, "experiment": ExperimentConfig,
            "analyze": AnalyzeConfig}


def test_commands_are_the_documented_ones() -> None:
    assert {name: cls for name, (cls, _, _) in cli.COMMANDS.items()} == COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_mentions_every_flag(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: pos2distill {command}")
    for f in dataclasses.fields(COMMANDS[command]):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        # The field's doc is the flag's help (first words are enough: argparse wraps lines).
        assert " ".join(f.metadata["help"].split()[:2]) in " ".join(text.split())
    assert "--config" in text


def test_top_level_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pos2distill {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_yaml_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.yaml"
    path.write_text("befor: runs/a\nafter: runs/b\n")
    assert cli.main(["report", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == (f"pos2distill report: error: {path}: unknown key(s) befor; "
                   "known keys: after, before, out, title\n")


def test_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["-q", "probe", "--model", "/does/not/exist", "--limit", "1",
                     "--out", str(tmp_path / "p")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pos2distill probe: error: --model: /does/not/exist does not exist")
    assert not (tmp_path / "p").exists()           # refused before writing anything


def test_folder_without_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "probe", "--model", str(tmp_path), "--limit", "1",
                     "--out", str(tmp_path / "p")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "train", "--pairs", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err == f"pos2distill train: error: {tmp_path / 'nope.jsonl'}: file not found\n"


def test_report_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = {"by_position": [{"position": 0, "accuracy": 1.0, "stderr": 0.0, "count": 1}],
         "mean": 1.0, "gap": 0.0, "best_position": 0, "worst_position": 0, "n_per_position": 1}
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(s))
    code = cli.main(["-q", "report", "--before", str(tmp_path / "b"), "--after",
                     str(tmp_path / "a"), "--out", str(tmp_path / "r")])
    assert code == 0
    out = capsys.readouterr().out
    assert out == (f"report: {tmp_path / 'r' / 'report.md'}\n"
                   f"plot:   {tmp_path / 'r' / 'accuracy_by_position.png'}\n")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pos2distill", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_bad_flag_value_is_one_line_without_traceback() -> None:
    proc = _run("train", "--formula", "nope")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr == ("pos2distill train: error: --formula: 'nope' is not one of "
                           "pos2distill, paper, uniform\n")


@pytest.mark.parametrize("command", ["probe", "teach", "experiment"])
def test_blank_instruction_is_one_line(command: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", command, "--instruction", " \t", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (f"pos2distill {command}: error: --instruction: only whitespace; give the "
                   "instruction text, or leave it empty for the template's own\n")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("n", ["1", "500"])
def test_synthetic_n_documents_out_of_range(n: str, tmp_path: Path, tiny_model_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["-q", "probe", "--model", str(tiny_model_dir), "--n-documents", n,
                     "--limit", "1", "--out", str(tmp_path / "p")])
    assert code == 2
    assert "--n-documents" in capsys.readouterr().err


def _save_not_causal(kind: str, path: Path, tok: object) -> None:
    from transformers import (BertConfig, BertModel, LlamaConfig, LlamaForSequenceClassification,
                              T5Config)

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    if kind == "bert-config":
        BertConfig(**small).save_pretrained(path)
    elif kind == "bert-weights":
        BertModel(BertConfig(**small)).save_pretrained(path)
    elif kind == "classifier":
        LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), num_key_value_heads=2,
                                                   **small)).save_pretrained(path)
    else:
        T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(path)
    tok.save_pretrained(path)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind, reason", [
    ("bert-config", "bert: an encoder"), ("bert-weights", "bert: saved as BertModel"),
    ("classifier", "llama: saved as LlamaForSequenceClassification"),
    ("t5", "t5: an encoder-decoder model")])
@pytest.mark.parametrize("command", ["probe", "teach"])
def test_model_that_is_not_a_causal_lm(command: str, kind: str, reason: str, tmp_path: Path,
                                       tok: object, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / kind
    _save_not_causal(kind, model, tok)
    out = tmp_path / ("p" if command == "probe" else "t.jsonl")
    assert cli.main(["-q", command, "--model", str(model), "--limit", "1", "--n-documents", "3",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pos2distill {command}: error: --model: {model} is not a causal "
                          f"language model ({reason}")
    assert not out.exists()


def _bad_sources(tmp_path: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (--data, more flags, the one error line): a Parquet file of unknown columns, a
    DatasetDict folder without the split asked for, a hub name."""
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"query": "q", "passages": ["p"]}]).to_parquet(
        str(tmp_path / "odd.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"query": "q"}])}).save_to_disk(
        str(tmp_path / "dd"))
    return {
        "parquet": (str(tmp_path / "odd.parquet"), [],
                    f"{tmp_path / 'odd.parquet'}: cannot detect the format from columns "
                    "['passages', 'query']; expected one of: records"),
        "split": (str(tmp_path / "dd"), ["--split", "test"],
                  f"--split: {tmp_path / 'dd'} has no split 'test'; its splits are train"),
        "hub": ("org/name", [], "--data: 'org/name' is not a local file or folder, and datasets "
                "are never downloaded: pass a local path"),
    }


@pytest.mark.parametrize("case", ["parquet", "split", "hub"])
@pytest.mark.parametrize("command", ["probe", "teach"])
def test_bad_data_sources_are_one_line(case: str, command: str, tmp_path: Path,
                                       tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    data, flags, message = _bad_sources(tmp_path)[case]
    capsys.readouterr()   # the fixtures' progress bars
    code = cli.main(["-q", command, "--model", str(tiny_model_dir), "--data", data, *flags,
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"pos2distill {command}: error: {message}")
    assert not (tmp_path / "o").exists()
