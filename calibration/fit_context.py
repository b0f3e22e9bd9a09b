"""Patient context (age, sex, anatomical site): fit the context head of core.decisions.context_head on validation, and decide
on validation whether the shipped model uses it.

The head shifts the tempered logits of the decision rule by W (context - no context); the image logits stay fixed, so
what is fitted is only what the context adds to this image model. W minimises the class-balanced validation log-loss
(each class weighs the same in total, as in balanced accuracy, the criterion's HAM10000 part) + RIDGE x |W|^2;
each field of each validation image is also dropped at random (DROP_P, in REPEATS copies), so the shift is right when
only some fields are given (ISIC 2017 gives none: its images get no shift).

Judged by cross-fitting: FOLDS folds of the validation set grouped by lesion; each fold's probabilities come from a
head fitted on the other folds, with the fold's real context. The model-selection criterion of those out-of-fold
probabilities against the image-only ones, with a paired bootstrap interval over lesions, decides: the head is
used (`shipped`) only when the interval's lower end is above 0; the head in the card is then fitted on all of
validation. The test sets are only reported on (calibration.evaluate).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from core.data.classes import class_index
from core.decisions.context_head import NO_CONTEXT, ContextHead
from core.decisions.decision_rule import DecisionRule
from core.analysis.metrics import bootstrap_interval, calibration
from core.data.patient_context import PatientContext
from calibration.fit_rules import MAX_VALIDATION_ECE, criterion

DROP_P = 0.3
REPEATS = 4
RIDGE = 1e-3
FOLDS = 5
METHOD = (f"A learned shift of the class logits by age, sex and site (zero without context), fitted on validation with "
          f"the image logits fixed (class-balanced log-loss, ridge {RIDGE:g}, each field dropped at random with "
          f"probability {DROP_P:g} so partial context works) and judged by {FOLDS}-fold lesion-grouped cross-fitting on "
          f"validation: used only when the bootstrap interval of the criterion gain lies above 0 and the out-of-fold "
          f"probabilities stay calibrated (validation ECE <= {MAX_VALIDATION_ECE}, the decision rule's bound).")


def table_contexts(table: pd.DataFrame) -> list[PatientContext]:
    """Each row's age, sex and site (HAM10000 metadata columns; a value outside the vocabulary counts as not given)."""
    contexts = []
    for row in table.itertuples():
        try:
            contexts.append(PatientContext.parse(getattr(row, "age", None), getattr(row, "sex", None),
                                                 getattr(row, "localization", None)))
        except ValueError:
            contexts.append(PatientContext())
    return contexts


def _dropped(context: PatientContext, rng: np.random.Generator) -> PatientContext:
    return PatientContext(*(None if rng.random() < DROP_P else v for v in (context.age, context.sex, context.site)))


def fit_head(rule: DecisionRule, logits_views: np.ndarray, labels: np.ndarray, contexts: list[PatientContext],
             seed: int = 0) -> ContextHead:
    """W of the context head for these images' rule logits (V, N, C), labels and contexts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    rows = [list(contexts)] + [[_dropped(c, rng) for c in contexts] for _ in range(REPEATS - 1)]
    x = torch.as_tensor(np.concatenate([np.stack([c.encoded() for c in copy]) for copy in rows]) - NO_CONTEXT)
    z = torch.as_tensor(np.asarray(logits_views, dtype=np.float64)[: rule.views])
    tempered = ((z + torch.tensor(rule.logit_offsets, dtype=torch.float64)) / rule.temperature).repeat(1, REPEATS, 1)
    y = torch.as_tensor(np.tile(labels, REPEATS))
    counts = np.bincount(labels, minlength=z.shape[-1]).astype(np.float64)
    class_weight = torch.as_tensor(np.where(counts > 0, len(labels) / (len(counts) * np.maximum(counts, 1)), 0.0))
    weights = torch.zeros(z.shape[-1], x.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        probs = torch.softmax(tempered + x @ weights.T, dim=-1).mean(0)
        nll = -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12))
        value = (class_weight[y] * nll).mean() + RIDGE * (weights ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return ContextHead(weights.detach().numpy())


def lesion_folds(groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per row; all images of one lesion in the same fold."""
    unique = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(unique), np.arange(len(unique)) % folds))
    return np.array([fold_of[g] for g in groups])


def context_report(rule: DecisionRule, logits_views: np.ndarray, table: pd.DataFrame,
                   seed: int = 0) -> tuple[ContextHead, dict]:
    """The head fitted on all of validation and the card's patient_context entry (its `shipped` says whether the
    model uses it: a criterion gain beyond noise with calibrated out-of-fold probabilities), from the validation
    set's logits and table."""
    labels = np.array([class_index(d) for d in table["dx"]])
    sources, groups = table["source"].to_numpy(), table["lesion_id"].astype(str).to_numpy()
    contexts = table_contexts(table)
    image_only = rule.probabilities(logits_views)
    with_context = image_only.copy()
    fold = lesion_folds(groups, FOLDS, seed)
    for k in range(FOLDS):
        fit_rows, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        head = fit_head(rule, logits_views[:, fit_rows], labels[fit_rows], [contexts[i] for i in fit_rows], seed)
        with_context[held] = rule.probabilities(logits_views[:, held], head.shift([contexts[i] for i in held]))
    scores = {"image_only": criterion(image_only, labels, sources), "image_and_context": criterion(with_context, labels, sources)}
    low, high = bootstrap_interval(lambda i: criterion(with_context[i], labels[i], sources[i])
                                   - criterion(image_only[i], labels[i], sources[i]), len(labels), groups, resamples=300)
    beyond_noise = bool(low is not None and low > 0)
    head = fit_head(rule, logits_views, labels, contexts, seed)
    compared = (("image_only", image_only), ("image_and_context", with_context))
    log_loss = {name: float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())
                for name, p in compared}
    ece = {name: calibration(p, labels)["ece"] for name, p in compared}
    calibrated = ece["image_and_context"] <= MAX_VALIDATION_ECE
    entry = {"validation_criterion": scores, "gain": scores["image_and_context"] - scores["image_only"],
             "gain_ci95": [low, high], "gain_beyond_noise": beyond_noise, "calibrated": calibrated,
             "shipped": beyond_noise and calibrated, "validation_log_loss": log_loss, "validation_ece": ece,
             "validation_with_any_context": float(np.mean([c.given for c in contexts])),
             "head": head.to_card(), "method": METHOD}
    return head, entry
