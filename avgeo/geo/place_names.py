"""Place names in text: folding, word splitting, and the longest-match rule of `Gazetteer.find_places`.

A `NameIndex` maps names (as folded, case-insensitive keys) to places; when several places share a name,
the entry with the smallest rank wins. `find` scans a text for names, longest first, under the case rule
documented on `Gazetteer.find_places`; `lookup` reads one whole name.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Hashable, Iterable
from typing import NamedTuple

# Words are letters and digits, joined by inner apostrophes or hyphens ("d'Ivoire", "Guinea-Bissau").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+|-[^\W_]+)*")
# Words of one name may be parted by spaces or by a period ("St. Louis", "U.S.A.", "Dem. Rep. Congo").
_NAME_GAP = re.compile(r"(?:'s)?(?:\.\s*|\s+)")  # after a possessive too: "Cox's Bazar"
# A parenthesised qualifier may be left out: "Halle (Saale)" is also "Halle".
_QUALIFIER = re.compile(r"\s*\([^)]*\)")
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2018\u2019\u02bb\u02bc", "'"))


class _Word(NamedTuple):
    start: int
    end: int
    spelling: str
    key: str
    """Case-folded spelling, the dictionary key."""


def _fold(text: str) -> str:
    """Drop accents and unify apostrophes, so that 'São Paulo' and 'Sao Paulo' read the same."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _words(folded: str) -> list[_Word]:
    """The words of a `_fold`ed text."""
    words = []
    for match in _WORD.finditer(folded):
        # A possessive "'s" is not part of the name: "Canada's" names Canada.
        end = match.end() - 2 if match.group().endswith("'s") and len(match.group()) > 2 else match.end()
        spelling = folded[match.start() : end]
        words.append(_Word(match.start(), end, spelling, spelling.casefold()))
    return words


def _key(words: list[_Word]) -> str:
    return " ".join(word.key for word in words)


class NameEntry(NamedTuple):
    place: Hashable
    spellings: tuple[str, ...]
    """The name's words as the gazetteer spells them."""
    rank: tuple[int, int, int]
    """Smaller wins a shared name: (kind, primary=0 / alternate=1, -population)."""


def _written_as_name(words: list[_Word], name: NameEntry) -> bool:
    """Whether text words, equal to a name's words but for case, may stand for it (the case rule of
    `Gazetteer.find_places`)."""
    if len(words) == 1 and words[0].spelling.isupper() and len(words[0].spelling) > 1:
        return name.spellings[0].isupper()  # a shouted word is an acronym: "USA", not "CAN" (Çan)
    return all(
        word.spelling[0].isupper() or not spelling[0].isupper()
        for word, spelling in zip(words, name.spellings, strict=True)
    )


def name_entries(spelling: str, place: Hashable, rank: tuple[int, ...]) -> list[tuple[str, NameEntry]]:
    """(key, name) pairs under which `spelling` finds `place`: as written and without a qualifier."""
    entries = []
    for variant in dict.fromkeys((spelling, _QUALIFIER.sub("", spelling))):
        words = _words(_fold(variant))
        if words:
            entries.append((_key(words), NameEntry(place, tuple(word.spelling for word in words), rank)))
    return entries


def is_safe_alternate(spelling: str) -> bool:
    """An alternate name is kept when it reads as a proper name in English text: ASCII once accents are
    dropped, at least 4 letters, every word capitalised and not all capitals (which are codes: 'ZRH')."""
    folded = _fold(spelling)
    words = folded.split()
    return (
        folded.isascii()
        and sum(char.isalpha() for char in folded) >= 4
        and all(word[0].isupper() for word in words)
        and not folded.isupper()
    )


class NameIndex:
    """Names -> places, for whole-name lookups and for finding names in running text."""

    def __init__(self, entries: Iterable[tuple[str, NameEntry]]):
        self._names: dict[str, NameEntry] = {}
        for key, name in entries:
            if key not in self._names or name.rank < self._names[key].rank:
                self._names[key] = name
        self._longest_name_words = max(len(name.spellings) for name in self._names.values())

    def lookup(self, name: str) -> Hashable | None:
        """The place that `name` (any case, accents optional) denotes, or None."""
        entry = self._names.get(_key(_words(_fold(name))))
        return entry.place if entry else None

    def find(self, text: str) -> list[Hashable]:
        """Places named in `text`, each once, in order of first mention (longest name first)."""
        folded = _fold(text)
        words = _words(folded)
        found: dict[Hashable, None] = {}
        start = 0
        while start < len(words):
            matched = 1
            for count in range(min(self._longest_name_words, len(words) - start), 0, -1):
                span = words[start : start + count]
                if any(
                    not _NAME_GAP.fullmatch(folded[left.end : right.start])
                    for left, right in itertools.pairwise(span)
                ):
                    continue
                entry = self._names.get(_key(span))
                if entry and _written_as_name(span, entry):
                    found.setdefault(entry.place)
                    matched = count
                    break
            start += matched
        return list(found)
