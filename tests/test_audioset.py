"""The AudioSet class table and ontology, read from the packaged copies of Google's files."""

import csv
import json
from pathlib import Path

import pytest

from avgeo.data.audioset import (
    AudioSetClass,
    UnknownAudioSetClassError,
    audioset_classes,
    class_by_mid,
    class_by_name,
    ontology_node,
)

RESOURCES = Path(__file__).resolve().parents[1] / "avgeo" / "resources" / "audioset"


def test_classes_are_the_527_in_classifier_order():
    classes = audioset_classes()
    assert len(classes) == 527
    assert [c.index for c in classes] == list(range(527))
    assert classes[0] == AudioSetClass(index=0, mid="/m/09x0r", name="Speech")
    assert len({c.mid for c in classes}) == 527
    assert len({c.name for c in classes}) == 527
    assert audioset_classes() is classes  # cached: callers may index it in hot loops


def test_lookup_by_mid_and_name_round_trips_for_every_class():
    for cls in audioset_classes():
        assert class_by_mid(cls.mid) is cls
        assert class_by_name(cls.name) is cls


def test_regional_examples_resolve_to_their_published_ids():
    assert class_by_name("Police car (siren)").mid == "/m/04qvtq"
    assert class_by_name("Church bell").index == 201
    assert class_by_mid("/t/dd00013").name == "Children playing"


def test_unknown_name_is_a_key_error_suggesting_close_names():
    with pytest.raises(KeyError) as info:
        class_by_name("Church bells")
    assert isinstance(info.value, UnknownAudioSetClassError)
    message = str(info.value)
    assert "'Church bells'" in message and "'Church bell'" in message


def test_display_name_passed_as_mid_gets_its_mid_in_the_message():
    with pytest.raises(UnknownAudioSetClassError, match=r"'Dog' is a display name, its mid is '/m/0bt9lr'"):
        class_by_mid("Dog")


def test_unknown_mid_without_close_match_points_to_the_class_table():
    with pytest.raises(UnknownAudioSetClassError, match=r"class_labels_indices\.csv"):
        class_by_mid("zzz")


def test_ontology_parents_and_children_are_mutual_and_cover_every_class():
    nodes = json.loads((RESOURCES / "ontology.json").read_text())
    assert len(nodes) == 632
    for raw in nodes:
        node = ontology_node(raw["id"])
        assert node.child_mids == tuple(raw["child_ids"])
        for child in node.child_mids:
            assert node.mid in ontology_node(child).parent_mids
        for parent in node.parent_mids:
            assert node.mid in ontology_node(parent).child_mids
    for cls in audioset_classes():
        assert ontology_node(cls.mid).name == cls.name


def test_ontology_places_sirens_under_emergency_vehicle():
    police = ontology_node(class_by_name("Police car (siren)").mid)
    assert class_by_name("Emergency vehicle").mid in police.parent_mids
    assert ontology_node("/m/0dgw9r").parent_mids == ()  # "Human sounds" is a top-level node
    with pytest.raises(UnknownAudioSetClassError):
        ontology_node("/m/not-a-node")


def test_csv_rows_match_the_dataclasses_field_by_field():
    with (RESOURCES / "class_labels_indices.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["index"]), r["mid"], r["display_name"]) for r in rows] == [
        (c.index, c.mid, c.name) for c in audioset_classes()
    ]
