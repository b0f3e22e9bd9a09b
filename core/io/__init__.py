"""Bytes in and out of the system: weight files checked against the model card, the one image-intake path for untrusted
uploads, DICOM reading and writing, and the DICOMweb PACS (plus the local demo Orthanc).

weights_io     safetensors weight files checked against the model card's sha256
image_limits   the upload limits and ImageRejected, shared by intake and dicom_input; is_dicom
intake         untrusted image bytes -> an RGB array or ImageRejected
dicom_input    untrusted DICOM bytes -> RGB frames and the patient context of the tags
dicom_results  an analysis back into the archive as DICOM (PDF, segmentation, findings)
pacs           the DICOMweb PACS client (QIDO-RS, WADO-RS, STOW-RS)
demo_pacs      a local Orthanc PACS and its made-up studies (python -m core.io.demo_pacs)
"""
