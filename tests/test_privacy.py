"""Uploaded images never touch disk.

Two independent detectors, usable by later tests (the lead adds the analysis path) through `no_disk_writes()`:
1. a Python audit hook recording every write-mode open, mkdir, rename, remove... made by this process while active
   (deterministic; ignores __pycache__ byte-code writes);
2. a before/after listing (name, size, mtime) of tempfile.gettempdir() (top level) and of the repository working
   tree (recursive; .git, .venv, __pycache__, .pytest_cache, .hypothesis ignored). Other people and the training
   run write on this machine at the same time, so paths that change in an idle control window are ignored and a
   difference must repeat in every attempt (a write made by the code under test happens every time).
Python's tempfile module is also pointed at a fresh, private folder that must stay empty.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from core.io.intake import ImageRejected, load_image, load_image_file

REPO_ROOT = Path(__file__).resolve().parent.parent
IGNORED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.link", "os.symlink",
                "os.chmod", "os.utime", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move",
                "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

_recording: list[list] = []  # stack of active recorders (the audit hook cannot be removed once added)
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if not _recording:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if isinstance(path, int):
            return  # an already-open descriptor (fdopen)
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if not writes or "__pycache__" in str(path):
            return
    elif event not in WRITE_EVENTS:
        return
    elif any("__pycache__" in str(a) for a in args):
        return
    _recording[-1].append((event, args))


def _install_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


def _listing(root: Path, recursive: bool) -> dict[str, tuple[int, int]]:
    out = {}
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
            for name in filenames + dirnames:
                full = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(full)
                    out[full] = (st.st_size, st.st_mtime_ns)
    else:
        with contextlib.suppress(OSError), os.scandir(root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    out[entry.path] = (st.st_size, st.st_mtime_ns)
    return out


def _snapshot() -> dict[str, tuple[int, int]]:
    return {**_listing(Path(tempfile.gettempdir()), recursive=False), **_listing(REPO_ROOT, recursive=True)}


def _diff(before: dict, after: dict) -> list[str]:
    return sorted(f"{'new' if k not in before else 'gone' if k not in after else 'changed'}: {k}"
                  for k in set(before) | set(after) if before.get(k) != after.get(k))


@contextlib.contextmanager
def _private_tempdir(folder: Path):
    saved_tempdir, saved_env = tempfile.tempdir, {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    tempfile.tempdir = str(folder)
    for key in saved_env:
        os.environ[key] = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def assert_no_disk_writes(action, private_tmp: Path, attempts: int = 3) -> None:
    """Fail if `action()` writes anything to disk (see module docstring).

    Listing noise from other processes (the training log, people editing files) is filtered two ways: paths that
    also change during an idle control window of the same length just before are ignored, and a listing
    difference must show up in every one of `attempts` runs (a write made by `action` happens every time).
    """
    _install_hook()
    private_tmp.mkdir(parents=True, exist_ok=True)
    control_seconds = 0.1
    suspicious: list[str] = []
    for _attempt in range(attempts):
        s0 = _snapshot()
        time.sleep(control_seconds)
        s1 = _snapshot()
        events: list = []
        _recording.append(events)
        start = time.perf_counter()
        try:
            with _private_tempdir(private_tmp):
                action()
        finally:
            _recording.remove(events)
        control_seconds = max(0.1, time.perf_counter() - start)
        s2 = _snapshot()
        if events:
            pytest.fail(f"file-system writes while handling an upload: {events}")
        if list(private_tmp.iterdir()):
            pytest.fail(f"temporary files created: {list(private_tmp.iterdir())}")
        noise = {line.split(": ", 1)[1] for line in _diff(s0, s1)}
        suspicious = [line for line in _diff(s1, s2) if line.split(": ", 1)[1] not in noise]
        if not suspicious:
            return
    pytest.fail("files appeared or changed while handling an upload:\n" + "\n".join(suspicious))


def test_audit_hook_detects_writes(tmp_path):
    """The detector itself: a write through Python must be caught."""
    def writes_a_file():
        with tempfile.NamedTemporaryFile(suffix=".jpg") as handle:
            handle.write(b"upload")

    with pytest.raises(pytest.fail.Exception, match="file-system writes"):
        assert_no_disk_writes(writes_a_file, tmp_path / "tmp")


def test_listing_detects_writes_the_audit_hook_cannot_see(tmp_path):
    """A write from outside Python (a child process, a C library) shows up in the listing, twice."""
    target = Path(tempfile.gettempdir()) / f"lesionlens-privacy-probe-{os.getpid()}"
    counter = iter(range(10))

    def child_process_writes():
        subprocess.run(["sh", "-c", f"echo {next(counter)} >> '{target}'"], check=True)

    try:
        with pytest.raises(pytest.fail.Exception, match="lesionlens-privacy-probe"):
            assert_no_disk_writes(child_process_writes, tmp_path / "tmp")
    finally:
        target.unlink(missing_ok=True)


def _uploads(data_dir: Path) -> list[bytes]:
    jpeg = (data_dir / "ham10000" / "images" / "ISIC_0024306.jpg").read_bytes()
    rgb = Image.open(io.BytesIO(jpeg)).convert("RGB")
    encoded = []
    for fmt, kwargs in (("PNG", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {}), ("BMP", {}), ("GIF", {})):
        buffer = io.BytesIO()
        rgb.save(buffer, fmt, **kwargs)
        encoded.append(buffer.getvalue())
    return [jpeg, (data_dir / "ham10000" / "masks" / "ISIC_0024306_segmentation.png").read_bytes(), *encoded]


def test_load_image_writes_nothing(data_dir, tmp_path):
    uploads = _uploads(data_dir)
    for data in uploads:  # warm up: first use of a Pillow plugin may compile/cache byte code
        load_image(data)

    def handle_uploads():
        for data in uploads:
            assert load_image(data, "upload").ndim == 3
        for bad in (uploads[0][:1000], b"not an image", b""):
            with pytest.raises(ImageRejected):
                load_image(bad, "upload")

    assert_no_disk_writes(handle_uploads, tmp_path / "tmp")


def test_load_image_file_only_reads(data_dir, tmp_path):
    path = data_dir / "ham10000" / "images" / "ISIC_0024306.jpg"
    load_image_file(path)
    assert_no_disk_writes(lambda: load_image_file(path), tmp_path / "tmp")


def _exif_uploads() -> list[bytes]:
    """A JPEG and a TIFF whose EXIF ImageDescription / Artist name a patient (EXIF-rotated, so it is parsed)."""
    exif = Image.Exif()
    exif[0x010E] = "Patient Jane Doe MRN 884213"  # ImageDescription
    exif[0x013B] = "Dr Ima Photographer"  # Artist
    exif[0x0112] = 6  # Orientation: load_image must read the EXIF block to apply it
    uploads = []
    for fmt in ("JPEG", "TIFF", "PNG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 40), (180, 120, 100)).save(buffer, fmt, exif=exif)
        uploads.append(buffer.getvalue())
    return uploads


def test_upload_metadata_never_reaches_the_logs(caplog):
    """Pillow's DEBUG records print EXIF tag values; core.io.intake caps the PIL logger so that even a root logger at
    DEBUG never receives them. Control: with PIL opened up to DEBUG on purpose, the same loads do log the text."""
    import logging

    uploads = _exif_uploads()
    caplog.set_level(logging.DEBUG)  # the root logger: the most talkative configuration of the app
    for data in uploads:
        assert load_image(data, "upload.jpg").shape == (64, 40, 3)  # rotated: EXIF was read
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Jane Doe" not in logged and "Ima Photographer" not in logged, logged[:2000]

    caplog.clear()
    pil = logging.getLogger("PIL")
    saved = pil.level
    pil.setLevel(logging.DEBUG)
    try:
        for data in uploads:
            load_image(data, "upload.jpg")
    finally:
        pil.setLevel(saved)
    assert "Jane Doe" in "\n".join(r.getMessage() for r in caplog.records), "control: Pillow no longer logs EXIF"
