"""GeoCLIP visual encoder (CLIP + GeoCLIP's shipped MLP) and GeoCLIP's gallery baseline."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from avgeo.perception.checkpoints import CheckpointError, geoclip_file
from avgeo.perception.geoclip_gallery import GeoCLIPGallery
from avgeo.perception.visual import TINY_CLIP_VISION, VisualEncoder, geoclip_image_mlp

# Vision sizes without a projection width: full CLIP configs keep that at the top level.
TINY_VISION = {key: value for key, value in TINY_CLIP_VISION.items() if key != "projection_dim"}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(autouse=True, scope="module")
def avgeo_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEO_HOME", str(tmp_path_factory.mktemp("avgeo_home")))
        yield


@pytest.fixture(scope="module")
def encoder():
    return VisualEncoder.from_pretrained("tiny")


@pytest.fixture(scope="module")
def kauai_photo() -> torch.Tensor:
    """(H, W, 3) uint8: the photo geoclip ships as its example."""
    with Image.open(geoclip_file("images/Kauai.png")) as image:
        return torch.from_numpy(np.array(image.convert("RGB")))


def _frames(shape, seed):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_preprocessing_matches_clips_image_processor_on_a_photo(encoder, kauai_photo):
    reference = CLIPImageProcessor()(images=kauai_photo.numpy(), return_tensors="pt")["pixel_values"]
    mine = encoder.preprocess(kauai_photo[None])
    assert mine.shape == reference.shape == (1, 3, 224, 224)
    difference = (mine - reference).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1, "only PIL-vs-torch resampling may differ"


def test_a_frame_whose_short_side_fits_is_only_centre_cropped_and_normalised(encoder):
    frame = _frames((1, 224, 400, 3), seed=0)
    expected = (frame[0, :, 88:312].permute(2, 0, 1).float() / 255 - encoder.pixel_mean) / encoder.pixel_std
    assert torch.allclose(encoder.preprocess(frame)[0], expected, atol=1e-6)
    portrait = frame.transpose(1, 2)  # (1, 400, 224, 3): the crop moves to the rows
    assert torch.allclose(encoder.preprocess(portrait)[0], expected.transpose(1, 2), atol=1e-6)


def test_a_uniform_frame_of_any_size_stays_uniform(encoder):
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8)
    for height, width in [(480, 640), (720, 1280), (100, 90)]:
        frame = colour.expand(1, height, width, 3)
        pixels = encoder.preprocess(frame)[0]
        expected = (colour.float().view(3, 1, 1) / 255 - encoder.pixel_mean) / encoder.pixel_std
        assert torch.allclose(pixels, expected.expand(3, 224, 224), atol=1e-5)


def test_features_per_frame_and_their_temporal_mean(encoder):
    frames = _frames((2, 5, 120, 160, 3), seed=1)
    features = encoder.encode_frames(frames)
    assert features.per_frame.shape == (2, 5, 512) and features.mean.shape == (2, 512)
    assert torch.allclose(features.mean, features.per_frame.mean(dim=1))
    one_frame = encoder.encode_frames(frames[:1, 3:4])
    assert torch.allclose(one_frame.per_frame[0, 0], features.per_frame[0, 3], atol=1e-5)
    chunked = encoder.encode_frames(frames, frames_per_forward=3)
    assert torch.allclose(chunked.per_frame, features.per_frame, atol=1e-5)
    assert torch.equal(encoder.encode_frames(frames).per_frame, features.per_frame)


def test_features_come_from_geoclips_shipped_mlp(encoder):
    shipped = torch.load(geoclip_file("model/weights/image_encoder_mlp_weights.pth"), weights_only=True)
    for name, tensor in encoder.geoclip_mlp.state_dict().items():
        assert torch.equal(tensor, shipped[name]), name
    frames = _frames((1, 2, 224, 224, 3), seed=2)
    image_embeds = encoder.clip(pixel_values=encoder.preprocess(frames[0])).image_embeds
    assert image_embeds.shape == (2, 768)
    expected = encoder.geoclip_mlp(image_embeds)
    assert torch.allclose(encoder.encode_frames(frames).per_frame[0], expected, atol=1e-6)


def test_a_full_clip_checkpoint_loads_its_vision_tower(tmp_path, kauai_photo):
    """A CLIPModel directory, laid out like openai/clip-vit-large-patch14, with tiny sizes."""
    torch.manual_seed(3)
    clip = CLIPModel(CLIPConfig(projection_dim=768, text_config=TINY_TEXT, vision_config=TINY_VISION)).eval()
    clip.save_pretrained(tmp_path / "clip")
    encoder = VisualEncoder.from_pretrained(tmp_path / "clip")
    frames = kauai_photo[None, None]
    with torch.no_grad():
        output = clip.get_image_features(pixel_values=encoder.preprocess(kauai_photo[None]))
        image_features = getattr(output, "pooler_output", output)  # a tensor or an output, by version
        expected = geoclip_image_mlp()(image_features)
    assert torch.allclose(encoder.encode_frames(frames).per_frame[0], expected, atol=1e-5)


def test_a_clip_with_another_projection_width_is_refused(tmp_path):
    config = CLIPConfig(projection_dim=512, text_config=TINY_TEXT, vision_config=TINY_VISION)
    CLIPModel(config).save_pretrained(tmp_path / "b32")
    with pytest.raises(CheckpointError, match="GeoCLIP's MLP takes 768"):
        VisualEncoder.from_pretrained(tmp_path / "b32")
    with pytest.raises(CheckpointError, match="cannot read a CLIP config"):
        VisualEncoder.from_pretrained(tmp_path / "missing")


def test_tiny_is_rebuilt_identically_from_its_seed(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path))
    frames = _frames((1, 2, 64, 64, 3), seed=4)
    rebuilt = VisualEncoder.from_pretrained("tiny")
    assert torch.equal(rebuilt.encode_frames(frames).per_frame, encoder.encode_frames(frames).per_frame)


def test_bad_frames_are_rejected_with_the_expected_format(encoder):
    with pytest.raises(ValueError, match=r"uint8 RGB of shape \(B, T, H, W, 3\)"):
        encoder.encode_frames(torch.zeros(1, 2, 32, 32, 3))
    with pytest.raises(ValueError, match="uint8 RGB"):
        encoder.encode_frames(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))


GALLERY_SIZE = 1500


@pytest.fixture(scope="module")
def gallery():
    return GeoCLIPGallery.from_geoclip_package(gallery_size=GALLERY_SIZE)


def test_gallery_embeddings_are_cached_and_the_cache_equals_a_fresh_build(gallery, tmp_path, monkeypatch):
    embeddings = gallery.embeddings
    assert embeddings.shape == (GALLERY_SIZE, 512)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(GALLERY_SIZE), atol=1e-5)
    assert gallery.cache_path.is_file()
    cached = GeoCLIPGallery.from_geoclip_package(gallery_size=GALLERY_SIZE)
    assert cached.cache_path == gallery.cache_path
    assert torch.equal(cached.embeddings, embeddings)
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path))
    fresh = GeoCLIPGallery.from_geoclip_package(gallery_size=GALLERY_SIZE)
    assert not fresh.cache_path.exists()
    assert torch.equal(fresh.embeddings, embeddings)
    smaller = GeoCLIPGallery.from_geoclip_package(gallery_size=GALLERY_SIZE - 1)
    assert smaller.cache_path != fresh.cache_path, "another gallery must not reuse this cache"


def test_gallery_retrieves_the_coordinate_whose_embedding_is_the_query(gallery):
    queries = torch.tensor([0, 17, 700, GALLERY_SIZE - 1])
    prediction = gallery.predict(3.0 * gallery.embeddings[queries], top_k=4)
    assert prediction.latlon_deg.shape == (4, 4, 2) and prediction.probs.shape == (4, 4)
    assert torch.equal(prediction.latlon_deg[:, 0], gallery.gallery_latlon_deg[queries])
    assert (prediction.probs.diff(dim=-1) <= 0).all() and (prediction.probs.sum(-1) <= 1 + 1e-6).all()
    # GeoCLIP's temperature: log p_j − log p_1 = exp(logit_scale) · (cos_j − cos_1), over the sorted cosines.
    everything = gallery.predict(gallery.embeddings[queries], top_k=GALLERY_SIZE)
    assert torch.allclose(everything.probs.sum(-1), torch.ones(4), atol=1e-5)
    cosines = (gallery.embeddings[queries] @ gallery.embeddings.T).sort(dim=-1, descending=True).values
    log_ratio = everything.probs[:, :5].log() - everything.probs[:, :1].log()
    expected = np.exp(gallery.logit_scale) * (cosines[:, :5] - cosines[:, :1])
    assert torch.allclose(log_ratio, expected, atol=1e-3)


def test_gallery_predicts_from_visual_features(gallery, encoder):
    features = encoder.encode_frames(_frames((3, 2, 96, 128, 3), seed=5))
    prediction = gallery.predict(features.mean, top_k=10)
    assert prediction.latlon_deg.shape == (3, 10, 2)
    latitude, longitude = prediction.latlon_deg.unbind(-1)
    assert (latitude.abs() <= 90).all() and (longitude.abs() <= 180).all()
    with pytest.raises(ValueError, match="top_k"):
        gallery.predict(features.mean, top_k=GALLERY_SIZE + 1)
    with pytest.raises(ValueError, match=r"\(B, 512\)"):
        gallery.predict(features.per_frame)
    with pytest.raises(ValueError, match="gallery_size"):
        GeoCLIPGallery.from_geoclip_package(gallery_size=0)
