"""What a new workload shares with those already running in its namespace. Pure.

Two ways one deploy quietly changes what another gets:

- **another copy of the same name**: copies of one function share a queue group, so a
  second `nex devrun` of ``hello`` splits ``hello``'s calls between the old code and the new;
- **an overlapping trigger** of another workload: ``demo.>`` and ``demo.upper`` both
  receive a message on ``demo.upper``, in their own queue groups, so a request gets
  whichever reply comes first.

The CLI says so after a deploy (``nex devrun``), and ``--replace`` stops the older copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nex.api.models import WorkloadState, WorkloadSummary
from nex.api.subjects import subjects_overlap

LIVE = frozenset({WorkloadState.STARTING, WorkloadState.RUNNING})


@dataclass(frozen=True)
class Shadow:
    """One workload the new one shares calls with: by name (``trigger`` None) or by a trigger."""

    other: WorkloadSummary
    trigger: str | None = None  # the new workload's trigger...
    other_trigger: str | None = None  # ...that overlaps this trigger of the other

    def describe(self, namespace: str) -> str:
        where = f"{self.other.id} on node {self.other.node_id[:12]}"
        if self.trigger is None:
            return (f"a workload named {self.other.name!r} already runs in namespace {namespace!r} ({where}): "
                    "the new copy shares its calls with it; --replace stops the old copies once the new one runs")
        return (f"trigger {self.trigger!r} overlaps {self.other_trigger!r} of {self.other.type.value} "
                f"{self.other.name!r} ({where}): a message on both goes to both, and a request gets the first reply")


def same_name_copies(new: WorkloadSummary, running: Iterable[WorkloadSummary]) -> list[WorkloadSummary]:
    """The other live workloads of the new one's namespace and name that no app owns (an app's
    replicas are its reconciler's to stop)."""
    return [w for w in running if w.id != new.id and w.namespace == new.namespace and w.name == new.name
            and w.state in LIVE and w.app is None]


def shadows(new: WorkloadSummary, running: Iterable[WorkloadSummary]) -> list[Shadow]:
    """Every live workload of the namespace the new one shares calls with, by name first."""
    others = [w for w in running if w.id != new.id and w.namespace == new.namespace and w.state in LIVE]
    found = [Shadow(w) for w in others if w.name == new.name]
    for w in others:
        if w.name == new.name:
            continue
        for mine in new.triggers:
            theirs = next((t for t in w.triggers if subjects_overlap(mine.subject, t.subject)), None)
            if theirs is not None:
                found.append(Shadow(w, mine.subject, theirs.subject))
                break
    return found
