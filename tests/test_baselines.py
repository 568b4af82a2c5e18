"""The heads behind one interface: the RFM head on features, the regression and S2-cell classification
baselines, late fusion of densities, and GeoCLIP's gallery as a predictor."""

import math

import numpy as np
import pytest
import s2sphere
import torch

from avgeo.config import ConfigError
from avgeo.geo.s2cells import cell_tokens
from avgeo.geo.sphere import SPHERE_AREA_SR, angle_between, latlon_to_xyz, normalize, xyz_to_latlon
from avgeo.geo.vmf import VMFMixture, sample_vmf, vmf_log_density
from avgeo.prediction.baselines import (
    CellClassifierConfig,
    CellClassifierHead,
    GalleryPredictor,
    LateFusion,
    RegressionConfig,
    RegressionHead,
    class_cells,
)
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.heads import FlowHead, GeoPrediction, GeoPredictor, NoDensityError
from avgeo.prediction.regions import point_estimate
from avgeo.prediction.vector_field import RFMConfig

CITIES_DEG = np.array([[48.86, 2.35], [-33.87, 151.21], [40.71, -74.01], [35.68, 139.69], [-1.29, 36.82]])
FEATURE_DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features_of(latlon_deg: np.ndarray, seed: int = 0) -> torch.Tensor:
    """(N, FEATURE_DIM) features that are a smooth, invertible-enough function of the location."""
    projection = torch.randn(
        3, FEATURE_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return torch.tanh(latlon_to_xyz(torch.from_numpy(latlon_deg)) @ projection).float()


def _fit(head, features: torch.Tensor, targets: torch.Tensor, steps: int, learning_rate: float = 1e-2):
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = head.loss(features, targets, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def _classifier(level: int = 4, **overrides) -> CellClassifierHead:
    config = CellClassifierConfig(
        feature_dim=FEATURE_DIM,
        s2_level=level,
        cell_tokens=class_cells(CITIES_DEG, level),
        width=32,
        **overrides,
    )
    return CellClassifierHead(config)


class VMFPredictor(GeoPredictor):
    """A known density, vMF(mean, κ) whatever the features, to check what late fusion does with densities."""

    has_density = True

    def __init__(self, mean_latlon_deg: tuple[float, float], kappa: float) -> None:
        self.mean_dir = latlon_to_xyz(torch.tensor(mean_latlon_deg, dtype=torch.float64))
        self.kappa = kappa

    def predict(self, features, num_samples, generator=None) -> GeoPrediction:
        samples = sample_vmf(len(features) * num_samples, self.mean_dir, self.kappa, generator)
        samples = samples.reshape(len(features), num_samples, 3)
        return GeoPrediction(samples, self.log_density(samples, features), samples)

    def log_density(self, xyz, features):
        return vmf_log_density(xyz.double(), self.mean_dir, self.kappa)


# --- The RFM head on features ----------------------------------------------------------------------------


def test_flow_head_point_is_its_densest_sample_and_saves_as_an_rfm_checkpoint(tmp_path):
    head = FlowHead(RFMConfig(cond_dim=FEATURE_DIM, width=32, num_steps=4)).eval()
    features = _features_of(CITIES_DEG[:3])
    with torch.no_grad():
        prediction = head.predict(features, 16, torch.Generator().manual_seed(0))
        best = prediction.candidate_scores.argmax(-1)
        assert torch.equal(prediction.point_xyz, prediction.candidates_xyz[torch.arange(3), best])
        assert prediction.samples_xyz.shape == (3, 16, 3)
        # The candidates' scores are the flow's exact log-density at them.
        recomputed = head.log_density(prediction.candidates_xyz[:, :4], features)
        torch.testing.assert_close(recomputed, prediction.candidate_scores[:, :4], atol=2e-3, rtol=0)

        head.save_pretrained(tmp_path / "rfm")
        flow = RFMHead.from_pretrained(tmp_path / "rfm")  # what the reasoning stage loads
        truth = latlon_to_xyz(torch.from_numpy(CITIES_DEG[:3])).float()
        torch.testing.assert_close(
            flow.log_density(truth, features), head.log_density(truth[:, None], features)[:, 0]
        )
        reloaded = FlowHead.from_pretrained(tmp_path / "rfm")
        torch.testing.assert_close(
            reloaded.log_density(truth[:, None], features), head.log_density(truth[:, None], features)
        )


def test_flow_head_needs_the_feature_width():
    with pytest.raises(ConfigError, match="cond_dim"):
        FlowHead(RFMConfig(cond_dim=0))


# --- Regression ------------------------------------------------------------------------------------------


def test_regression_head_learns_locations_and_predicts_a_point_mass():
    features = _features_of(CITIES_DEG)
    head = RegressionHead(RegressionConfig(feature_dim=FEATURE_DIM, width=64))
    targets = head.training_targets(torch.from_numpy(CITIES_DEG))
    with torch.no_grad():
        untrained_angle = head.loss(features, targets).item()
    _fit(head, features, targets, steps=300)
    with torch.no_grad():
        prediction = head.predict(features, num_samples=4)
    error_rad = angle_between(prediction.point_xyz, targets)
    assert untrained_angle > 0.5 and error_rad.max() < 0.1
    torch.testing.assert_close(prediction.point_xyz.norm(dim=-1), torch.ones(5))
    assert torch.equal(prediction.samples_xyz, prediction.point_xyz[:, None].expand(-1, 4, -1))
    assert not head.has_density
    with pytest.raises(NoDensityError, match="NLL"):
        head.log_density(targets[:, None], features)


def test_regression_head_round_trips_through_disk(tmp_path):
    head = RegressionHead(RegressionConfig(feature_dim=FEATURE_DIM, width=8, seed=3))
    head.save_pretrained(tmp_path / "regression")
    reloaded = RegressionHead.from_pretrained(tmp_path / "regression")
    features = _features_of(CITIES_DEG)
    assert reloaded.config == head.config
    assert torch.equal(reloaded(features), head(features))


def test_head_configs_reject_impossible_values():
    with pytest.raises(ConfigError, match="feature_dim is 0"):
        RegressionHead(RegressionConfig())
    with pytest.raises(ConfigError, match="num_layers"):
        RegressionConfig(feature_dim=4, num_layers=0)
    with pytest.raises(ConfigError, match="uniform_weight"):
        CellClassifierConfig(uniform_weight=0.0)
    with pytest.raises(ConfigError, match="cell_tokens is empty"):
        CellClassifierHead(CellClassifierConfig(feature_dim=4))
    with pytest.raises(ConfigError, match="'47e4' is not the token of a level-4"):
        CellClassifierHead(CellClassifierConfig(feature_dim=4, s2_level=4, cell_tokens=["47e4"]))


# --- Classification over S2 cells ------------------------------------------------------------------------


def test_classes_are_the_cells_of_the_training_locations():
    head = _classifier(level=5)
    targets = head.training_targets(torch.from_numpy(CITIES_DEG))
    tokens = cell_tokens(CITIES_DEG, (5,))[:, 0]
    assert [head.config.cell_tokens[i] for i in targets] == list(tokens)
    assert head.config.cell_tokens == sorted(set(tokens))
    # The classifier's own cell lookup agrees with S2's.
    assert torch.equal(head.cell_index(latlon_to_xyz(torch.from_numpy(CITIES_DEG))), targets)
    with pytest.raises(ConfigError, match="outside the head's 5 class cells"):
        head.training_targets(torch.tensor([[0.0, -30.0]], dtype=torch.float64))


def test_classifier_density_is_constant_on_each_cell_and_normalised():
    head = _classifier(level=4)
    features = _features_of(CITIES_DEG[:2])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        prediction = head.predict(features, 2000, generator)
        sample_log_density = head.log_density(prediction.samples_xyz, features)
    index = head.cell_index(prediction.samples_xyz)
    # Inside class cell c the density is the candidate score of c; outside every cell it is the floor.
    inside = index >= 0
    expected = prediction.candidate_scores.gather(1, index.clamp_min(0))
    torch.testing.assert_close(sample_log_density[inside], expected[inside])
    floor = math.log(head.config.uniform_weight / SPHERE_AREA_SR)
    torch.testing.assert_close(
        sample_log_density[~inside], torch.full_like(sample_log_density[~inside], floor)
    )
    # Piecewise constant, so the integral is a sum over cells with S2's exact areas.
    areas_sr = torch.tensor(
        [s2sphere.Cell(s2sphere.CellId.from_token(token)).exact_area() for token in head.config.cell_tokens]
    )
    mass_in_cells = (prediction.candidate_scores.double().exp() * areas_sr).sum(-1)
    total = mass_in_cells + math.exp(floor) * (SPHERE_AREA_SR - areas_sr.sum())
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))
    # Samples fall in each cell as often as the density says (2000 draws: a few percent of noise).
    for clip in range(2):
        counts = torch.bincount(index[clip][inside[clip]], minlength=len(areas_sr)) / 2000.0
        probability = prediction.candidate_scores[clip].double().exp() * areas_sr
        assert (counts - probability).abs().max() < 0.04


