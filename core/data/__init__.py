"""What the data is: the seven diagnostic classes, the dataset readers that turn a folder into a manifest, the
leak-free splits, and the per-image facts that come with the data (patient context, acquisition source). No
networks, no torch.

classes          the one definition of the seven HAM10000 classes
datasets         dataset readers: a dataset folder -> one manifest table
splits           leak-free splits (grouped by lesion, stratified by diagnosis) and split files
dataset_summary  counts per source, class, age, sex, site and dx_type (overall and per split)
patient_context  age / sex / site: validation, CSV, encoding
acquisition      the acquisition source (clinic, dermatoscope, era) of each image
"""
