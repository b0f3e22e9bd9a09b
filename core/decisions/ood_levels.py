"""The out-of-distribution levels an image can get (core.decisions.ood assigns them), and which of them are refused:
for a refused image no class, probability, referral, CAM or measurement is shown, anywhere (screens, CLI, batch,
PDF, the triage verdict)."""
REFUSED_LEVELS = ("clinical_photo", "not_skin")