def test_classifier_samples_are_uniform_inside_a_cell():
    head = _classifier(level=3, uniform_weight=1e-9)
    with torch.no_grad():
        samples = head._uniform_in_cells(
            torch.zeros(8000, dtype=torch.long), torch.Generator().manual_seed(2)
        )
    parent = s2sphere.CellId.from_token(head.config.cell_tokens[0])
    children = [parent.child_begin(5)]
    while children[-1] != parent.child_end(5).prev():
        children.append(children[-1].next())
    child_of = {child.to_token(): index for index, child in enumerate(children)}
    tokens = cell_tokens(xyz_to_latlon(samples).numpy(), (5,))[:, 0]
    counts = np.bincount([child_of[token] for token in tokens], minlength=16)  # KeyError if outside the cell
    areas = np.array([s2sphere.Cell(child).exact_area() for child in children])
    expected = 8000 * areas / areas.sum()
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 37.7  # 99.9th percentile of χ² with 15 degrees of freedom


def test_classifier_learns_the_training_cells_and_round_trips(tmp_path):
    head = _classifier(level=4)
    features = _features_of(CITIES_DEG)
    targets = head.training_targets(torch.from_numpy(CITIES_DEG))
    _fit(head, features, targets, steps=150)
    with torch.no_grad():
        prediction = head.predict(features, 8)
        truth_log_density = head.log_density(latlon_to_xyz(torch.from_numpy(CITIES_DEG))[:, None], features)
    # The point estimate is the centre of the true cell: within a level-4 cell's reach of the truth.
    assert torch.equal(head.cell_index(prediction.point_xyz), targets)
    assert (truth_log_density[:, 0] > 3.0).all()  # far above the uniform 1/4π (−2.53 nats/sr)
    head.save_pretrained(tmp_path / "classifier")
    reloaded = CellClassifierHead.from_pretrained(tmp_path / "classifier")
    assert reloaded.config.cell_tokens == head.config.cell_tokens
    torch.testing.assert_close(reloaded(features), head(features))


