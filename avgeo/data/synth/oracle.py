"""How well a clip's ground-truth story locates it, per modality: a calibration aid for the knobs.

A naive Bayes model of each region is fitted on the train split's stories and scores the test split's
(their locations are disjoint, as in the benchmark), from:
- seen: the landscape (climate, urbanity, coast, mountains) all frames are rendered from, as a
  categorical per region (counted once per location, as all its clips share one look);
- heard: which AudioSet classes are audible, without their roles (a listener cannot tell which sound is
  the regional one), as independent Bernoullis per region;
- both: the two together.
The located answer is the train location with the least expected great-circle distance under the
region posterior (spread evenly over each region's train locations): the Bayes point for that loss.
These are ceilings of what the story allows, not what a model reaches from pixels and waveforms: it
must first recognise the landscape and the sounds, and loud distractors mask quiet regional sources.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from avgeo.geo.sphere import great_circle_km

LANDSCAPE_COLUMNS = ("climate", "urbanity", "coast", "mountains", "facade")
"""The manifest columns that make up a location's look."""

THRESHOLDS_KM = (200.0, 750.0, 2500.0)
"""Region, country and continent scales of the method's tables."""


def story_oracle(manifest: pa.Table) -> dict[str, dict[str, float]]:
    """Per modality ("chance", "seen", "heard", "both"): test-split `region_acc` (share whose most
    probable region is right), `median_km` and `acc_{200,750,2500}km` (shares within those distances).

    `manifest`: an avg-synth manifest (its region, landscape and source_names columns are the story).
    "chance" knows only how many train clips each region has.
    """
    split = np.array(manifest["split"].to_pylist())
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    regions = np.array(manifest["region"].to_pylist())
    labels = sorted(set(regions[train]))
    looks = np.array(
        [
            "|".join(map(str, look))
            for look in zip(*(manifest[c].to_pylist() for c in LANDSCAPE_COLUMNS), strict=True)
        ]
    )
    latlon_deg = torch.from_numpy(np.stack([manifest["lat"].to_numpy(), manifest["lon"].to_numpy()], axis=1))
    # One row per train location: its clips share region, look and coordinates.
    _, first_clip = np.unique(np.array(manifest["location_id"].to_pylist())[train], return_index=True)
    locations = train[np.sort(first_clip)]
    location_region = np.searchsorted(labels, regions[locations])

    log_prior = np.log([np.sum(regions[train] == label) for label in labels])
    seen_ll = _look_log_likelihood(looks, regions, locations, test, labels)
    heard_ll = _sounds_log_likelihood(manifest["source_names"].to_pylist(), regions, train, test, labels)
    location_km = great_circle_km(latlon_deg[locations][:, None], latlon_deg[locations][None, :]).numpy()
    truth_km = great_circle_km(latlon_deg[test][:, None], latlon_deg[locations][None, :]).numpy()
    region_size = np.bincount(location_region, minlength=len(labels))
    report = {}
    for modality, log_likelihood in (
        ("chance", np.zeros_like(seen_ll)),
        ("seen", seen_ll),
        ("heard", heard_ll),
        ("both", seen_ll + heard_ll),
    ):
        log_posterior = log_prior + log_likelihood
        region_posterior = np.exp(log_posterior - log_posterior.max(axis=1, keepdims=True))
        region_posterior /= region_posterior.sum(axis=1, keepdims=True)
        location_posterior = (region_posterior / region_size)[:, location_region]
        answer = (location_posterior @ location_km).argmin(axis=1)
        error_km = truth_km[np.arange(len(test)), answer]
        report[modality] = {
            "region_acc": float(np.mean(np.array(labels)[region_posterior.argmax(axis=1)] == regions[test])),
            "median_km": float(np.median(error_km)),
            **{f"acc_{km:.0f}km": float(np.mean(error_km <= km)) for km in THRESHOLDS_KM},
        }
    return report


def _look_log_likelihood(
    looks: np.ndarray, regions: np.ndarray, locations: np.ndarray, test: np.ndarray, labels: list[str]
) -> np.ndarray:
    """(N_test, R) log p(look | region): categorical over looks, add-one smoothed, one count per location."""
    vocabulary = sorted(set(looks))
    counts = np.ones((len(labels), len(vocabulary)))
    for look, region in zip(looks[locations], regions[locations], strict=True):
        counts[labels.index(region), vocabulary.index(look)] += 1
    log_prob = np.log(counts / counts.sum(axis=1, keepdims=True))
    return log_prob[:, np.searchsorted(vocabulary, looks[test])].T


def _sounds_log_likelihood(
    heard: list[list[str]], regions: np.ndarray, train: np.ndarray, test: np.ndarray, labels: list[str]
) -> np.ndarray:
    """(N_test, R) log p(exactly these classes audible | region): per-class Bernoulli, add-one smoothed."""
    vocabulary = sorted({name for names in heard for name in names})
    index = {name: i for i, name in enumerate(vocabulary)}
    presence = np.zeros((len(heard), len(vocabulary)))
    for row, names in enumerate(heard):
        presence[row, [index[name] for name in names]] = 1.0
    prob = np.stack(
        [
            (presence[train][regions[train] == label].sum(0) + 1) / ((regions[train] == label).sum() + 2)
            for label in labels
        ]
    )
    return presence[test] @ np.log(prob).T + (1 - presence[test]) @ np.log1p(-prob).T
