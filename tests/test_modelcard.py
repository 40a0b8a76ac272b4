"""Model cards: the metadata the hub reads and the body of a trained model's card, the base model's
license and hub id, and the results section that report fills (blocks replaced by key, plots
copied beside the card, cards of others left alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import save_model_dir
from pos2distill import modelcard
from pos2distill.config import TrainConfig
from pos2distill.runinfo import file_sha256
from pos2distill.stages import train

CARD_WITH_LICENSE = """---
license: other
license_name: tiny-license
license_link: LICENSE
tags: [text-generation]
---
# A base model
"""


def test_split_and_render_round_trip() -> None:
    meta, body = modelcard.split_card(CARD_WITH_LICENSE)
    assert meta == {"license": "other", "license_name": "tiny-license", "license_link": "LICENSE",
                    "tags": ["text-generation"]}
    assert body == "# A base model\n"
    assert modelcard.split_card(modelcard.render_card(meta, body)) == (meta, body)
    # No header, an unclosed one, or one that is not a mapping: no metadata, the text is the body.
    for text in ("# title\n", "---\nlicense: mit\n", "---\n- a\n---\nbody\n", "---\n[: x\n---\n"):
        assert modelcard.split_card(text) == ({}, text)


def test_hub_id_from_a_cache_path(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert modelcard.hub_id(snapshot) == "Qwen/Qwen2.5-7B-Instruct"
    assert modelcard.hub_id(tmp_path) == ""
    assert modelcard.hub_id(tmp_path / "models--x") == ""          # not a snapshot folder


def test_license_of(tmp_path: Path) -> None:
    assert modelcard.license_of(tmp_path) == {}                     # no card
    (tmp_path / "README.md").write_text(CARD_WITH_LICENSE)
    assert modelcard.license_of(tmp_path) == {"license": "other", "license_name": "tiny-license",
                                              "license_link": "LICENSE"}
    (tmp_path / "README.md").write_text("---\ntags: [a]\n---\n")
    assert modelcard.license_of(tmp_path) == {}


def test_result_blocks_are_replaced_by_key() -> None:
    section = modelcard.with_result("not probed yet\n", "a", "table A")
    assert section == "<!-- pos2distill:result a -->\ntable A\n\n<!-- /pos2distill:result -->\n"
    section = modelcard.with_result(section, "b", "table B\n\n")
    section = modelcard.with_result(section, "a", "table A2")
    blocks = [b for b in section.split("<!-- pos2distill:result ")[1:]]
    assert [b.split(" -->")[0] for b in blocks] == ["a", "b"]       # order kept, a replaced
    assert "table A2" in blocks[0] and "table A\n" not in section and "table B" in blocks[1]
    assert modelcard.result_key("retrieval", "synthetic:test", "d20") == \
        "retrieval-synthetic-test-d20"
    assert modelcard.result_key("reasoning", "/data/musique dev.jsonl", "depth") == \
        "reasoning-musique-dev.jsonl-depth"


def test_add_result_leaves_other_cards_alone(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(CARD_WITH_LICENSE)
    assert not modelcard.add_result(tmp_path, "k", "table")
    assert (tmp_path / "README.md").read_text() == CARD_WITH_LICENSE
    assert not modelcard.add_result(tmp_path / "nothing", "k", "table")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, pairs_file: Path, sharp_model: Any,
            tok: Any) -> tuple[Path, Path, dict]:
    """A short R1 run from the sharp model, saved with a card that states a license."""
    base = save_model_dir(tmp_path_factory, "sharp", sharp_model, tok)
    (base / "README.md").write_text(CARD_WITH_LICENSE)
    out = tmp_path_factory.mktemp("card") / "r1-run"
    summary = train.main(TrainConfig(pairs=str(pairs_file), model=str(base), out=str(out),
                                     lr=1e-2, batch_size=4, epochs=1, anchor_weight=0.5,
                                     base_model_id="org/sharp-base"))
    return out, base, summary


def test_train_writes_the_card(trained: tuple[Path, Path, dict], pairs_file: Path) -> None:
    out, base, summary = trained
    text = (out / "model" / "README.md").read_text()
    meta, body = modelcard.split_card(text)
    assert meta == {"base_model": "org/sharp-base", "library_name": "transformers",
                    "tags": ["pos2distill", "positional-bias", "r1"], "license": "other",
                    "license_name": "tiny-license", "license_link": "LICENSE"}
    assert body.startswith("\n# r1-run: sharp0 + Pos2Distill-R1\n")
    assert "The mean per-example KL of the last step was " in body
    assert "Pos2Distill-R1" in body and "position-aware weights and anchors" in body
    for line in ("| `--method` | r1 |", "| `--anchor-weight` | 0.5 |", "| `--lr` | 0.01 |",
                 "| `--teacher` | online |", f"| pairs file | `{pairs_file}` |",
                 f"| sha256 | `{file_sha256(pairs_file)}` |", "| questions | 4 |",
                 "| pairs | 12 (12 trained on by `r1`) |", "| task | retrieval |",
                 "| advantageous position (1-based) | 1 |",
                 f"{summary['steps']} optimizer steps of 4 examples."):
        assert line in body, line
    assert "--lora-rank" not in body and "--device" not in body
    # The command trains the same model again: the options that differ from the defaults.
    assert (f"pos2distill train --model {base} --pairs {pairs_file} --method r1 --anchor-weight 0.5 "
            f"--lr 0.01 --batch-size 4 --out {out}") in body
    assert modelcard.results_section(text) == modelcard._NOT_YET


def test_report_results_land_in_the_card(trained: tuple[Path, Path, dict],
                                         tmp_path: Path) -> None:
    model = trained[0] / "model"
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG fake")
    before = (model / "README.md").read_text()
    assert modelcard.add_result(model, "retrieval-x-d20", "| a | b |", {"accuracy": plot})
    assert modelcard.add_result(model, "retrieval-x-d40", "| c | d |")
    assert modelcard.add_result(model, "retrieval-x-d20", "| e | f |", {"accuracy": plot})
    text = (model / "README.md").read_text()
    section = modelcard.results_section(text)
    assert section == ("<!-- pos2distill:result retrieval-x-d20 -->\n"
                       "![accuracy](results/retrieval-x-d20.png)\n\n| e | f |\n\n"
                       "<!-- /pos2distill:result -->\n"
                       "<!-- pos2distill:result retrieval-x-d40 -->\n| c | d |\n\n"
                       "<!-- /pos2distill:result -->\n")
    assert (model / "results" / "retrieval-x-d20.png").read_bytes() == plot.read_bytes()
    # Everything outside the results section is as train wrote it.
    start = before.index(modelcard.RESULTS_START)
    assert text[:start] == before[:start]
    assert text.endswith(modelcard.RESULTS_END + "\n")
