"""The out-of-distribution levels an image can get (core.decisions.ood assigns them), which of them are refused (for a
refused image no class, probability, referral, CAM or measurement is shown, anywhere: screens, CLI, batch, PDF, the
triage verdict) and which are shown greyed with a warning."""
OOD_LEVELS = ("in", "unusual", "maybe_clinical_photo", "clinical_photo", "not_skin")
REFUSED_LEVELS = ("clinical_photo", "not_skin")
GREYED_LEVELS = ("unusual", "maybe_clinical_photo")
GREYED_HEADLINES = {"unusual": "Unusual image", "maybe_clinical_photo": "This may be a camera photo"}
