"""PDF documents (fpdf2), with one set of privacy and reproducibility rules: images re-encoded from their pixels, no
file names, deterministic bytes.

report             the one-page analysis report
comparison_report  the PDF of a follow-up comparison (on report's layout)
"""
