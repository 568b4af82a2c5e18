"""The GRPO rewards on hand-computed cases (the method's Canada/USA example among them), their invariants."""

import math

import numpy as np
import pytest
import torch

from avgeo.config import ConfigError, load_config, save_config
from avgeo.geo.gazetteer import Gazetteer
from avgeo.geo.s2cells import cell_tokens
from avgeo.geo.sphere import great_circle_km, latlon_to_xyz
from avgeo.geo.vmf import vmf_log_density
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.answer import format_answer, parse_response
from avgeo.reasoning.rewards import RewardConfig, r_align, r_calib, r_geo, total_reward

PARIS_DEG = (48.8566, 2.3522)
PARIS_1KM_NORTH_DEG = (48.8656, 2.3522)  # 0.009° of latitude ≈ 1.0 km
LYON_DEG = (45.7640, 4.8357)
NEW_YORK_DEG = (40.7128, -74.0060)
KANSAS_DEG = (38.5, -98.0)
WINNIPEG_DEG = (49.8951, -97.1384)
NAN_DEG = (math.nan, math.nan)

LEVEL_WEIGHTS = {1: 0.2, 5: 0.3, 12: 0.5}
LOG_UNIFORM = -math.log(4 * math.pi)  # nats/sr of the uniform density on the sphere


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load()


