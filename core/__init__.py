"""LesionLens core: everything that is not UI (never imports Streamlit at module level).

Packages, lowest layer first; imports point down only (tests/test_layering.py):

security   who may sign in and who is admin; the audit trail
data       classes, dataset readers, splits, patient context, acquisition sources
imaging    pixel preprocessing, image <-> tensor, test-time-augmentation views
models     the networks, the MB-DCNN data flow between them, losses, float precision
decisions  logits -> probabilities, referral, triage, uncertainty, conformal sets, OOD and quality checks
io         weight files, image intake, DICOM in and out, the PACS client
lesion     lesion measurements, skin tone, mask encoding, similar confirmed cases
analysis   the Analyzer, CAMs, follow-up, predict CLI, folder evaluation, metrics
reports    the PDF report and the follow-up comparison PDF
batch      archive-scale batch analysis: engine, shards, results
"""
