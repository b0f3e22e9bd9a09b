"""The PACS client: DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) through dicomweb-client.

    pacs = Pacs.from_config()                        # LESIONLENS_PACS_URL / _USER / _PASSWORD, or st.secrets["pacs"]
    studies = pacs.search_studies(patient_id="P1", date="20260101", modality="DMS")
    instances = pacs.dermoscopy_instances(study_uid)  # photographic instances only
    data = pacs.retrieve(study_uid, series_uid, sop_uid)   # Part 10 bytes, for core.io.dicom_input.read_dicom
    pacs.store([data, ...])                          # STOW-RS
    pacs.store_new([data, ...], study_uid)           # STOW-RS of what the study does not hold yet

The server address and credentials never live in the code. Every failure a user can meet is a PacsError whose text
is a sentence: server unreachable, authentication refused, a study without dermoscopy images, a store the server
rejected (with its reason).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from core.io.dicom_input import PHOTO_MODALITIES, PHOTO_SOP_CLASSES

TIMEOUT_S = 10


class PacsError(RuntimeError):
    """A PACS operation that failed; str(exc) is a sentence fit to show the user."""


@dataclass(frozen=True)
class Study:
    study_uid: str
    patient_id: str
    date: str                      # YYYYMMDD ("" when the study has none)
    modalities: tuple[str, ...]
    description: str
    instances: int
    time: str = ""                 # HHMMSS[.ffffff] ("" when the study has none)

    @property
    def short_id(self) -> str:
        """Eight hex digits of the Study Instance UID's SHA-256: tells studies apart on screen when the patient
        identifiers are hidden (the UID itself is long and may embed a site's root)."""
        return hashlib.sha256(self.study_uid.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Instance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    number: int


def _value(item: dict, tag: str, default=""):
    values = item.get(tag, {}).get("Value", [])
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict):  # a PN value
        return value.get("Alphabetic", default)
    return value


def _all(item: dict, tag: str) -> tuple[str, ...]:
    return tuple(str(v) for v in item.get(tag, {}).get("Value", []))


class Pacs:
    def __init__(self, url: str, username: str = "", password: str = ""):
        if not url:
            raise PacsError("No PACS is configured: set LESIONLENS_PACS_URL (or [pacs] url in .streamlit/secrets.toml)"
                            " to the DICOMweb root, e.g. http://localhost:8042/dicom-web")
        self.url = url.rstrip("/")
        session = requests.Session()
        if username:
            session.auth = (username, password)
        self._session = session
        self._client = DICOMwebClient(url=self.url, session=session, timeout=TIMEOUT_S)
        self._client.set_http_retry_params(retry=False)

    @classmethod
    def from_config(cls) -> "Pacs":
        """The PACS of the environment (LESIONLENS_PACS_URL, _USER, _PASSWORD) or of st.secrets["pacs"]."""
        url = os.environ.get("LESIONLENS_PACS_URL", "")
        user = os.environ.get("LESIONLENS_PACS_USER", "")
        password = os.environ.get("LESIONLENS_PACS_PASSWORD", "")
        if not url:
            try:
                import streamlit as st
                section = st.secrets.get("pacs", {})
                url, user, password = section.get("url", ""), section.get("user", ""), section.get("password", "")
            except Exception:  # noqa: BLE001 - no secrets file: the message below says what to set
                pass
        return cls(url, user, password)

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except requests.exceptions.ConnectionError:
            raise PacsError(f"The PACS at {self.url} cannot be reached (is it running?)") from None
        except requests.exceptions.Timeout:
            raise PacsError(f"The PACS at {self.url} did not answer within {TIMEOUT_S} s") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(f"The PACS refused the credentials (HTTP {status}) while trying to {what}") from None
            if status == 404:
                raise PacsError(f"The PACS has nothing to {what} at that address (HTTP 404)") from None
            reason = _reason(exc.response)
            raise PacsError(f"The PACS could not {what} (HTTP {status}{': ' + reason if reason else ''})") from None

    def search_studies(self, patient_id: str = "", date: str = "", modality: str = "") -> list[Study]:
        """QIDO-RS: studies matching a patient ID, a date (YYYYMMDD or a YYYYMMDD-YYYYMMDD range) and a modality,
        newest first (by study date and time; undated studies last): the server returns them in no useful order."""
        filters = {k: v for k, v in (("PatientID", patient_id), ("StudyDate", date),
                                     ("ModalitiesInStudy", modality)) if v}
        found = self._call("search studies", self._client.search_for_studies, search_filters=filters,
                           fields=["ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyDescription",
                                   "StudyTime"])
        studies = [Study(str(_value(s, "0020000D")), str(_value(s, "00100020")), str(_value(s, "00080020")),
                         _all(s, "00080061"), str(_value(s, "00081030")), int(_value(s, "00201208", 0) or 0),
                         str(_value(s, "00080030")))
                   for s in found]
        return sorted(studies, key=lambda s: (s.date, s.time, s.study_uid), reverse=True)

    def instances(self, study_uid: str) -> list[Instance]:
        """QIDO-RS: every instance of a study."""
        found = self._call("list the study's instances", self._client.search_for_instances, study_instance_uid=study_uid,
                           fields=["Modality", "InstanceNumber", "SOPClassUID"])
        return sorted((Instance(study_uid, str(_value(i, "0020000E")), str(_value(i, "00080018")),
                                str(_value(i, "00080016")), str(_value(i, "00080060")),
                                int(_value(i, "00200013", 0) or 0)) for i in found),
                      key=lambda i: (i.series_uid, i.number, i.sop_uid))

    def dermoscopy_instances(self, study_uid: str) -> list[Instance]:
        """The study's photographic (dermoscopy) instances; PacsError when it has none."""
        photos = [i for i in self.instances(study_uid)
                  if i.sop_class in PHOTO_SOP_CLASSES and (not i.modality or i.modality in PHOTO_MODALITIES)]
        if not photos:
            raise PacsError("This study holds no dermoscopy or photographic images to analyse")
        return photos

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """WADO-RS: one instance as DICOM Part 10 bytes (for core.io.dicom_input.read_dicom)."""
        ds = self._call("retrieve the image", self._client.retrieve_instance, study_uid, series_uid, sop_uid)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def exists(self, study_uid: str, sop_uid: str) -> bool:
        """QIDO-RS: is an instance with this SOP Instance UID already in the study?"""
        found = self._call("search the study", self._client.search_for_instances, study_instance_uid=study_uid,
                           search_filters={"SOPInstanceUID": sop_uid})
        return bool(found)

    def store(self, objects: list[bytes], study_uid: str = "") -> None:
        """STOW-RS: store Part 10 objects (into study_uid when given); PacsError with the server's reason if refused."""
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in objects]
        answer = self._call("store the results", self._client.store_instances, datasets,
                            study_instance_uid=study_uid or None)
        failed = answer.get("00081198", {}).get("Value", []) if answer else []
        if failed:
            reasons = sorted({str(_value(f, "00081197")) for f in failed})
            raise PacsError(f"The PACS rejected {len(failed)} of {len(objects)} objects "
                            f"(failure reason {', '.join(reasons)})")

    def store_new(self, objects: list[bytes], study_uid: str) -> StoreOutcome:
        """STOW-RS into the study of the objects it does not hold yet (by SOP Instance UID): a retry of the same
        results (core.io.dicom_results: deterministic UIDs) stores nothing twice."""
        held = {i.sop_uid for i in self.instances(study_uid)}
        uids = [str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID) for data in objects]
        new = [data for data, uid in zip(objects, uids) if uid not in held]
        if new:
            self.store(new, study_uid)
        return StoreOutcome(stored=len(new), already=len(objects) - len(new))


@dataclass(frozen=True)
class StoreOutcome:
    stored: int    # objects sent and accepted
    already: int   # objects the study already held (an earlier store of the same results)


def _reason(response) -> str:
    if response is None:
        return ""
    text = (response.text or "").strip()
    return " ".join(text.split())[:200]
