"""One example's raw inputs, as a user hands them to mmjax.predict: image files or pixel arrays, audio files
or (waveform, sample rate) pairs, text. Bad input raises ValueError naming the file."""

import os

import numpy as np
import PIL.Image

from mmjax.data import audio

ImageInput = str | os.PathLike | np.ndarray
AudioInput = str | os.PathLike | tuple[np.ndarray, int]


def read_image(image: ImageInput, size: tuple[int, int], channels: int) -> np.ndarray:
    """A file or a pixel array ([H, W] or [H, W, C], 0..255) -> uint8 [height, width, channels]: RGB (3) or
    grey (1), resized bilinearly to `size` (height, width)."""
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
    if picture.size != (size[1], size[0]):
        picture = picture.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, np.uint8)
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
