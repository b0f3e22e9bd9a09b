"""core.io.intake.load_image against a battery of hostile and unusual inputs, all generated here (no files committed),
plus a fuzz test over mutated real JPEG/PNG bytes. Any warning escaping load_image fails the test."""
from __future__ import annotations

import io
import struct
import time
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageFile

from core.io.intake import ImageRejected, load_image, load_image_file

pytestmark = pytest.mark.filterwarnings("error")

HAM_IMAGE = "ISIC_0024306"  # a 200x150 HAM10000 image (+ mask); the 600x450 tests use the first fullres/ image


# ----------------------------------------------------------------------------------------------------------------
# builders
def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def handmade_png(width: int, height: int, rows: int = 2) -> bytes:
    """A valid-looking 8-bit RGB PNG header claiming width x height, with only `rows` rows of (zero) pixel data.

    A 50,000 x 50,000 one is ~1 KB on disk but 7.5 GB once decoded: a decompression bomb.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * (3 * width)) * rows
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def frames(colors, size=(64, 48)):
    return [Image.new("RGB", size, c) for c in colors]


@pytest.fixture(scope="module")
def ham_paths(data_dir):
    small = data_dir / "ham10000" / "images" / f"{HAM_IMAGE}.jpg"
    mask = data_dir / "ham10000" / "masks" / f"{HAM_IMAGE}_segmentation.png"
    fullres_dir = data_dir / "ham10000" / "fullres" / "images"
    fullres = sorted(fullres_dir.glob("ISIC_*.jpg"))
    assert small.is_file() and mask.is_file() and fullres, f"HAM10000 files missing under {data_dir}"
    return {"small": small, "mask": mask, "fullres": fullres[0]}


@pytest.fixture(scope="module")
def real_rgb(ham_paths) -> np.ndarray:
    with Image.open(ham_paths["fullres"]) as img:
        return np.asarray(img.convert("RGB"))


def rejected(data: bytes, match: str, reason: str, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected, match=match) as info:
        load_image(data, "upload", **kwargs)
    assert info.value.reason == reason
    assert info.value.name == "upload"
    return info.value


# ----------------------------------------------------------------------------------------------------------------
# rejections
def test_empty_file():
    rejected(b"", r"^Empty file$", "empty")


def test_text_renamed_jpg_is_not_an_image():
    err = rejected(b"patient notes: lesion on left forearm, 6 mm\n" * 20, r"^This file is not an image", "not_image")
    assert "JPEG" in str(err)
    with pytest.raises(ImageRejected, match="not an image"):
        load_image(b"just text", "lesion.jpg")  # the .jpg name does not make it an image


def test_byte_limit_checked_first(ham_paths):
    data = ham_paths["fullres"].read_bytes()
    rejected(data, r"^File is larger than 10 KB$", "too_many_bytes", max_bytes=10 * 1024)
    # the byte limit applies even to bytes that are not an image at all
    rejected(b"x" * 20_000, r"^File is larger than 10 KB$", "too_many_bytes", max_bytes=10 * 1024)
    rejected(b"x" * (50 * 2**20 + 1), r"^File is larger than 50 MB$", "too_many_bytes")


def test_truncated_jpeg(ham_paths):
    data = ham_paths["fullres"].read_bytes()
    rejected(data[: len(data) // 2], r"^The image file is damaged or truncated$", "damaged")
    rejected(data[:40], r"damaged or truncated", "damaged")  # SOI + a bit of header


def test_truncated_png(real_rgb):
    data = encode(Image.fromarray(real_rgb), "PNG")
    rejected(data[: len(data) // 2], r"damaged or truncated", "damaged")


def test_png_with_corrupted_header_crc():
    data = bytearray(encode(Image.new("RGB", (64, 64), "red"), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    rejected(bytes(data), r"^The image file is damaged or truncated$", "damaged")


def test_png_with_corrupted_idat_crc():
    """Pillow's decoder skips IDAT CRCs; intake verifies every chunk."""
    data = bytearray(encode(Image.new("RGB", (64, 64), "red"), "PNG"))
    start = data.find(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4 + length] ^= 0xFF
    rejected(bytes(data), r"^The image file is damaged or truncated$", "damaged")


