"""Does patient context (age, sex, anatomical site) add information beyond the image? A controlled comparison.

A small metadata branch on top of mask-CN: two multinomial logistic-regression heads on mask-CN's pooled features
(PCA to FEATURE_DIMS, standardised), trained on the train split, identical but for the inputs:
  image only          features
  image + context     features + age (scaled) + sex and site one-hot + a missing flag per field
Each field is dropped at random in training (DROP_P) so the context head works when a field is missing, as on
ISIC 2017, which has none. Both are scored on validation with the model-selection criterion; the paired
bootstrap interval of the difference (lesions resampled) says whether the context gain is beyond noise
(`gain_beyond_noise`). The Analyzer has no context head yet, so the shipped model does not use context (`shipped`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from core.classes import class_index
from core.metrics import bootstrap_interval
from core.patient_context import SEXES, SITES, PatientContext
from train.fit_rules import criterion

FEATURE_DIMS = 128
DROP_P = 0.3
REPEATS = 2  # copies of the training set, each with its own random field drops


def context_features(table: pd.DataFrame, rng: np.random.Generator | None = None) -> np.ndarray:
    """(N, 1 + 1 + 2 + 1 + 14 + 1) context encoding; with rng, each field is dropped with probability DROP_P."""
    rows = []
    for age, sex, site in zip(table["age"], table["sex"], table["localization"]):
        try:
            context = PatientContext.parse(age, sex, site)
        except ValueError:
            context = PatientContext()
        if rng is not None:
            context = PatientContext(*(None if rng.random() < DROP_P else v for v in (context.age, context.sex, context.site)))
        encoded = [0.0 if context.age is None else context.age / 100, float(context.age is None)]
        encoded += [float(context.sex == s) for s in SEXES] + [float(context.sex is None)]
        encoded += [float(context.site == s) for s in SITES] + [float(context.site is None)]
        rows.append(encoded)
    return np.array(rows, dtype=np.float32)


def compare_context(train_pooled: np.ndarray, train: pd.DataFrame, val_pooled: np.ndarray, val: pd.DataFrame,
                    seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pca = PCA(n_components=min(FEATURE_DIMS, *train_pooled.shape), random_state=seed).fit(train_pooled)
    scaler = StandardScaler().fit(pca.transform(train_pooled))
    features = lambda pooled: scaler.transform(pca.transform(pooled))  # noqa: E731
    y_train = np.array([class_index(d) for d in train["dx"]])
    y_val = np.array([class_index(d) for d in val["dx"]])
    x_train = np.tile(features(train_pooled), (REPEATS, 1))
    c_train = np.concatenate([context_features(train, rng) for _ in range(REPEATS)])
    y_rep = np.tile(y_train, REPEATS)
    heads = {}
    for name, inputs_train, inputs_val in (
            ("image_only", x_train, features(val_pooled)),
            ("image_and_context", np.hstack([x_train, c_train]), np.hstack([features(val_pooled), context_features(val)]))):
        model = LogisticRegression(max_iter=2000, class_weight="balanced", C=0.1).fit(inputs_train, y_rep)
        heads[name] = model.predict_proba(inputs_val)
    sources = val["source"].to_numpy()
    scores = {name: criterion(probs, y_val, sources) for name, probs in heads.items()}
    ham = sources == "ham10000"
    low, high = bootstrap_interval(
        lambda i: criterion(heads["image_and_context"][i], y_val[i], sources[i])
        - criterion(heads["image_only"][i], y_val[i], sources[i]),
        len(y_val), val["lesion_id"].to_numpy(), resamples=300)
    gain = scores["image_and_context"] - scores["image_only"]
    return {"validation_criterion": scores, "gain": gain, "gain_ci95": [low, high],
            "ham10000_val_with_any_context": float((context_features(val[ham])[:, [1, 4, 19]] == 0).any(1).mean()),
            "gain_beyond_noise": bool(low is not None and low > 0),
            "shipped": False,  # the Analyzer has no context head yet: a gain beyond noise is a reason to build one
            "method": __doc__.split("\n\n")[0].replace("\n", " ")}
