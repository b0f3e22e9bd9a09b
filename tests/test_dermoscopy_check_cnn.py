"""calibration.dermoscopy_check_cnn: what is held out from both recipes, and how a recipe's scores are read."""
import numpy as np
import pandas as pd

from calibration.dermoscopy_check_cnn import HELD_DERMOSCOPY, HELD_PHOTOS, held_out_split, report


def _samples() -> pd.DataFrame:
    rows = []
    for collection, kind in [("vidir_modern", "dermoscopy"), ("isic2017", "dermoscopy"), ("acral_imperial", "dermoscopy"),
                             ("dermnet", "clinical_photo"), ("pad_ufes20", "clinical_photo"), ("photos", "not_skin")]:
        for i in range(40):
            for view in ("whole", "random0"):
                rows.append({"key": f"{collection}/{i}/{view}", "collection": collection, "kind": kind, "view": view,
                             "role": "test" if kind == "not_skin" and i < 3 else "train", "group": f"{collection}{i // 2}",
                             "pigmented": i % 2 == 0})
    return pd.DataFrame(rows)


def test_held_out_collections_never_train_and_are_scored_whole():
    train, test = held_out_split(_samples())
    assert not train["collection"].isin(HELD_DERMOSCOPY + (HELD_PHOTOS,)).any()
    assert not ((train["collection"] == "photos") & (train["role"] == "test")).any()
    assert set(test["collection"]) == {*HELD_DERMOSCOPY, HELD_PHOTOS, "photos"} and (test["view"] == "whole").all()
    assert {"vidir_modern", "dermnet"} <= set(train["collection"])


def test_a_recipe_that_separates_the_kinds_refuses_every_photo_and_keeps_99_percent_of_dermoscopy():
    _, test = held_out_split(_samples())
    rng = np.random.default_rng(0)
    dermoscopy = test["collection"].isin(HELD_DERMOSCOPY).to_numpy()
    p = np.where(dermoscopy, rng.uniform(0.5, 1.0, len(test)), rng.uniform(0.0, 0.2, len(test)))
    r = report(p, test)
    assert r["auc_dermoscopy_vs_pad_ufes20"] == 1.0
    assert r["pad_ufes20_refused"]["share"] == 1.0 and r["pad_ufes20_pigmented_refused"]["n"] == 20
    assert all(v["share"] <= 0.03 for v in r["dermoscopy_refused"].values())
    mixed = report(rng.uniform(size=len(test)), test)  # a recipe that cannot tell them apart refuses few photos
    assert mixed["pad_ufes20_refused"]["share"] < 0.2
