"""Topic, pattern and capability-string matching.

Three different matchers exist in Astrid and they are deliberately kept apart:

* :func:`acl_matches` — the reference's ``topic_matches``: the rule for ``ipc_publish`` and
  ``ipc_subscribe`` ACLs, dispatcher-invoked interceptors and ``trigger_hook``. Equal segment
  count, ``*`` in the pattern matches exactly one segment.
* :func:`bus_matches` — delivery to bus subscriptions: a trailing ``.*`` matches one *or more*
  further segments; topics deeper than :data:`MAX_BUS_TOPIC_SEGMENTS` never match.
* :func:`capability_matches` — typed ``prefix:dotted.body`` capability strings used for the
  ``requires``/``provides`` dependency graph; wildcards count on either side.

Topics and patterns are ``.``-separated; a string is *valid* when it is non-empty and has no
empty segment (no leading, trailing or doubled dot).
"""

from __future__ import annotations

#: Bus matching never matches a topic with more segments than this.
MAX_BUS_TOPIC_SEGMENTS = 20

#: The single-segment wildcard.
WILDCARD = "*"


def has_valid_segments(s: str) -> bool:
    """Return True if ``s`` is non-empty and none of its ``.``-separated segments is empty."""
    return bool(s) and all(s.split("."))


def _segments_match(topic: list[str], pattern: list[str]) -> bool:
    """Segment-wise match of equal-length lists, ``*`` in ``pattern`` matching any one segment."""
    return len(topic) == len(pattern) and all(
        p in (WILDCARD, t) for t, p in zip(topic, pattern, strict=True)
    )


def acl_matches(topic: str, pattern: str) -> bool:
    """ACL matching (the reference's ``topic_matches``).

    Both strings must be valid, have the same number of segments, and every pattern segment
    must be ``*`` (exactly one segment, a literal ``*`` included) or equal to the topic's.
    """
    if not has_valid_segments(topic) or not has_valid_segments(pattern):
        return False
    return _segments_match(topic.split("."), pattern.split("."))


def bus_matches(topic: str, pattern: str) -> bool:
    """Bus matching: how a published topic is delivered to a subscription pattern.

    Topics with more than :data:`MAX_BUS_TOPIC_SEGMENTS` segments never match. A pattern
    ending in ``.*`` matches its prefix (where ``*`` is one segment) followed by one or more
    further segments, so ``a.b.*`` matches ``a.b.c`` and ``a.b.c.d`` but not ``a.b``. Any
    other pattern matches segment by segment with equal counts (a bare ``*`` therefore
    matches only single-segment topics). Strings with empty segments never match.
    """
    if not has_valid_segments(topic) or not has_valid_segments(pattern):
        return False
    topic_segs = topic.split(".")
    if len(topic_segs) > MAX_BUS_TOPIC_SEGMENTS:
        return False
    pattern_segs = pattern.split(".")
    if len(pattern_segs) > 1 and pattern_segs[-1] == WILDCARD:
        prefix = pattern_segs[:-1]
        return len(topic_segs) > len(prefix) and _segments_match(topic_segs[: len(prefix)], prefix)
    return _segments_match(topic_segs, pattern_segs)


def split_capability(capability: str) -> tuple[str, str]:
    """Split a typed capability string into ``(prefix, body)`` at the first ``:``.

    A string without ``:`` has the empty prefix and is all body.
    """
    prefix, sep, body = capability.partition(":")
    return (prefix, body) if sep else ("", capability)


def capability_matches(requirement: str, provided: str) -> bool:
    """Match a ``requires`` entry against a ``provides`` entry.

    The type prefixes (before the first ``:``) must be equal; the bodies must have the same
    number of ``.``-segments and each pair of segments matches when either side is ``*`` or
    both are equal. Wildcards work on both sides (``topic:*.stream`` matches ``topic:llm.*``).
    """
    req_prefix, req_body = split_capability(requirement)
    prov_prefix, prov_body = split_capability(provided)
    if req_prefix != prov_prefix:
        return False
    req_segs = req_body.split(".")
    prov_segs = prov_body.split(".")
    return len(req_segs) == len(prov_segs) and all(
        WILDCARD in (r, p) or r == p for r, p in zip(req_segs, prov_segs, strict=True)
    )
