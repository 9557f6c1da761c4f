"""Message schemas: every released version round-trips; every class of bad input is refused
with the right reason and a sentence that names the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolError, Reason
from protocols.messages import (
    MAX_GROUPS,
    MAX_PAYLOAD_BYTES,
    MAX_PLAN_GROUP_SLOTS,
    MAX_PLAN_SITES,
    MAX_SLOTS,
    SCHEMAS,
    Ack,
    Config,
    Dispatch,
    Flexibility,
    Limit,
    Mode,
    PartitionPlan,
    PartitionSignal,
    Status,
    Telemetry,
    decode,
    encode,
    parse_message,
)
from protocols.partitions import partition_of
from protocols.topics import PartitionKind, SiteKind, partition_topic, site_topic

FIXTURES = Path(__file__).parent.parent / "fixtures" / "protocols"
FIXTURE_FILES = sorted(FIXTURES.glob("v*/*.json"))
SCHEMA_OF_FILE = {
    "telemetry": "vpp.telemetry",
    "status": "vpp.status",
    "dispatch": "vpp.dispatch",
    "partition_signal": "vpp.partition_signal",
    "ack": "vpp.ack",
    "config": "vpp.config",
    "flex_envelope": "vpp.flex_envelope",
    "partition_plan": "vpp.partition_plan",
}


def load(name: str, version: int = 1) -> dict:
    return json.loads((FIXTURES / f"v{version}" / f"{name}.json").read_text())


def test_every_schema_and_version_has_a_fixture():
    have = {(json.loads(p.read_text())["schema"], int(p.parent.name[1:])) for p in FIXTURE_FILES}
    want = {(schema, v) for schema, versions in SCHEMAS.items() for v in versions}
    assert have == want


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_released_fixture_round_trips(path: Path):
    raw = json.loads(path.read_text())
    message = decode(path.read_bytes())
    assert message.SCHEMA == SCHEMA_OF_FILE[path.stem] == raw["schema"]
    # encode -> decode is the identity, and no field of the fixture is lost
    again = decode(encode(message))
    assert again == message
    assert json.loads(encode(message)) == raw


def test_unknown_fields_are_ignored_so_newer_writers_do_not_break_readers():
    data = load("telemetry") | {"future_field": {"nested": [1, 2]}, "another": "x"}
    data["flex"] = data["flex"] | {"p_future_w": 5.0}
    message = decode(json.dumps(data))
    assert isinstance(message, Telemetry)
    assert message.flex.p_min_w == -7200.0
    assert "future_field" not in json.loads(encode(message))


def test_optional_fields_may_be_absent():
    minimal = {
        "schema": "vpp.telemetry",
        "version": 1,
        "site_id": "s1",
        "seq": 0,
        "ts": 1717243200,
        "interval_s": 2,
        "mode": "fallback",
        "grid_w": 0,
        "baseline_w": 0,
        "flex": {"p_min_w": 0, "p_max_w": 0, "e_absorb_wh": 0, "e_deliver_wh": 0},
    }
    message = decode(json.dumps(minimal))
    assert isinstance(message, Telemetry)
    assert message.soc_pct is None
    assert message.mode is Mode.FALLBACK
    assert message.devices == []


def mutate(name: str, path: str, value: object) -> bytes:
    """The fixture with one field (dotted path) set to ``value`` (``...`` deletes it)."""
    data = load(name)
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    key = int(leaf) if isinstance(target, list) else leaf
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return json.dumps(data).encode()


# (message kind, field, bad value, expected reason, words the error must contain)
BAD_FIELDS = [
    ("telemetry", "seq", ..., Reason.MISSING_FIELD, "seq"),
    ("telemetry", "flex", ..., Reason.MISSING_FIELD, "flex"),
    ("telemetry", "flex.p_max_w", ..., Reason.MISSING_FIELD, "flex.p_max_w"),
    ("telemetry", "seq", "12", Reason.WRONG_TYPE, "seq"),
    ("telemetry", "seq", 1.5, Reason.WRONG_TYPE, "seq"),
    ("telemetry", "seq", True, Reason.WRONG_TYPE, "seq"),
    ("telemetry", "grid_w", "100", Reason.WRONG_TYPE, "grid_w"),
    ("telemetry", "grid_w", None, Reason.WRONG_TYPE, "grid_w"),
    ("telemetry", "grid_w", [1], Reason.WRONG_TYPE, "grid_w"),
    ("telemetry", "devices", {"a": 1}, Reason.WRONG_TYPE, "devices"),
    ("telemetry", "grid_w", 2e6, Reason.OUT_OF_RANGE, "grid_w"),
    ("telemetry", "soc_pct", 100.5, Reason.OUT_OF_RANGE, "soc_pct"),
    ("telemetry", "soc_pct", -1, Reason.OUT_OF_RANGE, "soc_pct"),
    ("telemetry", "pv_w", -5, Reason.OUT_OF_RANGE, "pv_w"),
    ("telemetry", "seq", -1, Reason.OUT_OF_RANGE, "seq"),
    ("telemetry", "ts", 12.0, Reason.OUT_OF_RANGE, "ts"),
    ("telemetry", "interval_s", 0, Reason.OUT_OF_RANGE, "interval_s"),
    ("telemetry", "flex.e_absorb_wh", -1.0, Reason.OUT_OF_RANGE, "flex.e_absorb_wh"),
    ("telemetry", "devices.0.power_w", -3e6, Reason.OUT_OF_RANGE, "devices.0.power_w"),
    ("telemetry", "mode", "turbo", Reason.INVALID_VALUE, "mode"),
    ("telemetry", "devices.1.health", "fine", Reason.INVALID_VALUE, "devices.1.health"),
    ("telemetry", "flex.p_min_w", 9000.0, Reason.INVALID_VALUE, "p_min_w"),
    ("telemetry", "site_id", "a/b", Reason.INVALID_VALUE, "site_id"),
    ("telemetry", "site_id", "", Reason.INVALID_VALUE, "site_id"),
    ("status", "state", "sleeping", Reason.INVALID_VALUE, "state"),
    ("dispatch", "valid_until", 1717243100.0, Reason.INVALID_VALUE, "valid_until"),
    ("dispatch", "valid_until", 1717243200.0 + 2 * 86400, Reason.INVALID_VALUE, "valid_until"),
    ("dispatch", "target_w", "max", Reason.WRONG_TYPE, "target_w"),
    ("dispatch", "dispatch_id", "", Reason.INVALID_VALUE, "dispatch_id"),
    ("partition_signal", "level", 1.5, Reason.OUT_OF_RANGE, "level"),
    ("partition_signal", "partition", -1, Reason.OUT_OF_RANGE, "partition"),
    ("ack", "accepted", "yes", Reason.WRONG_TYPE, "accepted"),
    ("ack", "clamped_by", ["fuse"], Reason.INVALID_VALUE, "clamped_by.0"),
    ("config", "params.poll_interval_s", 0.01, Reason.OUT_OF_RANGE, "params.poll_interval_s"),
    ("config", "flags.telemetry_by_exception", "on", Reason.WRONG_TYPE, "flags"),
    ("partition_plan", "groups.0.lam.2", 1.5, Reason.OUT_OF_RANGE, "groups.0.lam.2"),
    ("partition_plan", "groups.1.group", MAX_GROUPS, Reason.OUT_OF_RANGE, "groups.1.group"),
    ("partition_plan", "groups.0.x_wh.0", -1.0, Reason.OUT_OF_RANGE, "groups.0.x_wh.0"),
    ("partition_plan", "groups.0.beta_total", 0.0, Reason.OUT_OF_RANGE, "beta_total"),
    ("partition_plan", "groups.0.envelopes", {}, Reason.INVALID_VALUE, "groups.0.envelopes"),
    ("partition_plan", "groups.0.storage_w", [0.0] * 7, Reason.INVALID_VALUE, "one value per slot"),
    ("partition_plan", "groups.1.y_wh", [0.0] * 9, Reason.INVALID_VALUE, "one value per slot"),
    ("partition_plan", "power_only_w", [0.0] * 7, Reason.INVALID_VALUE, "one value per slot"),
    ("partition_plan", "groups.1.group", 0, Reason.INVALID_VALUE, "appears twice"),
    ("partition_plan", "envelopes.site-000042", 96, Reason.INVALID_VALUE, "named twice"),
    ("partition_plan", "groups.1.envelopes.site-001218", 96, Reason.INVALID_VALUE, "named twice"),
    ("partition_plan", "groups.0", "g", Reason.WRONG_TYPE, "groups.0"),
]


@pytest.mark.parametrize(
    ("kind", "field", "value", "reason", "mentions"),
    BAD_FIELDS,
    ids=[f"{k}.{f}={v!r}" for k, f, v, _, _ in BAD_FIELDS],
)
def test_bad_field_is_rejected_with_reason_and_field(kind, field, value, reason, mentions):
    with pytest.raises(ProtocolError) as caught:
        decode(mutate(kind, field, value))
    assert caught.value.reason is reason, str(caught.value)
    assert mentions in str(caught.value)
    assert SCHEMA_OF_FILE[kind] in str(caught.value)


# raw payloads -> reason
BAD_PAYLOADS = [
    (b"", Reason.NOT_JSON),
    (b"not json", Reason.NOT_JSON),
    (b'{"schema": "vpp.telemetry", ', Reason.NOT_JSON),
    (b"\xff\xfe\x00garbage", Reason.NOT_JSON),
    (b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
    (b'"a string"', Reason.NOT_AN_OBJECT),
    (b"null", Reason.NOT_AN_OBJECT),
    (b"{}", Reason.UNKNOWN_SCHEMA),
    (b'{"schema": "vpp.weather", "version": 1}', Reason.UNKNOWN_SCHEMA),
    (b'{"schema": 5, "version": 1}', Reason.UNKNOWN_SCHEMA),
    (b'{"schema": "vpp.status"}', Reason.MISSING_FIELD),
    (b'{"schema": "vpp.status", "version": "1"}', Reason.WRONG_TYPE),
    (b'{"schema": "vpp.status", "version": true}', Reason.WRONG_TYPE),
    (b'{"schema": "vpp.status", "version": 99}', Reason.UNKNOWN_VERSION),
    (b'{"schema": "vpp.status", "version": 0}', Reason.UNKNOWN_VERSION),
    (b"[" * 100_000 + b"]" * 100_000, Reason.TOO_LARGE),
    (b'{"x": "' + b"a" * MAX_PAYLOAD_BYTES + b'"}', Reason.TOO_LARGE),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_PAYLOADS, ids=lambda v: repr(v)[:40])
def test_bad_payload_is_rejected(payload, reason):
    with pytest.raises(ProtocolError) as caught:
        decode(payload)
    assert caught.value.reason is reason, str(caught.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
@pytest.mark.parametrize("field", ["grid_w", "flex.p_min_w", "soc_pct"])
def test_non_finite_numbers_are_rejected(literal, field):
    # put the literal where the field's value was (json.dumps cannot write NaN itself)
    payload = json.dumps(_set(load("telemetry"), field, "__X__")).replace('"__X__"', literal)
    with pytest.raises(ProtocolError) as caught:
        decode(payload)
    assert caught.value.reason is Reason.NON_FINITE


def test_deeply_nested_json_is_refused_not_crashing():
    with pytest.raises(ProtocolError) as caught:
        decode(b"[" * 30_000 + b"]" * 30_000)
    assert caught.value.reason in {Reason.NOT_JSON, Reason.NOT_AN_OBJECT}


def _set(data: dict, path: str, value):
    data = json.loads(json.dumps(data))
    target = data
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = value
    return data


# --- topic and payload together --------------------------------------------------------

SITE = "site-000042"
PART = partition_of(SITE, 64)


def test_parse_message_accepts_each_kind_on_its_own_topic():
    cases = [
        (site_topic(PART, SITE, SiteKind.TELEMETRY), "telemetry", Telemetry),
        (site_topic(PART, SITE, SiteKind.STATUS), "status", Status),
        (site_topic(PART, SITE, SiteKind.DISPATCH), "dispatch", Dispatch),
        (site_topic(PART, SITE, SiteKind.ACK), "ack", Ack),
        (site_topic(PART, SITE, SiteKind.CONFIG), "config", Config),
        (partition_topic(7, PartitionKind.SIGNAL), "partition_signal", PartitionSignal),
    ]
    for topic, fixture, model in cases:
        parsed, message = parse_message(topic, json.dumps(load(fixture)), partition_count=64)
        assert isinstance(message, model)
        assert parsed.kind == model.TOPIC_KIND


@pytest.mark.parametrize(
    ("topic", "fixture", "reason"),
    [
        (
            site_topic(partition_of("site-000043", 64), "site-000043", "telemetry"),
            "telemetry",
            Reason.SITE_MISMATCH,
        ),
        (site_topic(PART, SITE, "dispatch"), "telemetry", Reason.WRONG_TOPIC_KIND),
        (site_topic(PART, SITE, "telemetry"), "ack", Reason.WRONG_TOPIC_KIND),
        (partition_topic(8), "partition_signal", Reason.PARTITION_MISMATCH),
        (site_topic((PART + 1) % 64, SITE, "telemetry"), "telemetry", Reason.PARTITION_MISMATCH),
        ("vpp/v1/p/1/s/x/unknown", "telemetry", Reason.BAD_TOPIC),
        ("other/topic", "telemetry", Reason.BAD_TOPIC),
    ],
)
def test_parse_message_refuses_disagreeing_topic_and_payload(topic, fixture, reason):
    with pytest.raises(ProtocolError) as caught:
        parse_message(topic, json.dumps(load(fixture)), partition_count=64)
    assert caught.value.reason is reason, str(caught.value)


# --- properties ----------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    grid=finite,
    a=finite,
    b=finite,
    soc=st.none() | st.floats(min_value=0, max_value=100),
    absorb=positive,
    mode=st.sampled_from(list(Mode)),
)
def test_any_valid_telemetry_round_trips_exactly(seq, grid, a, b, soc, absorb, mode):
    message = Telemetry(
        site_id="s-1",
        seq=seq,
        ts=1717243200.123456,
        interval_s=2.0,
        mode=mode,
        grid_w=grid,
        soc_pct=soc,
        baseline_w=grid,
        flex=Flexibility(
            p_min_w=min(a, b), p_max_w=max(a, b), e_absorb_wh=absorb, e_deliver_wh=0.0
        ),
    )
    assert decode(encode(message)) == message


def outcome(payload: bytes | str) -> str:
    """'ok' or the rejection reason; any other exception propagates and fails the test."""
    try:
        decode(payload)
    except ProtocolError as exc:
        return exc.reason.value
    return "ok"


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(data):
    assert outcome(data) in {r.value for r in Reason} | {"ok"}


@given(st.dictionaries(st.text(max_size=10), st.none() | st.integers() | st.text(max_size=5)))
def test_random_objects_with_a_real_schema_are_rejected_cleanly(extra):
    data = {"version": 1} | extra | {"schema": "vpp.ack"}  # the extras may break the version
    # without the required fields the ack can never be valid
    assert outcome(json.dumps(data)) in {"missing_field", "wrong_type", "invalid_value"} or (
        outcome(json.dumps(data)) == "unknown_version"
    )


def test_ack_reports_which_limits_clamped():
    ack = decode(json.dumps(load("ack")))
    assert isinstance(ack, Ack)
    assert ack.clamped_by == [Limit.SOC_WINDOW, Limit.EXPORT_LIMIT]


# --- the partition plan ------------------------------------------------------------------


def test_plan_names_each_site_once_with_its_group():
    plan = decode(json.dumps(load("partition_plan")))
    assert isinstance(plan, PartitionPlan)
    assert plan.site_seqs == {
        "site-000042": 96,
        "site-001218": 96,
        "site-000307": 95,
        "site-002001": 12,
    }
    # site -> the group it takes its storage share of (None: power-only share only)
    expected = {"site-000042": 0, "site-001218": 0, "site-000307": 2, "site-002001": None}
    for site, group in expected.items():
        got = plan.group_of(site)
        assert (None if got is None else got.group) == group, site
    assert plan.group_of("site-999999") is None
    assert (plan.slots, plan.end_ts) == (8, plan.start_ts + 8 * 900.0)


def plan_at_the_limits(slots: int) -> PartitionPlan:
    """The largest plan the constants allow, with realistic values: site ids like
    ``site-000042`` with seven-digit seqs, full-precision storage and power values of a
    pool of 100 000 sites (hundreds of MW), energies in whole Wh (GWh), six-decimal levels."""
    rng = np.random.default_rng(slots)
    groups = MAX_PLAN_GROUP_SLOTS // slots
    sites = [f"site-{i:06d}" for i in range(MAX_PLAN_SITES)]
    per = -(-len(sites) // (groups + 1))

    def named(k: int) -> dict[str, int]:
        return {s: int(rng.integers(1_000_000, 10_000_000)) for s in sites[k * per : (k + 1) * per]}

    def power() -> list[float]:
        return (rng.uniform(-3e8, 3e8, slots) + rng.random(slots) / 3).tolist()

    def energy() -> list[float]:
        return np.floor(rng.uniform(1e9, 3e9, slots)).tolist()

    return PartitionPlan(
        partition=65535,
        pool_id="pool-belgium-north",
        plan_id="pool-belgium-north-p0012345678",
        seq=2**40,
        issued_ts=1717243230.0,
        valid_until=1717250430.0,
        start_ts=1717243200.0,
        power_only_w=power(),
        power_only_min_w=(-np.abs(power())).tolist(),
        power_only_max_w=np.abs(power()).tolist(),
        groups=[
            {
                "group": g,
                "storage_w": power(),
                "x_wh": energy(),
                "y_wh": energy(),
                "lam": np.round(rng.random(slots), 6).tolist(),
                "theta": 0.5,
                "alpha": 0.6,
                "beta_total": float(rng.uniform(1e6, 1e8)),
                "envelopes": named(g),
            }
            for g in range(groups)
        ],
        envelopes=named(groups),
    )


@pytest.mark.parametrize("slots", [96, MAX_SLOTS])
def test_the_largest_plan_fits_in_one_payload(slots):
    plan = plan_at_the_limits(slots)
    assert len(plan.site_seqs) == MAX_PLAN_SITES
    payload = encode(plan)
    assert len(payload) < MAX_PAYLOAD_BYTES * 0.95  # room for longer site ids
    assert decode(payload) == plan


# plan change -> words of the refusal
PLAN_LIMITS = [
    ("one group too many for its slots", "group-slots"),
    ("one site too many", f"at most {MAX_PLAN_SITES}"),
]


@pytest.mark.parametrize(("change", "mentions"), PLAN_LIMITS)
def test_a_plan_beyond_the_limits_is_refused(change, mentions):
    data = json.loads(encode(plan_at_the_limits(96)))
    if change.startswith("one group"):
        extra = dict(data["groups"][0], group=MAX_GROUPS - 1, envelopes={"site-x": 1})
        data["groups"].append(extra)
        data["envelopes"].pop(next(iter(data["envelopes"])))
    else:
        data["envelopes"]["site-x"] = 1
    with pytest.raises(ProtocolError) as caught:
        decode(json.dumps(data))
    assert caught.value.reason is Reason.INVALID_VALUE
    assert mentions in str(caught.value)


# The kill switch on the wire (an expand step): wire fields -> the mode this release reads.
# A reader of the previous release knows only modes cloud/fallback/degraded and ignores the
# unknown field, so an agent in local autonomy writes mode "fallback" + local_autonomy true
# (tests/edge/test_agent.py checks what it writes).


@pytest.mark.parametrize(
    ("fields", "effective"),
    [
        ({"mode": "fallback"}, Mode.FALLBACK),
        ({"mode": "fallback", "local_autonomy": True}, Mode.LOCAL_AUTONOMY),
        ({"mode": "fallback", "local_autonomy": False}, Mode.FALLBACK),
        ({"mode": "cloud", "local_autonomy": None}, Mode.CLOUD),
        ({"mode": "local_autonomy"}, Mode.LOCAL_AUTONOMY),  # read, though no agent writes it
    ],
)
def test_local_autonomy_reads_as_its_own_mode(fields, effective):
    message = decode(json.dumps(load("telemetry") | fields))
    assert isinstance(message, Telemetry)
    assert message.effective_mode is effective
