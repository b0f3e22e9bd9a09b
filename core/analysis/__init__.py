"""Running the model: the Analyzer (the one inference entry point), class activation maps, the follow-up comparison of
two visits, the predict CLI, evaluation on a labelled folder and the metrics of the model card.

inference          the Analyzer: image -> probabilities, mask, CAM, measurements, checks
cam                class activation maps from the forward pass's maps (Grad-CAM of mask-CN), overlays
gradient_cam       the pytorch-grad-cam methods (Grad-CAM++, Score-CAM, EigenCAM, ...), imported on demand
followup           follow-up of a lesion: registration, change table, no-change band
predict            prediction from the command line (python -m core.analysis.predict)
folder_evaluation  evaluation of the shipped model on a researcher's own labelled images
metrics            classification, calibration and segmentation metrics
"""
