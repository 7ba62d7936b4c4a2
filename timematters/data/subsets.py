"""SSv2 Temporal and Static subsets (paper Appendix A, after Sevilla-Lara et al., 2021).

Names are written as in SSv2's ``labels.json`` and matched exactly against it; a name that does not
match is reported, never guessed. The appendix prints "Holding something next to something, Pouring
something into something" as one item of its static list: they are two SSv2 classes, so the list
below has 17 names although the paper says 16 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

TEMPORAL_CLASSES = (
    "Lifting something up completely without letting it drop down",
    "Lifting something up completely, then letting it drop down",
    "Lifting up one end of something, then letting it drop down",
    "Moving something and something closer to each other",
    "Moving something and something away from each other",
    "Moving something and something so they collide with each other",
)

STATIC_CLASSES = (
    "Folding something",
    "Turning the camera upwards while filming something",
    "Holding something next to something",
    "Pouring something into something",
    "Pretending to throw something",
    "Squeezing something",
    "Holding something in front of something",
    "Touching (without moving) part of something",
    "Lifting up one end of something without letting it drop down",
    "Showing something next to something",
    "Poking something so that it falls over",
    "Wiping something off of something",
    "Scooping something up with something",
    "Letting something roll down a slanted surface",
    "Sprinkling something onto something",
    "Pushing something so it spins",
    "Twisting (wringing) something wet until water comes out",
)

SUBSETS = {"temporal": TEMPORAL_CLASSES, "static": STATIC_CLASSES}


def match_subset(names: Sequence[str], classes: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class indices of ``names`` in ``classes`` (sorted) and the names that match no class."""
    index_of = {name: i for i, name in enumerate(classes)}
    matched = sorted(index_of[name] for name in names if name in index_of)
    unmatched = [name for name in names if name not in index_of]
    return matched, unmatched
