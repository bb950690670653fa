import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conftest import noise_image, save
from medimg.data.hashing import pixel_sha256
from medimg.data.images import ImageError, load_image, load_rgb


def test_rgba_is_composited_on_white(tmp_path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    pixels = load_rgb(save(tmp_path / "a.png", rgba))
    assert pixels[0, 0].tolist() == [200, 0, 0]
    assert pixels[3, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 1000], [30000, 60000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    decoded = load_image(path)
    assert decoded.mode.startswith("I")
    assert decoded.pixels[..., 0].tolist() == [[0, 4], [128, 255]]
    assert decoded.pixels.shape == (2, 2, 3)


def test_palette_cmyk_and_grey_become_rgb(tmp_path) -> None:
    base = Image.fromarray(noise_image(1))
    base.convert("P").save(tmp_path / "p.gif")
    base.convert("CMYK").save(tmp_path / "c.tif")
    base.convert("L").save(tmp_path / "l.bmp")
    for name, mode in [("p.gif", "P"), ("c.tif", "CMYK"), ("l.bmp", "L")]:
        decoded = load_image(tmp_path / name)
        assert decoded.mode == mode
        assert decoded.pixels.shape == (32, 40, 3)
        assert decoded.pixels.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path) -> None:
    pixels = noise_image(2, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "turned.png"
    Image.fromarray(pixels).save(path, exif=exif)
    assert load_rgb(path).shape == (40, 20, 3)


def test_metadata_does_not_change_the_pixel_hash(tmp_path) -> None:
    pixels = noise_image(3)
    plain = save(tmp_path / "plain.png", pixels)
    tagged = tmp_path / "tagged.png"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "same pixels")
    Image.fromarray(pixels).save(tagged, pnginfo=text)
    assert plain.read_bytes() != tagged.read_bytes()
    assert pixel_sha256(load_rgb(plain)) == pixel_sha256(load_rgb(tagged))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a picture", "not a recognised image"),
    ],
)
def test_broken_files_raise_with_a_reason(tmp_path, content, reason) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_rgb(path)


def test_truncated_file_and_pixel_limit(tmp_path) -> None:
    full = save(tmp_path / "full.jpg", noise_image(4, size=(200, 200)), quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ImageError, match="unreadable image"):
        load_rgb(cut)
    with pytest.raises(ImageError, match="too many pixels"):
        load_rgb(full, max_pixels=100 * 100)
