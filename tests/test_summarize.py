"""The README headline table and docs/results.md are the model card's figures, as calibration.summarize writes them."""
from pathlib import Path

from core.decisions.model_card import read_card_json
from calibration import summarize

ROOT = Path(__file__).resolve().parent.parent


def test_readme_headline_table_is_the_cards():
    card = read_card_json(ROOT / "weights")
    table = summarize.headline_table(card)
    assert card["metrics"]["ham10000_test"]["classification"]["mask_cn"]["ci"]["balanced_accuracy"]["value"] is not None
    assert table in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's headline table differs from the card: paste `python -m calibration.summarize --headline`"


def test_results_page_is_generated_from_the_card(tmp_path):
    out = tmp_path / "results.md"
    summarize.main(["--weights", str(ROOT / "weights"), "--out", str(out)])
    assert out.read_text(encoding="utf-8") == (ROOT / "docs" / "results.md").read_text(encoding="utf-8"), \
        "docs/results.md is stale: run `python -m calibration.summarize --out docs/results.md`"
    assert f"Model card {read_card_json(ROOT / 'weights')['version']}" in out.read_text(encoding="utf-8")