def uniform_log_density(truth_xyz: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    return torch.full(truth_xyz.shape[:1], LOG_UNIFORM)


# ---- R_geo -----------------------------------------------------------------------------------------


def test_r_geo_hand_computed_paris_cases():
    pred = np.array([PARIS_1KM_NORTH_DEG, LYON_DEG, NEW_YORK_DEG, NAN_DEG])
    truth = np.array([PARIS_DEG] * 4)
    # The cells behind the hand computation: Paris and the point 1 km north share every level; Lyon
    # shares the level-1 cell only; New York none.
    assert cell_tokens(np.array([PARIS_DEG, PARIS_1KM_NORTH_DEG, LYON_DEG, NEW_YORK_DEG])).tolist() == [
        ["44", "47e4", "47e66e1"],
        ["44", "47e4", "47e66e1"],
        ["44", "47f4", "47f4eaf"],
        ["8c", "89c4", "89c25a3"],
    ]
    dist_km = great_circle_km(torch.tensor(PARIS_DEG), torch.tensor(PARIS_1KM_NORTH_DEG))
    assert dist_km.item() == pytest.approx(1.0, abs=0.01)
    torch.testing.assert_close(r_geo(pred, truth, LEVEL_WEIGHTS), torch.tensor([1.0, 0.2, 0.0, 0.0]))
    # Weights 1, 10, 100 spell out which levels matched.
    decimal_weights = {1: 1.0, 5: 10.0, 12: 100.0}
    torch.testing.assert_close(r_geo(pred, truth, decimal_weights), torch.tensor([111.0, 1.0, 0.0, 0.0]))


def test_r_geo_is_symmetric_nested_and_full_at_the_truth():
    generator = np.random.default_rng(5)
    truth = np.column_stack([generator.uniform(-80, 80, 400), generator.uniform(-180, 180, 400)])
    # Offsets from 100 m to 3000 km, so every level boundary is crossed by some pairs.
    offset_deg = 10.0 ** generator.uniform(-3, 1.5, (400, 1)) * generator.normal(size=(400, 2))
    pred = np.column_stack([np.clip(truth[:, 0] + offset_deg[:, 0], -90, 90), truth[:, 1] + offset_deg[:, 1]])
    rewards = r_geo(pred, truth, LEVEL_WEIGHTS)
    torch.testing.assert_close(rewards, r_geo(truth, pred, LEVEL_WEIGHTS))
    torch.testing.assert_close(r_geo(truth, truth, LEVEL_WEIGHTS), torch.ones(400))
    # Cells nest: a hit at a finer level implies hits at the coarser ones, so only partial sums occur.
    partial_sums = torch.tensor([0.0, 0.2, 0.5, 1.0])
    assert torch.isclose(rewards[:, None], partial_sums).any(dim=1).all()
    assert torch.isclose(rewards[:, None], partial_sums).any(dim=0).all(), "some level is never decisive"


# ---- R_align ---------------------------------------------------------------------------------------


def test_r_align_the_methods_canada_usa_example(gazetteer):
    trace = "Bilingual signs and a maple leaf flag: this is Canada."
    rewards = r_align([trace, trace], np.array([KANSAS_DEG, WINNIPEG_DEG]), gazetteer)
    torch.testing.assert_close(rewards, torch.tensor([0.0, 1.0]))


def test_r_align_takes_the_best_of_the_places_named(gazetteer):
    trace = "The accent could be France, but the prairie and the cold point to Canada."
    assert [place.name for place in gazetteer.find_places(trace)] == ["France", "Canada"]
    pred = np.array([WINNIPEG_DEG, LYON_DEG, NEW_YORK_DEG])
    torch.testing.assert_close(r_align([trace] * 3, pred, gazetteer), torch.tensor([1.0, 1.0, 0.0]))
    # Eq. 3 is a max: the reward of a two-place trace is the larger of its one-place rewards.
    for one_place in ("The accent could be France.", "The prairie points to Canada."):
        assert (r_align([one_place] * 3, pred, gazetteer) <= r_align([trace] * 3, pred, gazetteer)).all()


def test_r_align_cities_hold_points_near_their_centre(gazetteer):
    trace = "Haussmann facades and the metro: Paris."
    rewards = r_align([trace] * 3, np.array([PARIS_1KM_NORTH_DEG, LYON_DEG, PARIS_DEG]), gazetteer)
    torch.testing.assert_close(rewards, torch.tensor([1.0, 0.0, 1.0]))


def test_r_align_without_a_named_place_or_a_parsed_answer(gazetteer):
    no_place = "Flat farmland under a wide sky, a grain elevator and a gravel road."
    assert gazetteer.find_places(no_place) == []
    pred = np.array([KANSAS_DEG, NAN_DEG])
    traces = [no_place, "this is Canada"]
    torch.testing.assert_close(r_align(traces, pred, gazetteer), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(r_align(traces, pred, gazetteer, when_no_place=0.5), torch.tensor([0.5, 0.0]))


# ---- R_calib ---------------------------------------------------------------------------------------


def vmf_at_psi(kappa: float):
    """A density handed in as the flow would be: a vMF whose mean direction is the rollout's ψ (N, 3)."""
    return lambda truth_xyz, psi: vmf_log_density(truth_xyz, psi, kappa)


def test_r_calib_hand_computed():
    truth = torch.tensor([PARIS_DEG, PARIS_DEG, PARIS_DEG, PARIS_DEG])
    paris_xyz = latlon_to_xyz(torch.tensor(PARIS_DEG, dtype=torch.float64))
    pole_xyz = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # ψ is the vMF's mean direction: Paris itself; a point towards the pole with cos(angle to Paris) = 0.97
    # (14°); the North Pole (41°).
    tilted = 0.97 * paris_xyz + math.sqrt(1 - 0.97**2) * torch.nn.functional.normalize(
        pole_xyz - (pole_xyz @ paris_xyz) * paris_xyz, dim=0
    )
    psi = torch.stack([paris_xyz, tilted, pole_xyz, paris_xyz])
    # log p = log κ − log 2π − log(1 − e^{−2κ}) + κ(cos − 1) with κ = 100: 2.76739 at the mean,
    # 2.76739 − 3 = −0.23261 at cos 0.97, and below −10 (clipped) at the pole.
    peak = math.log(100 / (2 * math.pi))
    expected = torch.tensor([peak / 10, (peak - 3) / 10, -1.0, peak / 10])
    torch.testing.assert_close(r_calib(vmf_at_psi(100.0), truth, psi), expected.float())
    # κ = 1e8: log(1e8 / 2π) = 16.58 nats/sr, clipped to +10.
    torch.testing.assert_close(r_calib(vmf_at_psi(1e8), truth[:1], psi[:1]), torch.tensor([1.0]))
    # The uniform density: −log 4π = −2.531 nats/sr.
    torch.testing.assert_close(r_calib(uniform_log_density, truth, psi), torch.full((4,), LOG_UNIFORM / 10))
    torch.testing.assert_close(
        r_calib(uniform_log_density, truth, psi, clip_nats=2.0), torch.full((4,), -1.0)
    )


def test_r_calib_takes_the_rfm_heads_log_density_as_is():
    head = RFMHead(RFMConfig(cond_dim=4, width=32, num_steps=4))
    truth = torch.tensor([PARIS_DEG, NEW_YORK_DEG, LYON_DEG])
    psi = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_density = head.log_density(latlon_to_xyz(truth), psi)
    rewards = r_calib(head.log_density, truth, psi)
    assert not rewards.requires_grad
    torch.testing.assert_close(rewards, (log_density.clamp(-10, 10) / 10).float())


# ---- the total -------------------------------------------------------------------------------------


def test_total_reward_hand_computed(gazetteer):
    responses = [
        format_answer("Haussmann facades, French voices: France.", PARIS_1KM_NORTH_DEG),  # geo 1, align 1
        format_answer("Haussmann facades: Paris.", LYON_DEG),  # geo 0.2, align 0 (Lyon is not in Paris)
        format_answer("A wide avenue, yellow cabs.", NEW_YORK_DEG),  # geo 0, names no place: align 0
        "<think>Paris.</think><answer>Paris</answer>",  # parse failure
        format_answer("Bilingual signs: this is Canada.", KANSAS_DEG),  # geo 0, align 0
    ]
    parsed = [parse_response(text) for text in responses]
    truth = np.array([PARIS_DEG] * 5)
    breakdown = total_reward(parsed, truth, torch.zeros(5, 2), uniform_log_density, gazetteer, RewardConfig())
    calib = LOG_UNIFORM / 10  # −0.25310
    torch.testing.assert_close(breakdown.geo, torch.tensor([1.0, 0.2, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(breakdown.align, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(breakdown.calib, torch.full((5,), calib))
    assert breakdown.parse_ok.tolist() == [True, True, True, False, True]
    # total = 1·geo + 0.5·align + 0.5·calib; the parse failure gets the −1 penalty.
    expected = torch.tensor([1.5 + calib / 2, 0.2 + calib / 2, calib / 2, -1.0, calib / 2])
    torch.testing.assert_close(breakdown.total, expected)


def test_a_parse_failure_scores_below_the_worst_parsed_answer(gazetteer):
    worst = parse_response(format_answer("this is Canada", KANSAS_DEG))
    failure = parse_response("<think>Paris</think><answer>48.85, 2.35")
    psi = latlon_to_xyz(torch.tensor([NEW_YORK_DEG] * 2))  # the density sits far from the truth: R_calib = −1
    for config in (RewardConfig(), RewardConfig(weight_calib=2.0, parse_failure_reward=-2.5)):
        breakdown = total_reward(
            [worst, failure], np.array([PARIS_DEG] * 2), psi, vmf_at_psi(100.0), gazetteer, config
        )
        torch.testing.assert_close(breakdown.calib, torch.tensor([-1.0, -1.0]))
        assert breakdown.total[1] == config.parse_failure_reward < breakdown.total[0]


def test_reward_config_loads_validates_and_round_trips(tmp_path):
    config = load_config(RewardConfig, {"geo_level_weights": {1: 1, 12: 2}, "weight_align": 1})
    assert config.geo_level_weights == {1: 1.0, 12: 2.0} and config.weight_align == 1.0
    save_config(config, tmp_path / "rewards.yaml")
    assert load_config(RewardConfig, tmp_path / "rewards.yaml") == config
    with pytest.raises(ConfigError, match="weight_algin"):
        load_config(RewardConfig, {"weight_algin": 1.0})
    with pytest.raises(ConfigError, match="parse_failure_reward"):
        load_config(RewardConfig, {"parse_failure_reward": -0.5})  # ties the worst parsed total
    with pytest.raises(ConfigError, match="levels must be ints"):
        load_config(RewardConfig, {"geo_level_weights": {31: 1.0}})
    with pytest.raises(ConfigError, match="weight_geo"):
        load_config(RewardConfig, {"weight_geo": -1.0})
