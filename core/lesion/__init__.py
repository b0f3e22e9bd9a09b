"""What is measured on one segmented lesion: its geometric and colour descriptors, the skin tone around it, its mask's
run-length encoding, and the similar confirmed cases of the reference set.

lesion_measurements  area, diameter, asymmetry, border, colours, and their wording
skin_tone            individual typology angle (ITA) of the skin around the lesion
mask_rle             run-length encoding of a binary lesion mask
retrieval            nearest confirmed cases in mask-CN's feature space
"""
