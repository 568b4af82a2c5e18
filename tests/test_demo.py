"""`avgeo demo` end to end on the avg-synth `ci` preset with minimal budgets (every step's outputs, every
row of the table, a re-run that skips every step), and the step runner's bookkeeping on its own."""

import contextlib
import io
import re

import numpy as np
import pyarrow.compute as pc
import pytest

from avgeo.config import ConfigError
from avgeo.data.features import read_features
from avgeo.data.manifest import read_manifest
from avgeo.data.predictions import read_predictions
from avgeo.demo import DemoConfig, run_demo
from avgeo.demo.paths import DemoPaths
from avgeo.demo.run import FEATURE_KINDS
from avgeo.demo.steps import Step, run_steps, time_table
from avgeo.distributed.model_registry import model_entries
from avgeo.perception.icsae import ICSAE

CI_BUDGETS = DemoConfig(
    preset="ci",
    mart_mixtures=48,
    mart_heldout=16,
    mart_epochs=1,
    heads=("rfm",),
    psi_ablation=False,
    head_epochs=2,
    warmup_epochs=1,
    grpo_steps=1,
    eval_clips=4,
    eval_samples=8,
    prdc_k=3,
    gallery_size=500,
)
"""The demo's steps, each as short as it can be and still write its outputs."""

HEADS = [f"rfm-{kind}" for kind in FEATURE_KINDS]
PSI_HEADS = ["rfm-psi-grpo"]
STEPS = ["synth", "mart", "sae", "embed-mart", "embed-sae", *HEADS, "rfm-atoms-standard-sae"]
STEPS += ["warmup", "grpo", *PSI_HEADS, "geotag", "evaluate-mart", "evaluate-sae"]
TABLE_ROWS = {
    "Visual-only": ["rfm-visual", "geoclip-gallery"],
    "Audio-only": ["rfm-atoms", "rfm-atoms-standard-sae", "rfm-audio"],
    "Audiovisual": [
        "rfm-audiovisual",
        *PSI_HEADS,
        "late-fusion(rfm-visual + rfm-atoms)",
        "late-fusion(rfm-visual + rfm-audio)",
    ],
}


def _run(out_dir):
    """run_demo on `out_dir`; returns the results path and what the driver printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = run_demo(out_dir, seed=0, config=CI_BUDGETS)
    return results, printed.getvalue()


@pytest.fixture(scope="module")
def demo_run(ray_local, tmp_path_factory):
    """The ci demo, run once: its paths, results file and printout."""
    out_dir = tmp_path_factory.mktemp("demo")
    results, printed = _run(out_dir)
    return DemoPaths(out_dir.resolve()), results, printed


def _table1(markdown: str) -> dict[str, tuple[str, list[float]]]:
    """Table 1's rows: model -> (group, [acc 25, 200, 750, 2500 km, median km, GeoScore])."""
    section = markdown.split("## Accuracy (Table 1 layout)")[1].split("## ")[0]
    rows, group = {}, None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if re.fullmatch(r"\*[\w-]+\*", cells[0]):
            group = cells[0].strip("*")
        elif group and len(cells) == 7:
            rows[cells[0]] = (group, [float(cell) for cell in cells[1:]])
    return rows


@pytest.mark.ray
@pytest.mark.slow
def test_every_step_writes_its_outputs(demo_run):
    paths, results, printed = demo_run
    assert sorted(path.stem for path in paths.markers.glob("*.json")) == sorted(STEPS), printed
    manifest = read_manifest(paths.manifest)
    assert manifest.num_rows == 48
    # The ablation pretrains another dictionary, and each feature table holds the atoms of its own.
    dictionaries = {name: ICSAE.from_pretrained(paths.icsae(name)).dictionary for name in ("mart", "sae")}
    assert not np.allclose(dictionaries["mart"].detach().numpy(), dictionaries["sae"].detach().numpy())
    for name in ("mart", "sae"):
        features = read_features(paths.features(name), columns=["clip_id", "models"])
        assert sorted(features["clip_id"].to_pylist()) == sorted(manifest["clip_id"].to_pylist())
        icsae_names = set(pc.struct_field(features["models"], "icsae").to_pylist())
        assert len(icsae_names) == 1 and icsae_names.pop().startswith(f"{paths.icsae(name)}@")
    assert sorted(entry.name for entry in model_entries(paths.models("mart"))) == sorted(HEADS + PSI_HEADS)
    assert [entry.name for entry in model_entries(paths.models("sae"))] == ["rfm-atoms-standard-sae"]
    assert (paths.warmup / "config.json").is_file() and (paths.grpo_policy / "config.json").is_file()
    # Geotag: exactly one row per test clip, a heatmap for every located one.
    predictions = read_predictions(paths.geotag, columns=["clip_id", "error", "heatmap_path"])
    test_ids = manifest.filter(pc.equal(manifest["split"], "test"))["clip_id"].to_pylist()
    assert sorted(predictions["clip_id"].to_pylist()) == sorted(test_ids)
    located = predictions.filter(pc.is_null(predictions["error"]))
    assert located.num_rows == len(test_ids)
    assert len(list((paths.geotag / "heatmaps").glob("*.png"))) == located.num_rows
    assert results == paths.results
    assert f"predictions Parquet (test split): {paths.geotag}" in printed


