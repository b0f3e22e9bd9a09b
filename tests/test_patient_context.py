"""Patient context (age, sex, site): one validation for the Analyze form, Batch, core.predict and the PDF."""
import pytest

from core.patient_context import SITES, ContextError, PatientContext, read_context_csv


def test_missing_fields_are_allowed_and_values_are_normalised():
    assert PatientContext.parse() == PatientContext()
    assert not PatientContext.parse("", "unknown", None).given
    context = PatientContext.parse(" 61 ", "Male", "lower_extremity")
    assert context == PatientContext(61.0, "male", "lower extremity") and context.given
    assert ("Age", "61 years") in context.rows() and ("Sex", "not given") in PatientContext().rows()
    assert "acral" in SITES and len(SITES) == 14  # the HAM10000 vocabulary without "unknown"


@pytest.mark.parametrize("age, sex, site, message", [
    ("-3", None, None, "age -3 is outside 0-120 years"),
    ("old", None, None, "age 'old' is not a number of years"),
    (None, "x", None, "sex 'x' is not one of: female, male"),
    (None, None, "elbow", "site 'elbow' is not one of: abdomen"),
])
def test_bad_values_get_a_message_naming_the_field(age, sex, site, message):
    with pytest.raises(ContextError, match=message):
        PatientContext.parse(age, sex, site)


def test_csv_rows_are_read_by_image_name_and_errors_name_the_row(tmp_path):
    good = tmp_path / "m.csv"
    good.write_text("image,age,sex\nISIC_1.jpg,40,female\nISIC_2,,\n")
    assert read_context_csv(good) == {"ISIC_1": PatientContext(40.0, "female", None), "ISIC_2": PatientContext()}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,age,sex,site\nISIC_1,40,female,back\nISIC_2,40,female,moon\n")
    with pytest.raises(ContextError, match=r"bad.csv: row 3 \(ISIC_2\): site 'moon'"):
        read_context_csv(bad)
    odd = tmp_path / "odd.csv"
    odd.write_text("image,weight\nISIC_1,70\n")
    with pytest.raises(ContextError, match="unknown column"):
        read_context_csv(odd)
    with pytest.raises(ContextError, match="not found"):
        read_context_csv(tmp_path / "none.csv")
