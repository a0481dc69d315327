"""vop.images: strict image reading, header sizes, and the names pairs files can hold."""

import io
import logging
import os
import struct
import threading

import cv2
import numpy as np
import pytest

from vop import images
from vop.images import FIX, ImageError, image_size, read_image


def _texture(h=240, w=320, seed=0):
    """Noise on a gradient: a JPEG of it has long entropy-coded data, so cuts land inside it."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w)[None, :, None] + rng.normal(0, 25, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_bytes():
    return cv2.imencode(".jpg", _texture())[1].tobytes()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_jpeg_is_read_as_rgb(tmp_path):
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[..., 2] = 250  # red in OpenCV's BGR order
    path = _write(tmp_path, "red.jpg", cv2.imencode(".jpg", bgr)[1].tobytes())
    image = read_image(path)
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    assert image[..., 0].min() > 240 and image[..., 2].max() < 15  # R first


@pytest.mark.parametrize("cut", [0.05, 0.4, 0.99, "one byte short"])
def test_truncated_jpeg_is_refused(tmp_path, jpeg_bytes, cut, capfd):
    end = len(jpeg_bytes) - 1 if cut == "one byte short" else int(len(jpeg_bytes) * cut)
    path = _write(tmp_path, "cut.jpg", jpeg_bytes[:end])
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: truncated: ends before the JPEG end marker")
    assert message.endswith(FIX)
    assert isinstance(info.value, ValueError) and info.value.path == path
    assert "JPEG" not in capfd.readouterr().err  # nothing unnamed on the terminal


@pytest.mark.parametrize("params", [[cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2],
                                    [cv2.IMWRITE_JPEG_OPTIMIZE, 1], [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111]])
def test_end_marker_found_in_jpeg_variants(params):
    data = cv2.imencode(".jpg", _texture(), params)[1].tobytes()
    assert images.jpeg_end(data) == len(data)
    for end in (len(data) // 3, len(data) // 2, len(data) - 2):
        assert images.jpeg_end(data[:end]) is None


def test_jpeg_with_missing_pixels_but_an_end_marker_is_refused(tmp_path, jpeg_bytes, capfd):
    # Cut inside the entropy-coded data, EOI appended: libjpeg decodes it with grey rows and only warns.
    path = _write(tmp_path, "patched.jpg", jpeg_bytes[: len(jpeg_bytes) // 2] + b"\xff\xd9")
    with pytest.raises(ImageError, match="premature end of data segment") as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: corrupt: libjpeg says")
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # captured, not printed


def test_harmless_libjpeg_warning_is_logged_with_the_path(tmp_path, jpeg_bytes, caplog, capfd):
    path = _write(tmp_path, "junk.jpg", jpeg_bytes[:-2] + b"\x12\x34\x56\xff\xd9")
    with caplog.at_level(logging.WARNING, logger="vop.images"):
        image = read_image(path)
    assert image.shape == (240, 320, 3)
    assert any(str(path) in r.getMessage() and "extraneous bytes" in r.getMessage() for r in caplog.records)
    # libjpeg's own line never reaches the terminal (a log record naming the file may)
    assert not any(line.startswith("Corrupt JPEG data") for line in capfd.readouterr().err.splitlines())


def test_data_after_the_jpeg_end_marker_is_ignored(tmp_path, jpeg_bytes):
    # Phones and cameras append previews (MPF), trailers or a video after the primary image's EOI.
    second = cv2.imencode(".jpg", _texture(16, 16, seed=1))[1].tobytes()
    reference = read_image(_write(tmp_path, "a.jpg", jpeg_bytes))
    for i, tail in enumerate([b"\x00" * 100, b"SEFHtrailer" * 50, second, b"\xff\xd9garbage"]):
        image = read_image(_write(tmp_path, f"tail{i}.jpg", jpeg_bytes + tail))
        np.testing.assert_array_equal(image, reference)


def test_end_marker_inside_a_segment_does_not_count(tmp_path, jpeg_bytes):
    # An EXIF-like APP1 holding a thumbnail JPEG (which ends with FFD9); the file cut right after it
    # ends with FFD9 too, but the primary image has no frame or scan at all.
    thumbnail = cv2.imencode(".jpg", _texture(8, 8))[1].tobytes()
    payload = b"Exif\x00\x00" + thumbnail
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = jpeg_bytes[:2] + app1 + jpeg_bytes[2:]
    assert images.jpeg_end(data) == len(data)
    cut = data[: 2 + len(app1)]
    assert cut.endswith(b"\xff\xd9") and images.jpeg_end(cut) is None
    with pytest.raises(ImageError, match="truncated"):
        read_image(_write(tmp_path, "thumb_only.jpg", cut))


@pytest.mark.parametrize("cut", [0.5, "one byte short"])
def test_truncated_png_is_refused(tmp_path, cut):
    data = cv2.imencode(".png", _texture(64, 64))[1].tobytes()
    end = len(data) - 1 if cut == "one byte short" else int(len(data) * cut)
    path = _write(tmp_path, "cut.png", data[:end])
    with pytest.raises(ImageError, match=r"truncated: ends before the PNG IEND chunk.*re-copy or re-download"):
        read_image(path)


def _encoded(ext):
    image = _texture(48, 64)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # 101: lossless
    return image, cv2.imencode(ext, image, params)[1].tobytes()


@pytest.mark.parametrize("ext", [".tif", ".webp", ".bmp"])
def test_other_formats_decode_and_fail_when_truncated(tmp_path, ext):
    image, data = _encoded(ext)
    np.testing.assert_array_equal(read_image(_write(tmp_path, "ok" + ext, data)), image[..., ::-1])
    for end in (len(data) // 2, len(data) - 1):
        path = _write(tmp_path, f"cut{end}{ext}", data[:end])
        with pytest.raises(ImageError) as info:
            read_image(path)
        assert str(info.value).startswith(f"{path}: ") and FIX in str(info.value)


def test_truncated_tiff_with_its_directory_first_is_refused(tmp_path):
    # OpenCV writes the TIFF directory last; Pillow writes it first, so only the strips are cut.
    pil = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    pil.fromarray(_texture(48, 64)).save(buffer, "TIFF")
    data = buffer.getvalue()
    assert struct.unpack("<I", data[4:8])[0] < 64  # directory at the start
    with pytest.raises(ImageError):
        read_image(_write(tmp_path, "cut.tif", data[: int(len(data) * 0.7)]))


def test_empty_and_non_image_files(tmp_path):
    empty = _write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(empty)
    text = _write(tmp_path, "notes.jpg", b"these are not pixels\n" * 10)
    with pytest.raises(ImageError, match=r"not an image.*b'these ar'"):
        read_image(text)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_gray_alpha_and_16_bit(tmp_path):
    gray = _texture(20, 30)[..., 0]
    rgb = read_image(_write(tmp_path, "gray.png", cv2.imencode(".png", gray)[1].tobytes()))
    assert rgb.shape == (20, 30, 3) and all((rgb[..., c] == gray).all() for c in range(3))

    bgra = np.dstack([_texture(20, 30), np.zeros((20, 30), np.uint8)])  # fully transparent
    rgb = read_image(_write(tmp_path, "rgba.png", cv2.imencode(".png", bgra)[1].tobytes()))
    np.testing.assert_array_equal(rgb, bgra[..., 2::-1])  # alpha dropped, colours kept

    values = np.array([[0, 128, 129, 257, 385, 386, 32896, 65534, 65535]], np.uint16)
    expected = np.round(values / 257).astype(np.uint8)
    assert expected.tolist() == [[0, 0, 1, 1, 1, 2, 128, 255, 255]]
    for ext in (".png", ".tif"):
        path = _write(tmp_path, "deep" + ext, cv2.imencode(ext, values)[1].tobytes())
        np.testing.assert_array_equal(read_image(path, grayscale=True), expected)
        np.testing.assert_array_equal(read_image(path)[..., 1], expected)


def test_grayscale_matches_opencv(tmp_path, jpeg_bytes):
    path = _write(tmp_path, "a.jpg", jpeg_bytes)
    np.testing.assert_array_equal(read_image(path, grayscale=True),
                                  cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION))
    bgr = _texture(20, 30)
    path = _write(tmp_path, "a.png", cv2.imencode(".png", bgr)[1].tobytes())
    np.testing.assert_array_equal(read_image(path, grayscale=True), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_exif_orientation_is_ignored(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255
    picture = pil.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    picture.save(path, "JPEG", exif=exif.tobytes())
    assert cv2.imread(str(path)).shape == (80, 40, 3)  # the tag is there: OpenCV's default applies it
    for grayscale, shape in ((False, (40, 80, 3)), (True, (40, 80))):
        image = read_image(path, grayscale=grayscale)
        assert image.shape == shape  # the stored grid
        assert image[:, :30].min() > 200 and image[:, 50:].max() < 50
    assert image_size(path) == (80, 40)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".tif", ".webp", "lossless.webp", "pil.tif"])
def test_image_size_from_headers(tmp_path, ext, monkeypatch):
    image = _texture(23, 37)
    if ext == "pil.tif":
        pil = pytest.importorskip("PIL.Image")
        path = tmp_path / "a.tif"
        pil.fromarray(image).save(path, "TIFF")
    else:
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == "lossless.webp" else []
        path = _write(tmp_path, "a" + ext, cv2.imencode(ext[-5:] if "webp" in ext else ext, image, params)[1].tobytes())
    monkeypatch.setattr(images, "read_image", None)  # the header must suffice: no decoding
    assert image_size(path) == (37, 23)


def test_image_size_falls_back_to_decoding(tmp_path):
    path = _write(tmp_path, "a.ppm", cv2.imencode(".ppm", _texture(23, 37))[1].tobytes())
    assert image_size(path) == (37, 23)
    with pytest.raises(ImageError, match="not an image"):
        image_size(_write(tmp_path, "b.jpg", b"not an image at all, just some text"))


def test_concurrent_decodes_blame_only_the_broken_image(tmp_path, jpeg_bytes, capfd):
    good = [_write(tmp_path, f"good{i}.jpg", jpeg_bytes) for i in range(24)]
    bad = [_write(tmp_path, f"bad{i}.jpg", jpeg_bytes[: len(jpeg_bytes) // 2] + b"\xff\xd9") for i in range(4)]
    paths = good[:6] + bad[:1] + good[6:12] + bad[1:2] + good[12:18] + bad[2:] + good[18:]
    outcome = {}

    def work(chunk):
        for path in chunk:
            try:
                read_image(path)
                outcome[path] = "ok"
            except ImageError as error:
                outcome[path] = str(error)

    threads = [threading.Thread(target=work, args=(paths[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(outcome[p] == "ok" for p in good)
    assert all(outcome[p].startswith(f"{p}: corrupt") for p in bad)
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_capture_forwards_what_is_not_a_decoder_message(capfd):
    with images._capture.window() as window:
        os.write(2, b"hello from elsewhere\n")
        os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
        os.write(2, b"\r 50%|#####     |")
    assert b"hello from elsewhere" in window.text and b"Corrupt JPEG" in window.text
    assert capfd.readouterr().err == "hello from elsewhere\n\r 50%|#####     |"