@pytest.mark.ray
@pytest.mark.slow
def test_the_table_has_every_row_grouped_and_ordered_by_distance(demo_run):
    paths, results, printed = demo_run
    markdown = results.read_text()
    assert markdown.split("\n- ")[0].strip() in printed
    rows = _table1(markdown)
    expected = {name: group for group, names in TABLE_ROWS.items() for name in names}
    assert {name: group for name, (group, _) in rows.items()} == expected
    for name, (_, values) in rows.items():
        accuracies = values[:4]
        assert accuracies == sorted(accuracies), f"{name}: accuracy must grow with the distance threshold"
        assert all(0 <= value <= 100 for value in accuracies)
    assert "MART: held-out decomposition accuracy" in markdown
    assert "plain SAE (ablation): held-out decomposition accuracy" in markdown
    num_test = len(_test_ids(paths))
    assert f"rfm-psi-grpo): {num_test} test clips, 0 errors" in markdown
    for step in STEPS:
        assert re.search(rf"^\| {re.escape(step)} \| \d+\.\d \| \d+\.\d \|$", printed, re.MULTILINE), step


def _test_ids(paths):
    manifest = read_manifest(paths.manifest)
    return manifest.filter(pc.equal(manifest["split"], "test"))["clip_id"].to_pylist()


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_run_skips_every_step_and_rewrites_nothing(demo_run):
    paths, results, _ = demo_run
    outputs = [*paths.markers.glob("*.json"), *paths.root.glob("models/*/*/model.json")]
    before = {path: path.stat().st_mtime_ns for path in outputs}
    table_before = results.read_text()
    _, printed = _run(paths.root)
    for step in STEPS:
        assert re.search(rf"\] {re.escape(step)}: finished by an earlier run", printed), step
        assert re.search(rf"^\| {re.escape(step)} \| skipped \|", printed, re.MULTILINE), step
    assert {path: path.stat().st_mtime_ns for path in outputs} == before
    assert results.read_text() == table_before


def test_a_failed_step_leaves_no_marker_and_runs_again(tmp_path):
    calls = []

    def fails_once():
        calls.append("b")
        if calls.count("b") == 1:
            raise RuntimeError("interrupted")

    steps = [Step("a", lambda: calls.append("a")), Step("b", fails_once)]
    steps.append(Step("c", lambda: calls.append("c")))
    with pytest.raises(RuntimeError, match="interrupted"):
        run_steps(steps, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json"]
    records = run_steps(steps, tmp_path)
    assert calls == ["a", "b", "b", "c"]
    statuses = [(record.name, record.status) for record in records]
    assert statuses == [("a", "skipped"), ("b", "ran"), ("c", "ran")]
    assert records[0].wall_s == 0.0 and records[0].first_wall_s >= 0.0
    table = time_table(records, total_wall_s=1.5)
    assert "| a | skipped |" in table and "| **total** | **1.5** |" in table


def test_step_names_must_be_unique_plain_names(tmp_path):
    with pytest.raises(ValueError, match="unique plain names"):
        run_steps([Step("a", print), Step("a", print)], tmp_path)
    with pytest.raises(ValueError, match="unique plain names"):
        run_steps([Step("../a", print)], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("budgets", "needle"),
    [({"grpo_steps": 0}, "grpo_steps=0"), ({"heads": ("regression",)}, "needs the rfm head")],
)
def test_bad_budgets_are_refused_naming_the_field(budgets, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        DemoConfig(**budgets)
