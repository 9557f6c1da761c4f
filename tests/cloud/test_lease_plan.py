"""Version-aware leases, the pure part: the rollout's assignment read field by field, and what a
worker takes, releases, hands over and succeeds to, as tables (cloud.ingest.leases)."""

from __future__ import annotations

import pytest

from cloud.hotstate import HandoverRecord, PartitionHealth
from cloud.ingest.leases import parse_assignment, plan_leases

P = 8
OLD, NEW = "0.2.0", "0.2.1"


@pytest.mark.parametrize(
    ("raw", "versions", "rejected"),
    [
        ({}, {}, {}),
        ({"0": NEW, "7": OLD}, {0: NEW, 7: OLD}, {}),
        ({"8": NEW}, {}, {"8": "field '8' is not a partition 0..7"}),
        ({"-1": NEW}, {}, {"-1": "field '-1' is not a partition 0..7"}),
        ({"p3": NEW}, {}, {"p3": "field 'p3' is not a partition 0..7"}),
        ({"٣": NEW}, {}, {"٣": "field '٣' is not a partition 0..7"}),  # a non-ASCII digit
        ({"3": ""}, {}, {"3": "partition 3: '' is not a version"}),
        ({"3": "0.2.1; rm -rf"}, {}, {"3": "partition 3: '0.2.1; rm -rf' is not a version"}),
        ({"3": "x" * 65}, {}, {"3": f"partition 3: {'x' * 65!r} is not a version"}),
        ({"1": NEW, "2": "{}"}, {1: NEW}, {"2": "partition 2: '{}' is not a version"}),
        ({"4": "0.3.0rc1+local_2"}, {4: "0.3.0rc1+local_2"}, {}),
    ],
)
def test_assignment_fields_are_read_or_refused_with_a_reason(
    raw: dict[str, str], versions: dict[int, str], rejected: dict[str, str]
) -> None:
    parsed = parse_assignment(raw, P)
    assert parsed.versions == versions
    assert parsed.rejected == rejected


def holders(**held: str) -> list[str | None]:
    """Partition holders: ``p0="a"`` means worker a holds partition 0; others are free."""
    out: list[str | None] = [None] * P
    for key, worker in held.items():
        out[int(key[1:])] = worker
    return out


A_HALF = {"p0": "a", "p1": "a", "p2": "a", "p3": "a"}
B_HALF = {"p4": "b", "p5": "b", "p6": "b", "p7": "b"}
HALVES = A_HALF | B_HALF
AB = {"a": OLD, "b": NEW}  # live workers: a of the old version, b of the new
CANARY = {0: NEW, 1: NEW}  # the rollout's assignment: partitions 0 and 1 to the new version
A, B, C = ("a", OLD), ("b", NEW), ("c", NEW)
NONE: set[int] = set()


