"""A local Orthanc PACS (Debian's orthanc + orthanc-dicomweb) for the demo and the tests, and its made-up studies.

    python -m core.io.demo_pacs [--port 8042] [--images 6]    # what `bash run.sh pacs` runs; Ctrl-C stops it

The configuration is pacs/orthanc.json (HTTP on localhost only, no DICOM port, DICOMweb at /dicom-web/); storage is
a temporary folder removed on exit. The demo studies wrap HAM10000 JPEGs from DATA_DIR as DICOM Dermoscopic
Photography images (core.io.dicom_input.wrap_jpeg) with made-up patients DEMO-001... (age, sex and site from the
HAM10000 metadata, so the tags carry a real patient context but no real identity), and one made-up patient followed
up over four studies (two lesions photographed at each visit: the History page's PACS series).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests
from pydicom.uid import generate_uid

from core.io.dicom_input import MadeUpPatient, wrap_jpeg

ROOT = Path(__file__).resolve().parents[2]
CONFIG_TEMPLATE = ROOT / "pacs" / "orthanc.json"
ORTHANC = "Orthanc"
INSTALL_HINT = "apt-get install -y orthanc orthanc-dicomweb"


def free_port() -> int:
    """A TCP port free on localhost right now (for a test server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """An Orthanc process on localhost:port with its own temporary storage; stop() ends it and removes the storage."""

    def __init__(self, port: int, users: dict[str, str] | None = None):
        """users: user name -> password; with users, Orthanc refuses requests without one of them (HTTP 401)."""
        binary = shutil.which(ORTHANC) or (f"/usr/sbin/{ORTHANC}" if os.path.exists(f"/usr/sbin/{ORTHANC}") else "")
        if not binary:
            raise RuntimeError(f"Orthanc is not installed; install it with: {INSTALL_HINT}")
        self.port = port
        self.storage = Path(tempfile.mkdtemp(prefix="lesionlens-orthanc-"))
        config = json.loads(CONFIG_TEMPLATE.read_text().replace("@HTTP_PORT@", str(port))
                            .replace("@STORAGE@", str(self.storage)))
        if users:
            config.update(AuthenticationEnabled=True, RegisteredUsers=users)
        self._probe_auth = next(iter(users.items())) if users else None
        (self.storage / "orthanc.json").write_text(json.dumps(config, indent=1))
        self._log = open(self.storage / "orthanc.log", "wb")
        self.process = subprocess.Popen([binary, str(self.storage / "orthanc.json")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.storage / "orthanc.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Orthanc exited at start (port {self.port} taken?):\n{log}")
            try:
                if requests.get(f"{self.url}/studies", timeout=1, auth=self._probe_auth).status_code == 200:
                    return
            except requests.exceptions.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on port {self.port} within {timeout_s:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.storage, ignore_errors=True)


def demo_objects(data_dir: str | Path, count: int, per_study: int = 2) -> list[tuple[MadeUpPatient, bytes]]:
    """`count` HAM10000 full-resolution JPEGs wrapped as DICOM, `per_study` images per made-up patient's study; each
    image carries the age and site of its own HAM10000 row (the context the model should see with it: the first
    image's, copied to the others, gave them another lesion's site), the patient's sex is the first image's (one
    patient, one sex in the study's header). The MadeUpPatient returned with each object holds what it was written
    with."""
    data_dir = Path(data_dir)
    with open(data_dir / "ham10000" / "HAM10000_metadata.csv", newline="") as handle:
        meta = {row["image_id"]: row for row in csv.DictReader(handle)}
    images = sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[:count]
    if len(images) < count:
        raise RuntimeError(f"{data_dir}: only {len(images)} full-resolution HAM10000 images, {count} asked for")
    objects, study = [], None
    for index, path in enumerate(images):
        if index % per_study == 0:
            number = index // per_study + 1
            sex = meta[path.stem]["sex"]
            study = MadeUpPatient(patient_id=f"DEMO-{number:03d}", name=f"Demo^Patient{number}",
                                  sex=sex if sex in ("male", "female") else None,
                                  study_uid=generate_uid(), study_date=f"202601{(number - 1) % 28 + 1:02d}")
            series = generate_uid()
        row = meta[path.stem]
        patient = replace(study, age=int(float(row["age"])) if row["age"] else None,
                          site=row["localization"] if row["localization"] not in ("", "unknown") else None)
        objects.append((patient, wrap_jpeg(path.read_bytes(), patient, series_uid=series,
                                           instance_number=index % per_study + 1)))
    return objects


HISTORY_DATES = ("20250110", "20250410", "20251010", "20260410")  # short-term (3 months), then 6 and 12 months
HISTORY_PATIENT = "DEMO-H01"


def history_objects(data_dir: str | Path, lesions: int = 2, visits: int = len(HISTORY_DATES)) -> list[tuple[MadeUpPatient, bytes]]:
    """A made-up patient (HISTORY_PATIENT) followed up over ``visits`` studies (HISTORY_DATES), each holding one
    image of each of ``lesions`` HAM10000 lesions photographed at least ``visits`` times (the first such lesions by
    lesion id; 200x150 images), the lesions told apart by site, laterality and series description."""
    data_dir = Path(data_dir)
    with open(data_dir / "ham10000" / "HAM10000_metadata.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (r["lesion_id"], r["image_id"]))
    by_lesion: dict[str, list[dict]] = {}
    for row in rows:
        by_lesion.setdefault(row["lesion_id"], []).append(row)
    chosen = [images[:visits] for images in by_lesion.values() if len(images) >= visits][:lesions]
    if len(chosen) < lesions:
        raise RuntimeError(f"{data_dir}: fewer than {lesions} HAM10000 lesions with {visits} images")
    objects = []
    for visit, date in enumerate(HISTORY_DATES[:visits]):
        study = generate_uid()
        for number, images in enumerate(chosen):
            row = images[visit]
            site = row["localization"] if row["localization"] not in ("", "unknown") else None
            patient = MadeUpPatient(patient_id=HISTORY_PATIENT, name="Demo^Followup", age=50, sex=None,
                                    site=site, study_uid=study, study_date=date, laterality="LR"[number % 2],
                                    series_description=f"Lesion {'AB'[number % 2]} ({row['localization']})")
            path = data_dir / "ham10000" / "images" / f"{row['image_id']}.jpg"
            objects.append((patient, wrap_jpeg(path.read_bytes(), patient, instance_number=number + 1)))
    return objects


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PACS_PORT", "8042")))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    from core.io.pacs import Pacs
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as cleanly as Ctrl-C
    server = Orthanc(args.port)
    try:
        objects = demo_objects(args.data_dir, args.images) + history_objects(args.data_dir)
        Pacs(server.url).store([data for _, data in objects])
        print(f"Demo PACS on {server.url} with {len(objects)} dermoscopy images of "
              f"{len({p.patient_id for p, _ in objects})} made-up patients; "
              f"set LESIONLENS_PACS_URL={server.url} for the dashboard. Ctrl-C stops it.", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
