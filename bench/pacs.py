"""The PACS round trip: DICOM read time per image, and one study of N dermoscopy images analysed and stored back.

    nice -n 19 .venv/bin/python -m bench.pacs [--images 10]      # alone; prints JSON (`python -m bench --pacs` runs it too)

A local Orthanc (core.io.demo_pacs, free port, temporary storage) receives N HAM10000 600x450 JPEGs wrapped as DICOM
in one made-up study. `dicom_read`: core.io.dicom_input.read_dicom on each object's bytes, next to
core.io.intake.load_image on the same JPEG's bytes (`jpeg_decode`); `dicom_read_added` = the per-image difference
(what reading DICOM adds to an analysis). `study`: what the PACS page does once the study is chosen, timed as a
whole: QIDO list of the study's dermoscopy instances, WADO-RS retrieve + read of each, the analysis, PDF report and
DICOM results of each (ui.pacs_results.analyse, one after the other as the page does) and one STOW-RS of every
result object (ui.pacs_results.store_results). The model is loaded and warmed on one image before the clock starts.
`targets`: issue 26's, study_s <= 5 s (10 images) and dicom_read_added_ms <= 20 ms.
"""
from __future__ import annotations

import argparse
import json
import time

from bench.common import data_dir, summary

TARGETS = {"study_s": 5.0, "dicom_read_added_ms": 20.0}  # issue 26 (study_s: for 10 images), on this 2-core CPU


def pacs_round_trip(root, images: int = 10) -> dict:
    from core.io.demo_pacs import Orthanc, demo_objects, free_port
    from core.io.dicom_input import read_dicom
    from core.io.intake import load_image
    from core.io.pacs import Pacs
    from ui.analyzers import pool
    from ui.pacs_results import analyse, retrieve, store_results

    objects = demo_objects(root, images + 1, per_study=images + 1)  # one study; the first image warms the model
    jpegs = sorted((root / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[:images + 1]
    read, decode, added = [], [], []
    for (_, data), path in zip(objects[1:], jpegs[1:]):
        jpeg = path.read_bytes()
        for _ in range(3):  # best of 3 each: the machine is shared
            start = time.perf_counter()
            read_dicom(data)
            middle = time.perf_counter()
            load_image(jpeg, path.name)
            end = time.perf_counter()
            read.append(middle - start)
            decode.append(end - middle)
        added.append(min(read[-3:]) - min(decode[-3:]))
    server = Orthanc(free_port())
    try:
        pacs = Pacs(server.url)
        study = objects[0][0].study_uid
        pacs.store([data for _, data in objects])
        pool().finish_loading()
        warm = retrieve(pacs, pacs.dermoscopy_instances(study)[0])
        analyse(warm)
        start = time.perf_counter()
        instances = [i for i in pacs.dermoscopy_instances(study) if i.sop_uid != warm.instance.sop_uid]
        retrieved = [retrieve(pacs, i) for i in instances]
        retrieve_s = time.perf_counter() - start
        analysed = [analyse(image) for image in retrieved]
        analyse_s = time.perf_counter() - start - retrieve_s
        outcome = store_results(pacs, study, analysed)
        total_s = time.perf_counter() - start
    finally:
        server.stop()
    out = {"images": images, "dicom_read": summary(read), "jpeg_decode": summary(decode),
           "dicom_read_added": summary(added),
           "study": {"total_s": total_s, "retrieve_s": retrieve_s, "analyse_s": analyse_s,
                     "store_s": total_s - retrieve_s - analyse_s, "objects_stored": outcome.stored,
                     "model": pool().version}}
    values = {"study_s": total_s, "dicom_read_added_ms": out["dicom_read_added"]["p50_ms"]}
    out["targets"] = {key: {"value": values[key], "target": f"<= {limit:g}", "met": values[key] <= limit}
                      for key, limit in TARGETS.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(pacs_round_trip(data_dir(), args.images), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
