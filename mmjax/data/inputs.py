"""One example's raw inputs, as a user hands them to mmjax.predict: image files or pixel arrays, audio files
or (waveform, sample rate) pairs, text. Bad input raises ValueError naming the file."""

import os

import numpy as np
import PIL.Image

from mmjax.data import audio

ImageInput = str | os.PathLike | np.ndarray
AudioInput = str | os.PathLike | tuple[np.ndarray, int]


RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # PIL's resampling filters


def fit_image(picture: PIL.Image.Image, size: tuple[int, int], resize: int = 0, resample: str = "bilinear"):
    """`picture` resized to `size` (height, width) with the PIL filter `resample`; with `resize` > 0 its
    shorter edge is first resized to `resize` (aspect kept) and the centre `size` cropped, as image
    processors with a centre crop do."""
    if resample not in RESAMPLE:
        raise ValueError(f"image_resample={resample!r} is not one of {RESAMPLE}")
    method = PIL.Image.Resampling[resample.upper()]
    if resize:
        width, height = picture.size
        scale = resize / min(width, height)
        shape = (max(size[1], int(width * scale)), max(size[0], int(height * scale)))
        picture = picture.resize(shape, method)
        left, top = (shape[0] - size[1]) // 2, (shape[1] - size[0]) // 2
        return picture.crop((left, top, left + size[1], top + size[0]))
    if picture.size != (size[1], size[0]):
        picture = picture.resize((size[1], size[0]), method)
    return picture


def read_image(
    image: ImageInput, size: tuple[int, int], channels: int, resize: int = 0, resample: str = "bilinear"
) -> np.ndarray:
    """A file or a pixel array ([H, W] or [H, W, C], 0..255) -> uint8 [height, width, channels]: RGB (3) or
    grey (1), fitted to `size` (height, width) by fit_image (`resize`, `resample`)."""
    mode = "RGB" if channels == 3 else "L"
    if isinstance(image, np.ndarray):
        pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
            raise ValueError(
                f"image array of shape {image.shape}: expected [H, W] or [H, W, C] with C 1, 3 or 4"
            )
        picture = PIL.Image.fromarray(pixels).convert(mode)
    else:
        try:
            with PIL.Image.open(image) as opened:
                picture = opened.convert(mode)
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image file {image}: {err}") from err
    pixels = np.asarray(fit_image(picture, size, resize, resample), np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def read_wave(sound: AudioInput) -> tuple[np.ndarray, int, str]:
    """A file (any sample rate) or a (wave, sample rate) pair -> (mono float32 wave, sample rate, its name
    for messages). Unreadable, empty, silent or non-finite audio raises ValueError naming it."""
    if isinstance(sound, tuple):
        wave, sample_rate, source = np.asarray(sound[0], np.float32), int(sound[1]), "audio array"
        if wave.ndim == 2:
            wave = wave.mean(axis=1)  # [samples, channels]
        if wave.ndim != 1 or not wave.size:
            raise ValueError(
                f"audio array of shape {np.shape(sound[0])}: expected [samples] or [samples, channels]"
            )
    else:
        wave, sample_rate = audio.load_wav(sound)
        source = str(sound)
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{source}: non-finite samples")
    if not np.any(wave):
        raise ValueError(f"{source}: silent (every sample is 0)")
    return wave, sample_rate, source