def test_decompression_bomb_rejected_from_header_before_decoding(monkeypatch):
    bomb = handmade_png(50_000, 50_000)
    assert len(bomb) < 2_000  # tiny file, 2.5 gigapixels
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original(self))
    start = time.perf_counter()
    rejected(bomb, r"^Image is larger than 40 megapixels$", "too_many_pixels")
    assert time.perf_counter() - start < 1.0
    assert decoded == []


@pytest.mark.parametrize("side", [7_000, 10_000])
def test_over_pixel_limit_below_and_inside_pillow_warning_band(side, monkeypatch):
    """49 MP (below Pillow's own limit) and 100 MP (Pillow warns): both rejected by our header check, no warning."""
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original(self))
    rejected(handmade_png(side, side), r"^Image is larger than 40 megapixels$", "too_many_pixels")
    assert decoded == []


def test_pixel_limit_is_a_parameter(real_rgb):
    data = encode(Image.fromarray(real_rgb), "PNG")
    rejected(data, r"^Image is larger than 0\.2 megapixels$", "too_many_pixels", max_pixels=200_000)
    assert load_image(data, max_pixels=600 * 450).shape == (450, 600, 3)


def test_one_pixel_image_is_too_small():
    rejected(encode(Image.new("RGB", (1, 1), "red"), "PNG"), r"^Image is too small \(minimum 32 px per side\)$",
             "too_small")


def test_min_side_boundary():
    rejected(encode(Image.new("RGB", (31, 400), "red"), "PNG"), r"too small", "too_small")
    assert load_image(encode(Image.new("RGB", (32, 32), "red"), "PNG")).shape == (32, 32, 3)
    assert load_image(encode(Image.new("RGB", (10, 10), "red"), "PNG"), min_side=8).shape == (10, 10, 3)


@pytest.mark.parametrize("fmt,expected", [("ICO", "ICO"), ("PDF", "PDF")])
def test_formats_pillow_knows_but_we_do_not_accept(fmt, expected):
    data = encode(Image.new("RGB", (64, 64), "red"), fmt)
    rejected(data, rf"^Unsupported image format: {expected}", "unsupported_format")


def test_heic_signature_named():
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00" * 4 + b"mif1heic" + b"\x00" * 100
    rejected(heic, r"^Unsupported image format: HEIC", "unsupported_format")


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        load_image("ISIC_0024306.jpg")


# ----------------------------------------------------------------------------------------------------------------
# accepted inputs and their conversions
def test_real_ham10000_jpeg(ham_paths, real_rgb):
    out = load_image(ham_paths["fullres"].read_bytes(), ham_paths["fullres"].name)
    assert out.dtype == np.uint8 and out.shape == (450, 600, 3) and out.flags.c_contiguous
    assert out.flags.writeable  # the caller gets an array it may modify (and torch.from_numpy does not warn)
    np.testing.assert_array_equal(out, real_rgb)
    small = load_image(ham_paths["small"].read_bytes())
    assert small.shape == (150, 200, 3) and small.dtype == np.uint8


def test_format_detected_by_content_not_name(real_rgb):
    png = encode(Image.fromarray(real_rgb), "PNG")
    np.testing.assert_array_equal(load_image(png, "photo.jpg"), real_rgb)
    np.testing.assert_array_equal(load_image(png, "notes.txt"), real_rgb)


