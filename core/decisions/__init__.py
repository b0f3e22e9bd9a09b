"""Rules that turn network outputs into what a result says, each fitted on validation data and stored in the model
card: the probabilities, the referral, uncertainty and conformal sets, and the checks whether an image may be
assessed at all (dermoscopy, out-of-distribution, image quality), combined into one triage verdict.

model_card        the model card, typed: every fitted rule read in one place, a missing section an error
decision_rule     mask-CN's logits -> the probabilities every surface shows
context_head      the patient-context shift of the class logits (late fusion)
referral          the one melanoma referral rule (threshold for a target sensitivity)
triage            one triage verdict from referral, uncertainty, unusual-image and quality flags
uncertainty       uncertainty in words (low / moderate / high) with measured error rates
conformal         conformal prediction sets
ood               out-of-distribution levels (not dermoscopy, unusual, ...)
ood_levels        the OOD levels that refuse an image (no diagnosis anywhere)
dermoscopy_check  dermoscopy image, clinical photo or not skin
image_quality     image-quality checks (focus, exposure, lesion cut off, ...)
"""