# columns: this worker (id, version), owned, warming, holders, assignment, live workers ->
#          share, free candidates, room, release, hand over, succeed
@pytest.mark.parametrize(
    (
        "me",
        "owned",
        "warming",
        "held",
        "assignment",
        "live",
        "share",
        "free",
        "room",
        "release",
        "hand_over",
        "succeed",
    ),
    [
        # no assignment: today's rule, whatever the versions
        (A, NONE, NONE, {}, {}, {"a": OLD}, 8, range(8), 8, (), (), ()),
        (A, NONE, NONE, {}, {}, AB, 4, range(8), 4, (), (), ()),
        (A, {0, 1, 2, 3, 4}, NONE, {}, {}, AB, 4, (), 0, (4,), (), ()),
        (A, {0, 1, 2, 3}, NONE, HALVES, {}, AB, 4, (), 0, (), (), ()),
        # two partitions assigned to the new version: the old owner hands them over ...
        (A, {0, 1, 2, 3}, NONE, HALVES, CANARY, AB, 6, (), 4, (), (0, 1), ()),
        # ... the new worker warms up for them (they are held by another version)
        (B, {4, 5, 6, 7}, NONE, HALVES, CANARY, AB, 8, (), 4, (), (), (0, 1)),
        # ... not again while warming, nor as free ones once released (it takes them warm)
        (B, {4, 5, 6, 7}, {0, 1}, HALVES, CANARY, AB, 8, (), 2, (), (), ()),
        (
            B,
            {4, 5, 6, 7},
            {0, 1},
            {"p2": "a", "p3": "a"} | B_HALF,
            CANARY,
            AB,
            8,
            (),
            2,
            (),
            (),
            (),
        ),
        # a worker of another version never takes an assigned partition, even free
        (A, {2, 3}, NONE, {"p2": "a", "p3": "a"} | B_HALF, CANARY, AB, 6, (), 4, (), (), ()),
        # a peer of the same version holding it is no hand-over
        (
            C,
            NONE,
            NONE,
            {"p0": "b", "p1": "b"},
            CANARY,
            {"b": NEW, "c": NEW},
            4,
            range(2, 8),
            4,
            (),
            (),
            (),
        ),
        # the share counts only the workers of one's own version once anything is assigned
        (
            A,
            NONE,
            NONE,
            {},
            {0: NEW},
            {"a": OLD, "x": OLD, "b": NEW},
            4,
            range(1, 8),
            4,
            (),
            (),
            (),
        ),
        # a holder whose heartbeat is gone (or from before versions) is another version
        (B, NONE, NONE, {"p0": "gone"}, {0: NEW}, {"b": NEW}, 8, range(1, 8), 8, (), (), (0,)),
        # everything assigned back to the old version: the rollback hands all of b's over
        (
            B,
            {0, 1},
            NONE,
            {"p0": "b", "p1": "b"},
            dict.fromkeys(range(8), OLD),
            AB,
            0,
            (),
            0,
            (),
            (0, 1),
            (),
        ),
        # warming counts against the room; two successors may both list a partition (the
        # claim in Redis decides)
        (B, NONE, {0}, {"p0": "a"}, CANARY, AB | {"c": NEW}, 4, range(1, 8), 3, (), (), ()),
        (
            C,
            NONE,
            NONE,
            {"p0": "a", "p1": "a"},
            CANARY,
            AB | {"c": NEW},
            4,
            range(2, 8),
            4,
            (),
            (),
            (0, 1),
        ),
    ],
)
def test_plan_leases(
    me: tuple[str, str],
    owned: set[int],
    warming: set[int],
    held: dict[str, str],
    assignment: dict[int, str],
    live: dict[str, str],
    share: int,
    free: range | tuple[int, ...],
    room: int,
    release: tuple[int, ...],
    hand_over: tuple[int, ...],
    succeed: tuple[int, ...],
) -> None:
    worker_id, version = me
    plan = plan_leases(
        version=version,
        worker_id=worker_id,
        owned=owned,
        warming=warming,
        holders=holders(**held),
        assignment=assignment,
        live=live,
    )
    assert plan.share == share
    assert plan.free == tuple(free)
    assert plan.room == room
    assert plan.release == release
    assert plan.hand_over == hand_over
    assert plan.succeed == succeed


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[]", "a hand-over record is a JSON object"),
        ('{"from": 1, "from_version": "", "to": "", "to_version": ""}', "from_ is not a string"),
        ('{"from": "a", "from_version": "x"}', "'to'"),
        ("not json", "Expecting value"),
    ],
)
def test_a_garbage_handover_record_raises_a_clear_error(text: str, error: str) -> None:
    with pytest.raises((ValueError, KeyError)) as exc:
        HandoverRecord.from_json(text)
    assert error in str(exc.value)


@pytest.mark.parametrize(
    ("record", "gap"),
    [
        (HandoverRecord("a", OLD, "b", NEW, 10.0, 12.0, 12.5), 0.5),
        (HandoverRecord("a", OLD, "b", NEW, 10.0, 12.0, None), None),
        (HandoverRecord("a", OLD, "", NEW, None, 12.0, None), None),
    ],
)
def test_handover_record_round_trips_with_its_gap(
    record: HandoverRecord, gap: float | None
) -> None:
    back = HandoverRecord.from_json(record.to_json())
    assert back == record
    assert back.gap_s == gap
    assert '"from":"a"' in record.to_json()  # the contract's field name, not from_


def test_partition_health_round_trips() -> None:
    health = PartitionHealth(1.0, NEW, "b", 0.5, 10, 9, 100, 1, 0, 3, 0.004)
    assert PartitionHealth.from_json(health.to_json()) == health