@pytest.mark.parametrize("fmt,kwargs", [("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                        ("WEBP", {"lossless": True}), ("PNG", {})])
def test_lossless_formats_round_trip_exactly(real_rgb, fmt, kwargs):
    out = load_image(encode(Image.fromarray(real_rgb), fmt, **kwargs))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, real_rgb)


def test_lossy_webp(real_rgb):
    out = load_image(encode(Image.fromarray(real_rgb), "WEBP", quality=90))
    assert out.shape == real_rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - real_rgb).mean() < 6


def test_input_types(ham_paths):
    data = ham_paths["small"].read_bytes()
    expected = load_image(data)
    for variant in (bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(load_image(variant), expected)


def test_16bit_png_scaled_to_8bit():
    values = np.zeros((32, 40), np.uint16)
    values[0, 0], values[0, 1], values[0, 2], values[0, 3] = 65535, 32896, 257, 1000
    data = encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode.startswith("I;16") or img.mode == "I"
    out = load_image(data)
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :4, 0], [255, 128, 1, 4])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    assert out[5, 5].tolist() == [0, 0, 0]


def test_48bit_rgb_png_scaled_to_8bit():
    pixel = struct.pack(">HHH", 65535, 32896, 0)
    raw = (b"\x00" + pixel * 32) * 32
    ihdr = struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))
    out = load_image(data)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[7, 7].tolist() == [255, 128, 0]


def test_float_and_int32_tiff():
    ramp = np.linspace(0.0, 1.0, 64 * 32, dtype=np.float32).reshape(32, 64)
    out = load_image(encode(Image.fromarray(ramp, mode="F"), "TIFF"))
    assert out.shape == (32, 64, 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    ints = np.full((32, 32), 200, np.int32)
    assert load_image(encode(Image.fromarray(ints, mode="I"), "TIFF"))[0, 0].tolist() == [200, 200, 200]


def test_rgba_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black
    rgba[:20, :20] = (0, 0, 255, 255)  # opaque blue
    rgba[20:, 20:] = (255, 0, 0, 128)  # half-transparent red
    out = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (40, 40, 3)
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, 39].tolist() == [255, 255, 255]
    assert out[39, 39, 0] == 255 and 120 <= out[39, 39, 1] <= 135 and 120 <= out[39, 39, 2] <= 135


def test_la_and_grayscale():
    la = Image.new("LA", (40, 40), (90, 0))
    la.paste((90, 255), (0, 0, 20, 40))
    out = load_image(encode(la, "PNG"))
    assert out[0, 0].tolist() == [90, 90, 90] and out[0, 39].tolist() == [255, 255, 255]
    assert load_image(encode(Image.new("L", (40, 40), 77), "JPEG", quality=100))[5, 5].tolist() == [77, 77, 77]
    assert load_image(encode(Image.new("1", (40, 40), 1), "BMP"))[0, 0].tolist() == [255, 255, 255]


def test_palette_image():
    img = Image.new("P", (48, 48), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (3 * 254))
    img.paste(1, (0, 0, 24, 48))
    out = load_image(encode(img, "PNG"))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 47].tolist() == [10, 20, 30]
    # palette with a transparent index: transparent pixels become white
    out = load_image(encode(img, "PNG", transparency=0))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 47].tolist() == [255, 255, 255]


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (64, 64), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "CMYK"
    out = load_image(data)
    assert out.shape == (64, 64, 3)
    r, g, b = out[32, 32].astype(int)
    assert r < 10 and g > 245 and b > 245


def test_lab_tiff():
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = ImageCms.applyTransform(Image.new("RGB", (40, 40), (200, 30, 30)), to_lab)
    out = load_image(encode(lab, "TIFF"))
    assert np.abs(out[0, 0].astype(int) - [200, 30, 30]).max() <= 4


def test_exif_orientation_6_rotates():
    array = np.full((40, 64, 3), 128, np.uint8)  # stored landscape: 64 wide, 40 tall
    array[:10, :10] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(encode(Image.fromarray(array), "JPEG", quality=95, exif=exif))
    assert out.shape == (64, 40, 3)  # displayed portrait
    top_right = out[:10, -10:].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60  # the stored top-left is now top-right
    assert out[:10, :10, 1].mean() > 100  # and the top-left is grey


