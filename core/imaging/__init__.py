"""Image operations shared by training and inference, below the networks: pixel-level preprocessing (numpy / OpenCV),
the image <-> tensor conversion and the test-time-augmentation views.

preprocess  field-of-view crop, resizing, JPEG step, Shades-of-Gray colour constancy, ImageNet statistics
tensors     image <-> tensor conversion (one place for size and normalisation)
tta         the 8 dihedral test-time-augmentation views of an image batch and their inverse
"""
