"""experiment: planning and aggregation by hand, every shipped config, and a small grid on a tiny
random model that is stopped in the middle, resumed without redoing finished runs, and tabulated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pos2distill import cli
from pos2distill.recipes import experiment
from pos2distill.data import synthetic
from pos2distill.config import ExperimentConfig, GridConfig
from pos2distill.tasks import get_task
from pos2distill.options import from_yaml
from pos2distill.errors import ConfigError
from pos2distill.runinfo import fingerprint

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------

def test_plan_runs_dedupes_across_grids_and_unions_documents() -> None:
    runs = experiment.plan_runs([
        GridConfig(methods=["kl", "r1"], seeds=[0, 1], K=[4], n_train=[100], eval_documents=[20]),
        GridConfig(methods=["r1"], seeds=[0], K=[0, 4], n_train=[100], eval_documents=[30, 20]),
    ])
    keys = [r.key for r in runs]
    assert keys == ["kl-K4-n100-seed0", "r1-K4-n100-seed0", "kl-K4-n100-seed1",
                    "r1-K4-n100-seed1", "r1-K0-n100-seed0"]
    by_key = {r.key: r for r in runs}
    assert by_key["r1-K4-n100-seed0"].eval_documents == (20, 30)
    assert by_key["kl-K4-n100-seed1"].eval_documents == (20,)
    assert not by_key["r1-K0-n100-seed0"].trains
    assert experiment.Run("kl+align", 4, 10, 2, (20,)).key == "kl-align-K4-n10-seed2"


@pytest.mark.parametrize("spec, n, expected", [
    ("even:5", 20, "0,5,10,14,19"), ("even:5", 30, "0,7,14,22,29"), ("even:2", 4, "0,3"),
    ("even:50", 4, "0,1,2,3"), ("all", 4, "all"), ("0,4", 10, "0,4")])
def test_positions_for(spec: str, n: int, expected: str) -> None:
    assert get_task("retrieval").expand_slots(spec, n) == expected


@pytest.mark.parametrize("spec, message", [("even:x", "needs an integer"), ("even:1", "N >= 2"),
                                           ("0,25", "outside 0..19")])
def test_positions_for_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_task("retrieval").expand_slots(spec, 20)


def _ev(acc: dict[int, float], adv: int = 0) -> dict[str, Any]:
    values = list(acc.values())
    return {"accuracy_by_position": {str(p): a for p, a in acc.items()},
            "mean": sum(values) / len(values), "gap": max(values) - min(values),
            "n_per_position": 10, "adv_position": adv, "adv_accuracy": acc.get(adv)}


def _result(method: str, seed: int, acc: dict[int, float], K: int = 4) -> dict[str, Any]:
    return {"run": {"method": method, "K": K, "n_train": 100, "seed": seed},
            "eval": {"20": _ev(acc)}}


def test_aggregate_mean_and_std_over_seeds_by_hand() -> None:
    results = [_result("r1", 0, {0: 1.0, 9: 0.6}), _result("r1", 1, {0: 0.8, 9: 0.8}),
               _result("kl", 0, {0: 1.0, 9: 0.2})]
    rows = experiment.aggregate(results, {20: _ev({0: 1.0, 9: 0.0})})
    assert [(r["method"], r["K"]) for r in rows] == [("base", None), ("kl", 4), ("r1", 4)]
    r1 = rows[2]
    assert r1["seeds"] == [0, 1]
    assert r1["mean"] == pytest.approx(0.8)            # (0.8 + 0.8) / 2
    assert r1["mean_std"] == pytest.approx(0.0)
    assert r1["gap"] == pytest.approx(0.2)             # (0.4 + 0.0) / 2
    assert r1["gap_std"] == pytest.approx(0.4 / 2 ** 0.5)  # sample std of 0.4 and 0.0
    assert r1["adv_accuracy"] == pytest.approx(0.9)
    assert r1["adv_accuracy_std"] == pytest.approx(0.2 / 2 ** 0.5)
    assert r1["accuracy_by_position"] == pytest.approx({"0": 0.9, "9": 0.7})
    assert rows[1]["mean_std"] == 0.0                  # one seed
    table = experiment.markdown_table(rows)
    assert "| r1 | 4 | 100 | 20 | 2 | 0.800 ± 0.000 | 0.200 ± 0.283 | 0.900 ± 0.141 (1) |" in table
    assert "| kl | 4 | 100 | 20 | 1 | 0.600 | 0.800 | 1.000 (1) |" in table
    csv = experiment.csv_text(rows).splitlines()
    assert csv[0].endswith("acc_pos1,acc_pos10") and csv[3].startswith("r1,4,100,20,2,0.8")
    assert "| r1 | 4 | 100 | 0.90 | 0.70 |" in experiment.position_table(rows, 20)


def test_main_point() -> None:
    runs = experiment.plan_runs([GridConfig(methods=["kl", "r1"], K=[4], n_train=[50, 200]),
                                 GridConfig(methods=["r1"], K=[0, 1, 8], n_train=[200])])
    assert experiment.main_point(runs) == (4, 200)


def test_synthetic_training_questions_are_prefixes() -> None:
    """teach_subset relies on the first N questions not depending on the limit."""
    small = synthetic.generate("train", 7, seed=3, n_documents=6)
    large = synthetic.generate("train", 20, seed=3, n_documents=6)
    assert small == large[:7]


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def test_configs_are_shipped() -> None:
    assert {p.name for p in CONFIGS} >= {"ablation-tiny.yaml", "paper-nq-7b.yaml",
                                         "paper-musique-7b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = from_yaml(ExperimentConfig, path)
    runs = experiment.plan_runs(cfg.grid_configs())
    assert runs
    for run in runs:
        if run.trains:
            tc = experiment.train_config(cfg, run, "pairs.jsonl")
            assert tc.method == run.method and tc.seed == run.seed
        for d in run.eval_documents:
            experiment.probe_config(cfg, cfg.model, Path("p"), d)
    if cfg.model != "tiny":                   # paper-scale configs name a model folder to fill in
        assert "/" in cfg.model
    if cfg.task == "reasoning":
        assert {r.method for r in runs if r.trains} == {"r2"}
        n = cfg.n_documents
        assert experiment.adv_slot(cfg, n) == f"{n - 2},{n - 1}"      # the last two documents


def test_experiment_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train: pairs is set by the experiment itself"):
        ExperimentConfig(train={"pairs": "x"})
    with pytest.raises(ConfigError, match="train: unknown key"):
        ExperimentConfig(train={"lrr": 1})
    with pytest.raises(ConfigError, match="methods: r2 trains reasoning pairs; task retrieval trains"):
        ExperimentConfig(grids=[{"methods": ["r2"]}])
    with pytest.raises(ConfigError, match="grids\\[0\\]: key 'K' must be a list of int"):
        ExperimentConfig(grids=[{"K": "four"}])
    with pytest.raises(ConfigError, match="grids\\[1\\]: unknown key"):
        ExperimentConfig(grids=[{}, {"method": ["r1"]}])
    with pytest.raises(ConfigError, match="'seeds' is empty"):
        ExperimentConfig(grids=[{"seeds": []}])
    with pytest.raises(ConfigError, match="--report-to"):
        ExperimentConfig(report_to=["mlflow"])
    assert ExperimentConfig(grids=[{"K": 2}]).grid_configs()[0].K == [2]   # one value is a list


def test_instruction_reaches_teach_and_probes() -> None:
    custom = ExperimentConfig(instruction="Answer the question.", grids=[{"K": [4]}])
    (run,) = experiment.plan_runs(custom.grid_configs())
    assert experiment.teach_config(custom, 10).instruction == "Answer the question."
    assert experiment.probe_config(custom, "m", Path("p"), 20).instruction == "Answer the question."
    # A run is finished for one instruction only; without one, runs from before it existed are
    # still found (the unset field is left out of the fingerprint).
    plain = ExperimentConfig(grids=[{"K": [4]}])
    assert experiment.run_fingerprint(custom, run) != experiment.run_fingerprint(plain, run)
    teach_plain = experiment.teach_config(plain, 10)
    assert fingerprint(teach_plain) == fingerprint(teach_plain, ignore=("instruction",))


# ---------------------------------------------------------------------------------------------
# A small grid end to end
# ---------------------------------------------------------------------------------------------

def _write_config(path: Path, out: Path, model: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "out": str(out), "model": str(model), "n_documents": 4, "n_test": 3, "positions": "all",
        "train": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0},
        "generation": {"max_new_tokens": 4},
        "grids": [{"name": "methods", "methods": ["seqkd", "r1"], "seeds": [0], "K": [1],
                   "n_train": [4], "eval_documents": [4, 5]},
                  {"name": "K", "methods": ["r1"], "seeds": [0], "K": [0], "n_train": [4],
                   "eval_documents": [4]}]}))
    return path


class Stop(KeyboardInterrupt):
    """Stands in for Ctrl-C in the middle of the grid."""


def test_grid_stops_resumes_and_tabulates(tmp_path: Path, tiny_model_dir: Path, oracle_hf: Any,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pos2distill import modeling
    from pos2distill.stages import train

    out = tmp_path / "exp"
    config = _write_config(tmp_path / "exp.yaml", out, tiny_model_dir)
    real_train, real_load = train.main, modeling.load_causal_lm
    calls: dict[str, list] = {"train": [], "load": []}

    def counting_train(cfg: Any) -> Any:
        calls["train"].append(cfg.method)
        if stop_at_second_train and len(calls["train"]) == 2:
            raise Stop
        return real_train(cfg)

    def counting_load(path: str, **kw: Any) -> Any:
        calls["load"].append(str(path))
        return real_load(path, **kw)

    monkeypatch.setattr(train, "main", counting_train)
    monkeypatch.setattr(modeling, "load_causal_lm", counting_load)

    # 1. Stopped in the middle: the first run (seqkd) is finished, the second (r1) is not.
    stop_at_second_train = True
    assert cli.main(["-q", "experiment", str(config)]) == 130
    assert "interrupted; re-run the same command to resume" in capsys.readouterr().err
    assert calls["train"] == ["seqkd", "r1"]
    first = out / "runs" / "seqkd-K1-n4-seed0" / "result.json"
    assert first.exists() and not (out / "runs" / "r1-K1-n4-seed0" / "result.json").exists()
    first_text = first.read_text()

    # 2. Resumed: only the unfinished run trains and is probed; nothing else is redone.
    stop_at_second_train = False
    calls["train"].clear()
    calls["load"].clear()
    assert cli.main(["-q", "experiment", str(config)]) == 0
    assert calls["train"] == ["r1"]
    # The loaded models: r1's student (and its teacher copy), then r1's model for its 2 probes.
    trained = str(out / "runs" / "r1-K1-n4-seed0" / "train" / "model")
    assert calls["load"] == [str(tiny_model_dir), trained, trained]
    assert first.read_text() == first_text
    printed = capsys.readouterr().out
    assert f"results: {out / 'results.md'}" in printed

    # 3. The table and what it is made of.
    results = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["K"], r["documents"]): r for r in results["rows"]}
    assert set(rows) == {("base", None, 4), ("base", None, 5), ("seqkd", 1, 4), ("seqkd", 1, 5),
                         ("r1", 1, 4), ("r1", 1, 5), ("r1", 0, 4)}
    table = (out / "results.md").read_text()
    for method, K, docs in [("seqkd", 1, 4), ("r1", 1, 5), ("r1", 0, 4)]:
        assert f"| {method} | {K} | 4 | {docs} | 1 |" in table
    assert "Accuracy by gold position, 5 documents" in table
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 7
    for name in ["accuracy_by_position-d4.png", "accuracy_by_position-d5.png",
                 "accuracy_vs_K.png", "accuracy_vs_documents.png"]:
        assert (out / "plots" / name).stat().st_size > 1000, name
    assert not (out / "plots" / "accuracy_vs_n_train.png").exists()   # one training size only
    # Each trained run was evaluated with its own trained model, on the shared test prompts.
    r1 = json.loads((out / "runs" / "r1-K1-n4-seed0" / "result.json").read_text())
    assert r1["model"] == str(out / "runs" / "r1-K1-n4-seed0" / "train" / "model")
    probe_run = json.loads((out / "runs" / "r1-K1-n4-seed0" / "probe-d5" / "run.json").read_text())
    assert probe_run["config"]["model"] == r1["model"] and probe_run["config"]["n_documents"] == 5
    # Its card says how it was trained and holds its report against the base at each count.
    from pos2distill import modelcard

    card = (Path(r1["model"]) / "README.md").read_text()
    assert modelcard.split_card(card)[0]["tags"] == ["pos2distill", "positional-bias", "r1"]
    assert [k for k in ("retrieval-synthetic-test-d4", "retrieval-synthetic-test-d5")
            if f"<!-- pos2distill:result {k} -->" in card] == ["retrieval-synthetic-test-d4",
                                                               "retrieval-synthetic-test-d5"]
    assert (out / "runs" / "r1-K1-n4-seed0" / "report-d5" / "report.md").exists()
    assert r1["train"]["method"] == "r1" and r1["pairs"] == 8 and r1["teacher_kept"] == 4
    # One teach output and one pairs file served both methods.
    assert sorted(p.name for p in (out / "shared" / "pairs").glob("*.jsonl")) == [
        "n4-K1-seed0.jsonl"]
    assert (out / "shared" / "teach-n4.jsonl").exists()
    metrics = [json.loads(x) for x in
               (out / "runs" / "r1-K1-n4-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 2] and "train/kl_mean" in metrics[0]
    assert "eval_d5/mean" in metrics[-1]

    # 4. The K = 0 run is the base model: nothing trained, its numbers are the base probe's.
    k0 = json.loads((out / "runs" / "r1-K0-n4-seed0" / "result.json").read_text())
    assert k0["train"] is None and k0["model"] == str(tiny_model_dir)
    assert not (out / "runs" / "r1-K0-n4-seed0" / "train").exists()
    base = json.loads((out / "shared" / "probe-base-d4" / "summary.json").read_text())
    assert k0["eval"]["4"] == experiment.eval_summary(base, "0")
    k0_row, base_row = rows[("r1", 0, 4)], rows[("base", None, 4)]
    for key in ("mean", "gap", "adv_accuracy", "accuracy_by_position"):
        assert k0_row[key] == base_row[key]

    # 5. A finished grid is not redone at all.
    calls["train"].clear()
    calls["load"].clear()
    assert cli.main(["-q", "experiment", str(config)]) == 0
    assert calls == {"train": [], "load": []}


def test_shards_split_the_runs_and_share_the_stages(tmp_path: Path, tiny_model_dir: Path,
                                                    oracle_hf: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pos2distill.stages import train
    from pos2distill.options import from_yaml

    out = tmp_path / "exp"
    cfg = from_yaml(ExperimentConfig, _write_config(tmp_path / "exp.yaml", out, tiny_model_dir))
    real_train = train.main
    trained: list[str] = []
    monkeypatch.setattr(train, "main", lambda c: trained.append(c.out) or real_train(c))
    first = experiment.main(ExperimentConfig(**{**cfg.__dict__, "shard": "0/2"}))
    assert first["finished"] == 2 and len(trained) == 1        # runs 0 (seqkd) and 2 (K = 0)
    second = experiment.main(ExperimentConfig(**{**cfg.__dict__, "shard": "1/2"}))
    assert second["finished"] == 3 and len(trained) == 2       # run 1 (r1); the table is whole
    assert sorted(Path(p).parent.name for p in trained) == ["r1-K1-n4-seed0", "seqkd-K1-n4-seed0"]
    assert experiment.main(cfg)["finished"] == 3 and len(trained) == 2
    assert (out / "shared" / ".lock").exists()
    with pytest.raises(ConfigError, match="--shard: '2/2'"):
        ExperimentConfig(shard="2/2")


# ---------------------------------------------------------------------------------------------
# A small reasoning (R2) grid end to end
# ---------------------------------------------------------------------------------------------

def test_reasoning_config_errors() -> None:
    with pytest.raises(ConfigError, match="methods: r1 trains retrieval pairs; task reasoning trains r2"):
        ExperimentConfig(task="reasoning", grids=[{"methods": ["r1"]}])
    with pytest.raises(ConfigError, match="--configurations places the documents of --task reasoning"):
        ExperimentConfig(configurations="0,1", grids=[{"methods": ["r1"]}])
    cfg = ExperimentConfig(task="reasoning", grids=[{"methods": ["r2"]}])
    assert cfg.advantageous == "last" and cfg.template == "reasoning"
    assert ExperimentConfig().advantageous == "first"


def test_reasoning_grid_tabulates_em_by_configuration(tmp_path: Path, tiny_model_dir: Path,
                                                      reasoning_oracle_hf: Any) -> None:
    from pos2distill.stages import train

    out = tmp_path / "exp"
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(out), "model": str(tiny_model_dir), "task": "reasoning",
        "train_data": "synthetic-reasoning:train", "test_data": "synthetic-reasoning:test",
        "n_documents": 6, "n_test": 2, "configurations": "0,1;1,0;0,2;4,5",
        "train": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0},
        "generation": {"max_new_tokens": 8},
        "grids": [{"methods": ["r2"], "seeds": [0, 1], "K": [1], "n_train": [3],
                   "eval_documents": [6]}]}))
    trained = []
    real_train = train.main
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "main", lambda cfg: trained.append(cfg) or real_train(cfg))
        assert cli.main(["-q", "experiment", str(config)]) == 0
    assert [(c.method, c.seed) for c in trained] == [("r2", 0), ("r2", 1)]
    # The shared stages are the reasoning ones: CoT teacher at the last two documents, R2 pairs.
    teach_text = (out / "shared" / "teach-n3.jsonl").read_text()
    teach_rows = [json.loads(x) for x in teach_text.splitlines()]
    assert teach_rows and all(r["task"] == "reasoning" for r in teach_rows)
    pairs = (out / "shared" / "pairs" / "n3-K1-seed0.jsonl").read_text().splitlines()
    assert len(pairs) == len(teach_rows)                       # K = 1, no anchors
    # The oracle answers connected hops (0,1 and 4,5) only, whatever the model.
    results = json.loads((out / "results.json").read_text())
    by = {(r["method"], r["documents"]): r for r in results["rows"]}
    for method in ("base", "r2"):
        row = by[(method, 6)]
        assert row["accuracy_by_position"] == {"0,1": 1.0, "1,0": 0.0, "0,2": 0.0, "4,5": 1.0}
        assert row["mean"] == 0.5 and row["gap"] == 1.0
        assert row["adv_position"] == "4,5" and row["adv_accuracy"] == 1.0
    assert by[("r2", 6)]["seeds"] == [0, 1] and by[("r2", 6)]["mean_std"] == 0.0
    md = (out / "results.md").read_text()
    assert "| r2 | 1 | 3 | 6 | 2 | 0.500 ± 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 (5,6) |" in md
    assert "| 1,2 | 1,3 | 2,1 | 5,6 |" in md          # columns sorted by (first, second) hop
    assert (out / "results.csv").read_text().splitlines()[0].endswith(
        "acc_pos1-2,acc_pos1-3,acc_pos2-1,acc_pos5-6")
    assert (out / "plots" / "accuracy_by_configuration-d6.png").exists()
    # Re-run: every run is finished, nothing trains again, the table is the same.
    before = md
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "main", lambda cfg: trained.append(cfg) or real_train(cfg))
        assert cli.main(["-q", "experiment", str(config)]) == 0
    assert len(trained) == 2 and (out / "results.md").read_text() == before
