"""The AudioSet class table (527 classes, classifier order) and its ontology, read from package data.

`class_labels_indices.csv` gives each class's position in the output of AudioSet-trained classifiers
(CLAP, PANNs, the IC-SAE's 527 dictionary blocks), its machine id (`mid`, e.g. "/m/09x0r") and its
display name ("Speech"). `ontology.json` adds the hierarchy over 632 nodes, of which the 527 are a subset.
Both are Google's AudioSet ontology (CC BY-SA 4.0, see resources/audioset/ATTRIBUTION.md).
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

_RESOURCES = resources.files("avgeo") / "resources" / "audioset"


@dataclass(frozen=True)
class AudioSetClass:
    """One of the 527 AudioSet classes."""

    index: int
    """Position in classifier outputs, 0..526."""
    mid: str
    """Freebase machine id, e.g. "/m/09x0r" (or "/t/dd00013" for AudioSet-only ids)."""
    name: str
    """Display name exactly as in class_labels_indices.csv, e.g. "Speech"."""


class UnknownAudioSetClassError(KeyError):
    """A mid or display name that is not one of the 527 classes (or not an ontology node)."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument; the message reads better plain.
        return str(self.args[0])


@functools.cache
def audioset_classes() -> tuple[AudioSetClass, ...]:
    """The 527 classes in classifier order (`audioset_classes()[i].index == i`)."""
    text = (_RESOURCES / "class_labels_indices.csv").read_text(encoding="utf-8")
    return tuple(
        AudioSetClass(index=int(row["index"]), mid=row["mid"], name=row["display_name"])
        for row in csv.DictReader(io.StringIO(text))
    )


@functools.cache
def _classes_by_mid() -> dict[str, AudioSetClass]:
    return {cls.mid: cls for cls in audioset_classes()}


@functools.cache
def _classes_by_name() -> dict[str, AudioSetClass]:
    return {cls.name: cls for cls in audioset_classes()}


def class_by_mid(mid: str) -> AudioSetClass:
    """The class with machine id `mid`; else `UnknownAudioSetClassError` (a KeyError) naming close mids."""
    try:
        return _classes_by_mid()[mid]
    except KeyError:
        raise UnknownAudioSetClassError(_unknown_message("mid", mid, _classes_by_mid())) from None


def class_by_name(display_name: str) -> AudioSetClass:
    """The class called `display_name` (exact, case-sensitive); the error suggests close display names."""
    try:
        return _classes_by_name()[display_name]
    except KeyError:
        message = _unknown_message("display name", display_name, _classes_by_name())
        raise UnknownAudioSetClassError(message) from None


def _unknown_message(kind: str, label: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(label, list(known), n=3, cutoff=0.6)
    if kind.endswith("mid") and label in _classes_by_name():
        hint = f"; {label!r} is a display name, its mid is {_classes_by_name()[label].mid!r}"
    elif close:
        hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "; see avgeo/resources/audioset/class_labels_indices.csv for the 527 classes"
    return f"{label!r} is not a known AudioSet {kind}{hint}"


@dataclass(frozen=True)
class OntologyNode:
    """A node of the AudioSet ontology (a superset of the 527 classes: 632 nodes)."""

    mid: str
    """Machine id."""
    name: str
    """Display name."""
    description: str
    """One-sentence definition from the ontology."""
    child_mids: tuple[str, ...]
    """Direct children, in ontology order."""
    parent_mids: tuple[str, ...]
    """Direct parents (a node may have several; top-level nodes have none)."""


@functools.cache
def _ontology() -> dict[str, OntologyNode]:
    nodes = json.loads((_RESOURCES / "ontology.json").read_text(encoding="utf-8"))
    parents: dict[str, list[str]] = {node["id"]: [] for node in nodes}
    for node in nodes:
        for child in node["child_ids"]:
            parents[child].append(node["id"])
    return {
        node["id"]: OntologyNode(
            mid=node["id"],
            name=node["name"],
            description=node["description"],
            child_mids=tuple(node["child_ids"]),
            parent_mids=tuple(parents[node["id"]]),
        )
        for node in nodes
    }


def ontology_node(mid: str) -> OntologyNode:
    """The ontology node `mid` (any of the 632, classes or abstract groupings such as "Human sounds")."""
    try:
        return _ontology()[mid]
    except KeyError:
        raise UnknownAudioSetClassError(_unknown_message("ontology mid", mid, _ontology())) from None
