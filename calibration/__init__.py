"""Calibration: from the trained runs to the model card. Everything here fits a rule on validation images, measures
the shipped model on test images or writes (a section of) weights/model_card.json. It may import train (the stages,
the cached forward passes); train never imports calibration (tests/test_layering.py).

calibrate             the whole card from the runs, in order, written once (--config calibration/presets/shipped.toml)
card_io               the runs' split; sections merged, checked by the app's reader and written atomically
evaluate              step 1: fp16 networks to weights/, every choice on validation, every figure on test
fit_rules             the decision rule, referral, uncertainty, OOD thresholds, index size (validation only)
fit_context           the patient-context head, and whether it ships
evaluation_reports    the figures measured on a test set, with bootstrap CIs
model_card            evaluate's card sections, test_predictions.csv, its printed summary
folder_report         the shipped model on a labelled folder (evaluate --report)
ood_probes            images that are not dermoscopy, for the not-dermoscopy figures
fit_dermoscopy_check  the dermoscopy check (check_views: the views it is fitted on; check_contact_sheet: its misses)
out_of_source         each acquisition source held out in turn; the source-robust rules (fit_source_robust,
                      source_heads)
fit_image_quality     the image-quality checks and the triage column of test_predictions.csv
followup_noise        the no-change band of a lesion follow-up
summarize             the card as Markdown tables (docs/results.md, README's headline)
dermoscopy_score_auc, lesion_history_eval   measurements reported in docs/ (not card sections)
"""