def test_malformed_exif_is_ignored():
    data = encode(Image.new("RGB", (64, 40), "red"), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert load_image(data).shape == (40, 64, 3)


@pytest.mark.parametrize("fmt,kwargs", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {}), ("TIFF", {}),
                                        ("MPO", {"quality": 95})])
def test_multi_frame_uses_first_frame(fmt, kwargs):
    first, *rest = frames(["red", "blue", "lime"])
    data = encode(first, fmt, save_all=True, append_images=rest, **kwargs)
    with Image.open(io.BytesIO(data)) as img:
        assert getattr(img, "n_frames", 1) == 3 and img.format == fmt
    out = load_image(data)
    assert out.shape == (48, 64, 3)
    assert np.abs(out[10, 10].astype(int) - [255, 0, 0]).max() <= 2  # MPO is JPEG: near-exact


def test_still_gif():
    assert load_image(encode(Image.new("RGB", (40, 40), (0, 0, 255)), "GIF"))[0, 0].tolist() == [0, 0, 255]


def test_load_image_file(ham_paths, tmp_path, real_rgb):
    np.testing.assert_array_equal(load_image_file(ham_paths["fullres"]), real_rgb)
    with pytest.raises(ImageRejected, match="^File not found$") as info:
        load_image_file(tmp_path / "missing.jpg")
    assert info.value.reason == "unreadable" and info.value.name == "missing.jpg"
    with pytest.raises(ImageRejected, match="larger than"):
        load_image_file(ham_paths["fullres"], max_bytes=1000)


# ----------------------------------------------------------------------------------------------------------------
# fuzzing: mutated real bytes -> an HxWx3 uint8 array or ImageRejected, nothing else, quickly
_SEEDS: dict[str, bytes] = {}


def seeds(ham_paths) -> dict[str, bytes]:
    if not _SEEDS:
        jpeg = ham_paths["small"].read_bytes()
        with Image.open(io.BytesIO(jpeg)) as img:
            rgb = img.convert("RGB")
        _SEEDS.update({
            "jpeg": jpeg,  # real HAM10000 JPEG, 200x150
            "jpeg_progressive": encode(rgb, "JPEG", quality=85, progressive=True),
            "png_mask": ham_paths["mask"].read_bytes(),  # real HAM10000 mask PNG (L)
            "png_rgb": encode(rgb, "PNG"),
            "tiff_lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
            "bmp": encode(rgb, "BMP"),
            "webp": encode(rgb, "WEBP", quality=80),
            "gif_animated": encode(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90)]),
        })
    return _SEEDS


position = st.one_of(st.integers(0, 700), st.integers(0, 1 << 30))
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("truncate"), position, st.just(0)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    buffer = bytearray(data)
    for op, where, arg in ops:
        if not buffer:
            break
        i = where % len(buffer)
        if op == "flip":
            buffer[i] ^= arg
        elif op == "truncate":
            del buffer[max(i, 1):]
        elif op == "insert":
            buffer[i:i] = arg
        else:
            del buffer[i:i + arg]
    return bytes(buffer)


@settings(max_examples=200, deadline=timedelta(seconds=2), database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.sampled_from(["jpeg", "jpeg_progressive", "png_mask", "png_rgb"]),
       ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_real_jpeg_png(ham_paths, seed, ops):
    check_fuzz_case(mutate(seeds(ham_paths)[seed], ops))


@settings(max_examples=100, deadline=timedelta(seconds=2), database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.sampled_from(["tiff_lzw", "bmp", "webp", "gif_animated"]), ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_other_formats(ham_paths, seed, ops):
    check_fuzz_case(mutate(seeds(ham_paths)[seed], ops))


def check_fuzz_case(data: bytes) -> None:
    start = time.perf_counter()
    try:
        out = load_image(data, "fuzz")
    except ImageRejected as exc:
        assert str(exc) and exc.reason
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8
        assert out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 32
        assert out.shape[0] * out.shape[1] <= 40_000_000
    assert time.perf_counter() - start < 2.0
