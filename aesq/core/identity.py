"""The identity model: which asset holds each content's scores after objects change.

An object is a location (storage, bucket, key) holding one version of some bytes at a time; its
ETag only signals change. Content is identified by SHA-256, and scores, embeddings, defects and
critiques belong to content. Each content present in the sources has exactly one canonical asset (status
`pending` or `scored`) holding its outputs; every other location with the same bytes is a
`duplicate` pointing at it; a location whose object is gone is `deleted` (its row stays, its
outputs go unless another location still holds the content). A canonical asset whose bytes stay but whose
provenance fails (a sidecar edited into a bad state) becomes `failed` yet keeps its outputs and scoring time
(a keeper) while no other location holds the content, so fixing the sidecar brings it back `scored` without
scoring it again; failed, it counts nowhere. `plan_batch` decides, for one batch of locations just examined or
found gone, where every affected content's canonical asset is afterwards and whose outputs move
where: overwrites, swaps, copies, deletions and restores all follow from these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from aesq.core.tables import CANONICAL_STATUSES as CANONICAL


class Arrival(Enum):
    """What a batch found at a location when it holds no usable content."""

    FAILED = "failed"  # bytes that are not a usable image (or bad provenance)
    GONE = "gone"  # the object is no longer listed


@dataclass(frozen=True)
class ProvenanceFailed:
    """Usable bytes whose provenance failed: the location fails, but its content's outputs may stay with it."""

    sha256: str


@dataclass(frozen=True)
class Located:
    """An existing asset row, as the plan needs it."""

    id: int
    key: str | None  # its key when it is one of the batch's locations, else None
    sha256: str
    status: str
    duplicate_of: int | None
    scored_at: datetime | None
    analysed_at: datetime | None


Ref = int | str  # an existing asset id, or the key of a row the batch inserts


@dataclass(frozen=True)
class Standing:
    """Where a location stands after the batch."""

    status: str
    duplicate_of: Ref | None = None
    scored_at: datetime | None = None
    analysed_at: datetime | None = None


@dataclass
class Plan:
    """Everything a batch changes, applied by `store` in an order the unique canonical index allows."""

    batch: dict[str, Standing] = field(default_factory=dict)  # by key
    others: dict[int, Standing] = field(default_factory=dict)  # rows elsewhere that are promoted or re-pointed
    demote: set[int] = field(default_factory=set)  # canonical rows of the batch that stop being canonical
    moves: dict[int, Ref] = field(default_factory=dict)  # outputs of asset → the content's new canonical
    drop: set[int] = field(default_factory=set)  # assets whose outputs belong to content no longer anywhere
    waiting: list[Ref] = field(default_factory=list)  # canonical assets left pending: they need scores


def keeps_outputs(row: Located) -> bool:
    """Whether a row holds its content's outputs: a canonical one, or a failed keeper (scored, then its provenance
    failed)."""
    return row.status in CANONICAL or (row.status == "failed" and row.scored_at is not None)


def plan_batch(arrivals: dict[str, str | Arrival | ProvenanceFailed], rows: list[Located]) -> Plan:
    """Decide the batch: `arrivals` maps each key to its new SHA-256 (or FAILED/GONE, or ProvenanceFailed with
    the SHA-256); `rows` are the existing rows at those keys and every row holding a content that any of them
    held or now holds."""
    here = {row.key: row for row in rows if row.key is not None}
    plan = Plan()
    kept: set[int] = set()  # keepers: failed rows that go on holding their content's outputs
    for key, arrival in arrivals.items():
        if arrival is Arrival.FAILED or isinstance(arrival, ProvenanceFailed):
            plan.batch[key] = Standing("failed")
        elif arrival is Arrival.GONE:
            plan.batch[key] = Standing("deleted")

    def final_sha(row: Located) -> str | Arrival | ProvenanceFailed:
        """The content a row holds after the batch."""
        return arrivals[row.key] if row.key is not None else row.sha256

    affected = {arrival for arrival in arrivals.values() if isinstance(arrival, str)} | {
        row.sha256 for row in here.values()
    }
    final_canonical: dict[str, Ref] = {}
    for sha in sorted(affected):
        located = sorted((row for row in rows if row.sha256 == sha), key=lambda row: row.id)
        canonical = next((row for row in located if row.status in CANONICAL), None)
        # The row holding the content's outputs: its canonical asset, else a keeper (never both).
        owner = canonical or next((row for row in located if keeps_outputs(row)), None)
        if canonical is not None and final_sha(canonical) == sha:
            chosen: Ref = canonical.id if canonical.key is None else canonical.key
            inherited = canonical
        else:  # the canonical location now holds other bytes, failed or is gone (or there was none)
            holders: list[Ref] = [
                row.id for row in located if row.key is None and row.status in (*CANONICAL, "duplicate")
            ] + sorted(key for key, arrival in arrivals.items() if arrival == sha)
            if canonical is not None:
                plan.demote.add(canonical.id)
            if not holders:
                if (
                    owner is not None
                    and owner.scored_at is not None
                    and final_sha(owner) in (sha, ProvenanceFailed(sha))
                ):
                    kept.add(owner.id)  # the same bytes whose provenance failed: their outputs wait with them
                    if owner.key is not None:
                        plan.batch[owner.key] = Standing("failed", None, owner.scored_at, owner.analysed_at)
                continue
            if owner is not None and owner.key in holders:  # a keeper whose provenance is fixed holds them again
                holders.remove(owner.key)
                holders.insert(0, owner.key)
            chosen, inherited = holders[0], owner  # type: ignore[assignment]
            if owner is not None and chosen != owner.key:
                plan.moves[owner.id] = chosen
            if owner is not None and owner is not canonical and owner.key is None:
                plan.others[owner.id] = Standing("failed")  # a keeper elsewhere hands its outputs on
        final_canonical[sha] = chosen
        standing = (
            Standing("pending")
            if inherited is None
            else Standing(
                inherited.status if inherited.status in CANONICAL else "scored",
                None,
                inherited.scored_at,
                inherited.analysed_at,
            )
        )
        if isinstance(chosen, str):
            plan.batch[chosen] = standing
        elif canonical is None or chosen != canonical.id:
            plan.others[chosen] = standing
        if standing.status == "pending":
            plan.waiting.append(chosen)
        for row in located:
            if (
                row.key is None
                and row.id != chosen
                and row.status in (*CANONICAL, "duplicate")
                and row.duplicate_of != chosen
            ):
                plan.others[row.id] = Standing("duplicate", chosen)
        for key, arrival in sorted(arrivals.items()):
            if arrival == sha and key != chosen:
                plan.batch[key] = Standing("duplicate", chosen)

    # Outputs of a content no location holds any more go (a canonical row that stays, or whose outputs
    # moved, is not among these).
    for row in rows:
        keeps = row.id in kept or (row.sha256 in final_canonical and final_canonical[row.sha256] in (row.id, row.key))
        if keeps_outputs(row) and row.id not in plan.moves and not keeps:
            plan.drop.add(row.id)
    return plan
