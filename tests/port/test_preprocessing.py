"""A ported checkpoint's preprocessor_config.json sets the experiment's data path unless the command line
overrides it, with a log line for each decision."""

import numpy as np
import pytest
import torch
import transformers

from mmjax.config import load_config
from mmjax.data.inputs import read_image
from mmjax.port.preprocessing import apply_checkpoint_preprocessing, checkpoint_settings

pytestmark = pytest.mark.parity

FOLDER = "experiments/folder.py:labels=label"


@pytest.fixture
def vit_dir(tmp_path):
    """A tiny ViT checkpoint with a bicubic 24x24 image processor normalising with CLIP's mean/std."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=24,
        patch_size=8,
    )
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    processor = transformers.ViTImageProcessor(
        size={"height": 24, "width": 24},
        resample=3,
        image_mean=[0.48, 0.46, 0.41],
        image_std=[0.27, 0.26, 0.28],
    )
    processor.save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


def test_image_processor_sets_the_data_path_unless_overridden(vit_dir, capsys):
    config = load_config(FOLDER, [f"model.image.init_from=hf:{vit_dir}"])
    assert config.data.image_size == config.model.image.size == 24
    assert config.data.image_mean == (0.48, 0.46, 0.41) and config.data.image_std == (0.27, 0.26, 0.28)
    log = capsys.readouterr().out
    assert f"preprocessing: data.image_size=24 from hf:{vit_dir}'s preprocessor_config.json (was 32)" in log
    config = load_config(FOLDER, [f"model.image.init_from=hf:{vit_dir}", "data.image_size=48"])
    assert config.data.image_size == 48 and config.data.image_mean == (0.48, 0.46, 0.41)
    assert "preprocessing: data.image_size=48 kept from the command line" in capsys.readouterr().out


def test_center_crop_and_shortest_edge(tmp_path):
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(tmp_path)
    settings = checkpoint_settings(str(tmp_path))
    assert settings["data.image_size"] == 32 and settings["data.image_resample"] == "bicubic"
    assert settings["data.image_resize"] == 40  # the shorter edge to 40, then the centre 32 x 32
    transformers.CLIPImageProcessor(size={"shortest_edge": 40}, do_center_crop=False).save_pretrained(
        tmp_path
    )
    settings = checkpoint_settings(str(tmp_path))
    assert settings["data.image_size"] == 40 and settings["data.image_resize"] == 0
    transformers.ViTImageProcessor(size={"height": 24, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"preprocessor_config.json: size .* is not square"):
        checkpoint_settings(str(tmp_path))


def test_feature_extractors_set_the_audio_frontend(tmp_path, vit_dir):
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=False).save_pretrained(
        tmp_path / "w2v"
    )
    assert checkpoint_settings(str(tmp_path / "w2v")) == {
        "data.sample_rate": 8000,
        "model.audio.frontend": "waveform",
        "data.waveform_normalize": False,
    }
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "whisper")
    settings = checkpoint_settings(str(tmp_path / "whisper"))
    assert settings["model.audio.frontend"] == "log_mel" and settings["data.n_mels"] == 80
    transformers.ASTFeatureExtractor(num_mel_bins=32).save_pretrained(tmp_path / "ast")
    assert checkpoint_settings(str(tmp_path / "ast"))["model.audio.mels"] == 32
    config = load_config(FOLDER)
    config.unlock()
    config.model.audio.init_from = str(tmp_path / "whisper")
    lines = []
    applied = apply_checkpoint_preprocessing(config, log=lines.append)
    assert applied["data.n_mels"] == 80 and config.data.n_mels == config.model.audio.mels == 80
    assert any("data.n_mels=80" in line for line in lines)
    assert checkpoint_settings(str(tmp_path)) == {}  # no preprocessor_config.json: nothing to apply


def test_shorter_edge_resize_then_centre_crop():
    """read_image with resize: the shorter edge to `resize` (aspect kept), then the centre crop."""
    columns = np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1))  # 20 x 40, each column its own value
    out = read_image(columns, (10, 10), 1, resize=10, resample="nearest")[..., 0]
    assert out.shape == (10, 10)
    # halved to 10 x 20 (nearest takes the second of each pair of columns), resized columns 5..14 kept
    np.testing.assert_array_equal(out[0], columns[0, 11:31:2])
    with pytest.raises(ValueError, match="image_resample='cubic'"):
        read_image(columns, (10, 10), 1, resample="cubic")