# --- Late fusion -----------------------------------------------------------------------------------------


def test_late_fusion_is_the_equal_mixture_of_the_two_densities():
    visual, audio = VMFPredictor((45.0, 5.0), kappa=400.0), VMFPredictor((-10.0, 120.0), kappa=50.0)
    fusion = LateFusion(visual, audio, visual_dim=3)
    features = torch.zeros(2, 5)  # 3 visual and 2 audio columns, unused by these densities
    mixture = VMFMixture(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.stack((visual.mean_dir, audio.mean_dir)),
        torch.tensor([400.0, 50.0], dtype=torch.float64),
    )
    points = normalize(
        torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    torch.testing.assert_close(fusion.log_density(points, features), mixture.log_density(points))

    prediction = fusion.predict(features, 500, torch.Generator().manual_seed(1))
    assert prediction.candidates_xyz.shape == (2, 1000, 3)
    torch.testing.assert_close(prediction.candidate_scores, mixture.log_density(prediction.candidates_xyz))
    # The sharper component holds the densest candidates, so the estimate sits at its mode.
    assert (angle_between(prediction.point_xyz, visual.mean_dir) < 0.1).all()
    near_visual = angle_between(prediction.samples_xyz, visual.mean_dir) < 0.5
    assert abs(near_visual.double().mean().item() - 0.5) < 0.05


def test_late_fusion_needs_two_densities():
    regression = RegressionHead(RegressionConfig(feature_dim=3, width=4))
    with pytest.raises(ConfigError, match="the audio head RegressionHead has none"):
        LateFusion(VMFPredictor((0.0, 0.0), 10.0), regression, visual_dim=3)


def test_late_fusion_of_classifiers_keeps_each_clip_between_its_heads():
    visual, audio = _classifier(level=3, seed=1), _classifier(level=4, seed=2)
    features = torch.cat((_features_of(CITIES_DEG, seed=1), _features_of(CITIES_DEG, seed=2)), dim=1)
    fusion = LateFusion(visual, audio, visual_dim=FEATURE_DIM)
    truth = latlon_to_xyz(torch.from_numpy(CITIES_DEG))[:, None]
    with torch.no_grad():
        fused = fusion.log_density(truth, features)
        per_head = torch.stack(
            (
                visual.log_density(truth, features[:, :FEATURE_DIM]),
                audio.log_density(truth, features[:, FEATURE_DIM:]),
            )
        )
    assert (fused <= per_head.max(0).values + 1e-6).all()
    assert (fused >= per_head.max(0).values - math.log(2.0) - 1e-6).all()


# --- GeoCLIP's gallery -----------------------------------------------------------------------------------


def test_gallery_predictor_picks_geoclips_top_coordinate():
    from avgeo.perception.geoclip_gallery import GeoCLIPGallery

    gallery = GeoCLIPGallery.from_geoclip_package(gallery_size=300)
    predictor = GalleryPredictor(gallery, top_k=10)
    image_features = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
    prediction = predictor.predict(image_features, 50, torch.Generator().manual_seed(1))
    top = gallery.predict(image_features, 1)
    torch.testing.assert_close(
        xyz_to_latlon(prediction.point_xyz.double()), top.latlon_deg[:, 0].double(), atol=1e-4, rtol=0
    )
    # Every sample is one of the clip's 10 candidates.
    distances = angle_between(prediction.samples_xyz[:, :, None], prediction.candidates_xyz[:, None])
    assert (distances.min(-1).values < 1e-6).all()
    assert not predictor.has_density
    assert torch.equal(
        point_estimate(prediction.candidates_xyz, prediction.candidate_scores), prediction.point_xyz
    )
