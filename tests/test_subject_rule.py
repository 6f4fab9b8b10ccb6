"""The one subject rule (nex.api.subjects): its matcher, checked against NATS semantics written out
independently here, and the workload scope that credentials, host services, replies and health
checks share."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from nex.api import subjects
from nex.api.models import Trigger
from nex.api.subjects import (
    RESERVED_SUBJECTS, WorkloadScope, foreign_namespace, namespace_subject_problem, subject_covers, subjects_overlap,
)
from nex.security.natsauth import workload_permissions

LITERALS = ("nex", "a", "b", "$JS", "_INBOX", "x")
literal = st.sampled_from(LITERALS)
token = st.one_of(literal, st.just("*"))


@st.composite
def patterns(draw) -> str:
    tokens = draw(st.lists(token, min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return ".".join(tokens)


concrete = st.lists(literal, min_size=1, max_size=5).map(".".join)


def nats_regex(pattern: str) -> re.Pattern[str]:
    """NATS matching spelled as a regular expression: '*' one token, a last '>' one or more."""
    parts = []
    for part in pattern.split("."):
        parts.append(r"[^.]+(\.[^.]+)*" if part == ">" else r"[^.]+" if part == "*" else re.escape(part))
    return re.compile(r"\.".join(parts))


def matches(pattern: str, subject: str) -> bool:
    return nats_regex(pattern).fullmatch(subject) is not None


def witness(a: str, b: str) -> str:
    """A concrete subject that both patterns match, built token by token (when they overlap)."""
    left, right = a.split("."), b.split(".")
    out = []
    for i in range(max(len(left), len(right))):
        x = left[i] if i < len(left) else ">"
        y = right[i] if i < len(right) else ">"
        if x == ">" and y == ">":
            out.append("z")
            break
        out.append(y if x in ("*", ">") and y not in ("*", ">") else x if x not in ("*", ">") else "z")
        if ">" in (x, y) and (i + 1 >= len(left) and i + 1 >= len(right)):
            break
    return ".".join(out)


@settings(max_examples=400, deadline=None)
@given(patterns(), patterns())
def test_overlapping_patterns_always_share_a_concrete_subject(a, b):
    if subjects_overlap(a, b):
        subject = witness(a, b)
        assert matches(a, subject) and matches(b, subject), (a, b, subject)
    assert subjects_overlap(a, b) == subjects_overlap(b, a)


@settings(max_examples=400, deadline=None)
@given(patterns(), patterns(), concrete)
def test_a_subject_both_match_means_they_overlap(a, b, subject):
    if matches(a, subject) and matches(b, subject):
        assert subjects_overlap(a, b)
    # For a subject without wildcards, the matcher is NATS matching.
    assert subjects_overlap(a, subject) == matches(a, subject)


@settings(max_examples=400, deadline=None)
@given(patterns(), patterns(), concrete)
def test_covering_means_every_subject_of_the_inner_matches_the_outer(outer, inner, subject):
    if subject_covers(outer, inner) and matches(inner, subject):
        assert matches(outer, subject), (outer, inner, subject)
    if subject_covers(outer, inner):
        assert subjects_overlap(outer, inner)


@settings(max_examples=400, deadline=None)
@given(patterns(), st.sampled_from(("a", "b")), concrete)
def test_foreign_namespace_is_any_subject_of_nex_b_for_another_b(pattern, namespace, subject):
    reaches = matches(pattern, subject) and matches("nex.*.>", subject) and subject.split(".")[1] != namespace
    if reaches:
        assert foreign_namespace(namespace, pattern), (pattern, namespace, subject)
    if not foreign_namespace(namespace, pattern):
        assert not reaches


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(("a", "b")), st.lists(concrete, max_size=2), concrete)
def test_host_services_and_credentials_allow_the_same_publishes(namespace, triggers, subject):
    """What WorkloadScope lets the node publish for a workload is what its NATS user may publish."""
    triggers = [t for t in triggers if namespace_subject_problem(namespace, t) is None]
    permissions = workload_permissions(namespace, "w1", [Trigger(subject=t) for t in triggers])
    by_credentials = (any(matches(p, subject) for p in permissions.pub_allow)
                      and not any(matches(p, subject) for p in [*permissions.pub_deny, *RESERVED_SUBJECTS]))
    assert WorkloadScope.of(namespace, triggers).may_publish(subject) == by_credentials, (triggers, subject)


def test_one_reserved_list():
    import nex.security.natsauth as natsauth

    assert not hasattr(natsauth, "RESERVED")
    assert subjects.INBOXES in RESERVED_SUBJECTS
    assert set(subjects.RESERVED_FOR_REPLIES) == set(RESERVED_SUBJECTS) - {"_INBOX.>"}


def test_triggers_of_another_namespace_are_refused():
    for trigger in ("nex.victim.>", "nex.victim.orders", "nex.>", "nex.*.x", "*.victim.>", ">", "*.*.x"):
        assert namespace_subject_problem("evil", trigger) is not None, trigger
    for trigger in ("nex.evil.>", "nex.evil.x", "nex.evil.*", "orders.new", "nex.victim", "nex.*", "a.*.>"):
        assert namespace_subject_problem("evil", trigger) is None, trigger


def test_namespace_subjects_confine_the_rest():
    confined = {"payments": ["pay.>", "bank.*.in"]}
    assert namespace_subject_problem("payments", "pay.x.y", confined) is None
    assert namespace_subject_problem("payments", "bank.eu.in", confined) is None
    assert namespace_subject_problem("payments", "nex.payments.x", confined) is None
    assert "namespace_subjects" in namespace_subject_problem("payments", "pay", confined)
    assert "namespace_subjects" in namespace_subject_problem("payments", "bank.>", confined)
    assert "namespace_subjects" in namespace_subject_problem("shop", "pay.x", confined)  # not listed
    assert namespace_subject_problem("shop", "nex.shop.x", confined) is None


def test_what_a_workload_may_publish_answer_and_subscribe():
    scope = WorkloadScope.of("shop", ["orders.new", "orders.*"])
    assert scope.may_publish("nex.shop.a.b") and scope.may_publish("orders.new") and scope.may_publish("orders.x")
    for subject in ("nex.other.a", "$JS.API.STREAM.PURGE.NEX_EVENTS", "_INBOX.abc", "nex.shop.*", "misc",
                    "nex.shop", "nex..shop", "nex.shop. x"):
        assert not scope.may_publish(subject), subject
    assert "another namespace" in scope.publish_problem("nex.other.a")
    assert "reserved" in scope.publish_problem("$KV.x.y")
    # A reply to a request it received: inboxes and plain subjects, as allow_responses would.
    assert scope.may_answer("_INBOX.abc.def") and scope.may_answer("replies.for.me")
    for reply in ("$JS.API.STREAM.PURGE.NEX_EVENTS", "$NEX.SVC.shop.control.PING", "$KV.b.k", "nex.other.x",
                  "_INBOX.*", "a b"):
        assert not scope.may_answer(reply), reply
    assert scope.may_subscribe("nex.shop.>") and scope.may_subscribe("orders.new")
    assert not scope.may_subscribe("nex.>") and not scope.may_subscribe("orders.>")
