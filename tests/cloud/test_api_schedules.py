"""Schedules and setpoints through the running API: accepted ones read back with status and
delivery, replaced from their start, cancelled; every validation class refused with 422, its
reason and field, and counted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cloud.hotstate import HoldRecord, hold_key

from .api_harness import T0, Api, running_api, seed_envelope

# Pool "north" as seeded: baseline 10 kW, range [-40 kW, 30 kW]; delta range [-50 kW, 20 kW];
# its envelope: 50 kWh to give and 40 kWh to take, counted from 10:00, efficiencies 0.95.
POST = "/v1/pools/north/schedules"
GOOD: dict[str, Any] = {
    "start": "2024-06-01T10:15:00Z",
    "resolution": "PT15M",
    "values_w": [-20_000.0, 0.0],
    "kind": "absolute",
}


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path, redis_url) as running:
        running.seed("north")
        yield running


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_post_read_back_and_list(api: Api) -> None:
    r = await api.client.post(POST, json=GOOD, headers=api.auth())
    assert r.status_code == 201, r.text
    created = r.json()
    sid = created["schedule_id"]
    assert r.headers["location"] == f"/v1/schedules/{sid}"
    assert created["start"] == "2024-06-01T10:15:00+00:00"
    assert created["end"] == "2024-06-01T10:45:00+00:00"
    assert (created["resolution"], created["resolution_s"]) == ("PT15M", 900)
    assert created["values_w"] == [-20_000, 0]
    assert created["kind"] == "absolute"
    assert created["status"] == "active"
    assert created["effective_end"] == created["end"]
    assert datetime.fromisoformat(created["created"]).tzinfo is not None
    got = await api.client.get(f"/v1/schedules/{sid}", headers=api.auth())
    assert got.status_code == 200
    assert got.json() == created
    # The registry holds what the API said.
    stored = api.registry.get_schedule(sid)
    assert stored.start_ts == T0 + 900
    assert list(stored.values_w) == [-20_000, 0]
    listed = await api.client.get(POST, headers=api.auth())
    assert [s["schedule_id"] for s in listed.json()["schedules"]] == [sid]


async def test_times_with_an_offset_and_delta_kind(api: Api) -> None:
    body = {
        **GOOD,
        "start": "2024-06-01T12:30:00+02:00",
        "kind": "delta",
        "values_w": [-50_000.0, 20_000.0],
    }
    r = await api.client.post(POST, json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    assert r.json()["start"] == "2024-06-01T10:30:00+00:00"
    assert r.json()["kind"] == "delta"


async def test_a_schedule_starting_now_is_within_the_grace(api: Api) -> None:
    r = await api.client.post(
        POST, json={**GOOD, "start": "2024-06-01T10:00:00Z"}, headers=api.auth()
    )
    assert r.status_code == 201, r.text


async def test_a_later_schedule_replaces_an_earlier_one_from_its_start(api: Api) -> None:
    first = (
        await api.client.post(POST, json={**GOOD, "values_w": [1000.0] * 4}, headers=api.auth())
    ).json()
    second = (
        await api.client.post(
            POST,
            json={**GOOD, "start": "2024-06-01T10:45:00Z", "values_w": [2000.0]},
            headers=api.auth(),
        )
    ).json()
    first = (
        await api.client.get(f"/v1/schedules/{first['schedule_id']}", headers=api.auth())
    ).json()
    assert first["status"] == "superseded"
    assert first["effective_end"] == first["superseded_from"] == "2024-06-01T10:45:00+00:00"
    assert second["status"] == "active"
    assert api.registry.target_at("north", T0 + 1900).value_w == 1000.0
    assert api.registry.target_at("north", T0 + 2800).value_w == 2000.0
    listed = (await api.client.get(POST, headers=api.auth())).json()["schedules"]
    assert [s["schedule_id"] for s in listed] == [second["schedule_id"], first["schedule_id"]]
    # since: schedules whose nominal span reaches past it (first ends 11:15, second 11:00).
    since = await api.client.get(
        POST, params={"since": "2024-06-01T13:05:00+02:00", "limit": 5}, headers=api.auth()
    )
    assert [s["schedule_id"] for s in since.json()["schedules"]] == [first["schedule_id"]]
    r = await api.client.get(POST, params={"since": "2024-06-01T10:45:00"}, headers=api.auth())
    assert r.status_code == 422
    assert (r.json()["reason"], r.json()["field"]) == ("naive_time", "since")


async def test_delivery_per_interval_is_read_back(api: Api) -> None:
    sid = (await api.client.post(POST, json=GOOD, headers=api.auth())).json()["schedule_id"]
    api.registry.record_interval("north", sid, T0 + 900, 900, -5000.0, -4900.0, 300.0, 800.0, 100.0)
    body = (await api.client.get(f"/v1/schedules/{sid}", headers=api.auth())).json()
    assert body["delivery"] == [
        {
            "start": "2024-06-01T10:15:00+00:00",
            "duration": "PT15M",
            "energy_target_wh": -5000.0,
            "energy_delivered_wh": -4900.0,
            "error_rms_w": 300.0,
            "error_max_w": 800.0,
            "imbalance_wh": 100.0,
        }
    ]


async def test_cancel(api: Api) -> None:
    sid = (await api.client.post(POST, json=GOOD, headers=api.auth())).json()["schedule_id"]
    r = await api.client.post(f"/v1/schedules/{sid}/cancel", headers=api.auth())
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "cancelled"
    # Cancelled before its start: none of it remains.
    assert body["effective_end"] == body["cancelled_from"] == body["start"]
    assert api.registry.target_at("north", T0 + 1000) is None
    again = await api.client.post(f"/v1/schedules/{sid}/cancel", headers=api.auth())
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    # Not deleted: the record stays readable (so the API does not offer DELETE for it).
    r = await api.client.get(f"/v1/schedules/{sid}", headers=api.auth("both"))
    assert r.json()["status"] == "cancelled"
    r = await api.client.delete(f"/v1/schedules/{sid}", headers=api.auth())
    assert (r.status_code, r.headers["allow"]) == (405, "GET")
    nope = await api.client.post("/v1/schedules/nope/cancel", headers=api.auth())
    assert nope.status_code == 404


def _values(n: int) -> list[float]:
    return [0.0] * n


# (body overrides, reason, field). Bodies are sent as JSON text so NaN and 1e999 get through.
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"start": "2024-06-01T10:15:00"}, "naive_time", "start"),
    ({"start": "tomorrow at ten"}, "bad_time", "start"),
    ({"resolution": "PT7M"}, "bad_resolution", "resolution"),
    ({"resolution": "15M"}, "bad_resolution", "resolution"),
    ({"resolution": "PT0S"}, "bad_resolution", "resolution"),
    ({"resolution": "P1D"}, "bad_resolution", "resolution"),
    ({"resolution": "PT2H"}, "bad_resolution", "resolution"),
    ({"resolution": "PT90S"}, "bad_resolution", "resolution"),
    ({"start": "2024-06-01T10:07:00Z"}, "misaligned", "start"),
    ({"start": "2024-06-01T10:15:00Z", "resolution": "PT1H"}, "misaligned", "start"),
    ({"start": "2024-06-01T09:45:00Z"}, "in_past", "start"),
    (
        {"start": "2024-06-01T11:00:00Z", "resolution": "PT1H", "values_w": _values(48)},
        "beyond_horizon",
        "values_w",
    ),
    ({"start": "2024-06-03T10:15:00Z"}, "beyond_horizon", "values_w"),
    (
        {"start": "2024-06-01T10:01:00Z", "resolution": "PT1M", "values_w": _values(2881)},
        "too_many_values",
        "values_w",
    ),
    ({"values_w": []}, "empty", "values_w"),
    ({"values_w": [0.0, float("nan")]}, "non_finite", "values_w[1]"),
    ({"values_w": [float("inf")]}, "non_finite", "values_w[0]"),
    ({"values_w": [0.0, 0.0, 30_001.0 + 100]}, "out_of_range", "values_w[2]"),
    ({"values_w": [-41_000.0]}, "out_of_range", "values_w[0]"),
    ({"kind": "delta", "values_w": [20_000.0, 25_000.0]}, "out_of_range", "values_w[1]"),
    ({"kind": "delta", "values_w": [-50_001.0 - 100]}, "out_of_range", "values_w[0]"),
    ({"kind": "relative"}, "schema", "kind"),
    ({"values_w": ["a lot"]}, "schema", "values_w.0"),
    ({"values_w": [1000, True]}, "schema", "values_w.1"),  # not 1 W
    ({"values_w": ["1000"]}, "schema", "values_w.0"),  # a number, not a numeric string
    ({"start": None}, "schema", "start"),
]


@pytest.mark.parametrize(("overrides", "reason", "field"), INVALID)
async def test_invalid_schedules_are_refused_with_reason(
    api: Api, overrides: dict[str, Any], reason: str, field: str
) -> None:
    body = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    text = json.dumps(body)  # allow_nan: NaN/Infinity literals, as a sloppy client sends
    r = await api.client.post(
        POST, content=text, headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    err = r.json()
    assert (err["reason"], err["field"]) == (reason, field), err
    assert err["detail"]
    assert api.rejected(reason) == 1
    assert api.registry.list_schedules("north") == []  # nothing entered the registry


async def test_json_overflow_to_infinity_is_non_finite(api: Api) -> None:
    text = '{"start": "2024-06-01T10:15:00Z", "resolution": "PT15M", "values_w": [1e999]}'
    r = await api.client.post(
        POST, content=text, headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["reason"] == "non_finite"


async def test_the_422_messages_say_how_to_fix_it(api: Api) -> None:
    r = await api.client.post(
        POST, json={**GOOD, "start": "2024-06-01T10:07:00Z"}, headers=api.auth()
    )
    assert "2024-06-01T10:00:00+00:00 or 2024-06-01T10:15:00+00:00" in r.json()["detail"]
    r = await api.client.post(POST, json={**GOOD, "resolution": "PT7M"}, headers=api.auth())
    assert "PT15M" in r.json()["detail"]
    assert "PT1H" in r.json()["detail"]
    r = await api.client.post(POST, json={**GOOD, "values_w": [40_000.0]}, headers=api.auth())
    assert (
        "30000 W (delta) is outside the pool's guaranteed range [-50000, 20000]"
        in (r.json()["detail"])
    )


def delta(values: list[float], start: str = "2024-06-01T10:15:00Z", **kw: Any) -> dict:
    return {"start": start, "resolution": "PT15M", "values_w": values, "kind": "delta", **kw}


async def test_a_schedule_past_the_energy_it_was_promised_is_refused_naming_the_slot(
    api: Api,
) -> None:
    """Delivering 47 kW holds for an hour (49.5 kWh drawn of the 50 kWh, floor count) and
    not for a fifth quarter hour: the first value past the floor is named."""
    r = await api.client.post(POST, json=delta([-47_000.0] * 4), headers=api.auth())
    assert r.status_code == 201, r.text
    r = await api.client.post(POST, json=delta([-47_000.0] * 5), headers=api.auth())
    assert r.status_code == 422
    err = r.json()
    assert (err["reason"], err["field"]) == ("energy_out_of_range", "values_w[4]")
    assert "e_min_wh" in err["detail"]
    assert "2024-06-01T11:15:00+00:00" in err["detail"]
    # absorbing: the ceiling counts what the storage may keep (1 / 0.95 of what it takes)
    r = await api.client.post(POST, json=delta([18_000.0] * 8 + [0.0]), headers=api.auth())
    assert r.status_code == 201
    r = await api.client.post(POST, json=delta([18_000.0] * 9), headers=api.auth())
    assert (r.json()["reason"], r.json()["field"]) == ("energy_out_of_range", "values_w[8]")
    assert "e_max_wh" in r.json()["detail"]


async def test_what_the_schedule_in_force_commits_before_the_start_counts(api: Api) -> None:
    """10:00-10:15 is under way with a schedule delivering 45 kW: a new schedule from 10:15
    has that much less energy to give."""
    first = delta([-45_000.0], start="2024-06-01T10:00:00Z")
    r = await api.client.post(POST, json=first, headers=api.auth())
    assert r.status_code == 201, r.text
    flex = (await api.client.get("/v1/pools/north/flexibility", headers=api.auth())).json()
    assert flex["envelope"]["committed_w"][:2] == [-45_000.0, None]
    # 11.8 kWh already drawn (floor count): 38.2 kWh left; 3 quarter hours at 50 kW draw 39.5
    r = await api.client.post(POST, json=delta([-50_000.0] * 3), headers=api.auth())
    assert (r.json()["reason"], r.json()["field"]) == ("energy_out_of_range", "values_w[2]")
    r = await api.client.post(POST, json=delta([-50_000.0] * 2), headers=api.auth())
    assert r.status_code == 201, r.text


async def test_two_storage_groups_take_what_their_sum_takes(api: Api) -> None:
    """The same storage in two groups (each half of it): a schedule is split over both, so
    what one group alone could not hold is accepted, and the energy of the sum still binds;
    the committed storage is shown per group."""
    seed_envelope(api.redis, "north", api.now(), groups=2)
    r = await api.client.post(POST, json=delta([-47_000.0] * 4), headers=api.auth())
    assert r.status_code == 201, r.text  # 47 kW: more than either group's 25 kW
    r = await api.client.post(POST, json=delta([-47_000.0] * 5), headers=api.auth())
    assert (r.json()["reason"], r.json()["field"]) == ("energy_out_of_range", "values_w[4]")
    flex = (await api.client.get("/v1/pools/north/flexibility", headers=api.auth())).json()
    env = flex["envelope"]
    assert [g["group"] for g in env["guaranteed"]["storage"]] == [0, 1]
    per_group = env["committed_storage_w"]
    assert len(per_group) == 2
    totals = [a + b for a, b in zip(*per_group, strict=True)]
    assert totals[1:5] == pytest.approx([-47_000.0] * 4, abs=1.0)
    assert totals[5:] == [0.0] * 91


async def test_past_the_envelope_only_the_baseline_is_accepted(api: Api) -> None:
    end = "2024-06-02T10:00:00Z"  # the envelope covers 10:00 to 10:00 the next day
    r = await api.client.post(POST, json=delta([0.0, 0.0], start=end), headers=api.auth())
    assert r.status_code == 201, r.text
    r = await api.client.post(POST, json=delta([0.0, 100.0], start=end), headers=api.auth())
    assert (r.json()["reason"], r.json()["field"]) == ("beyond_envelope", "values_w[1]")


async def test_no_envelope_yet_is_503(api: Api) -> None:
    api.redis.delete("vpp:envelope:north")
    r = await api.client.post(POST, json=GOOD, headers=api.auth())
    assert r.status_code == 503
    assert r.json()["reason"] == "no_envelope"
    assert r.headers["retry-after"]


async def test_no_new_schedule_while_the_pool_holds_its_plan(api: Api) -> None:
    reason = "the cloud's broker link is down since 30 s"
    hold = HoldRecord(pool_id="north", since=api.now() - 30, reason=reason)
    api.redis.set(hold_key("north"), hold.to_json())
    r = await api.client.post(POST, json=GOOD, headers=api.auth())
    assert r.status_code == 503
    assert r.json()["reason"] == "pool_unreachable"
    assert "broker link is down" in r.json()["detail"]
    assert r.headers["retry-after"]
    api.redis.delete(hold_key("north"))  # the dispatcher ends the hold: accepted again
    r = await api.client.post(POST, json=GOOD, headers=api.auth())
    assert r.status_code == 201, r.text


async def test_schedule_without_fresh_flexibility_is_503(api: Api) -> None:
    api.redis.flushdb()
    r = await api.client.post(POST, json=GOOD, headers=api.auth())
    assert r.status_code == 503
    assert r.json()["reason"] == "no_fresh_data"


SETPOINT = "/v1/pools/north/setpoint"


@pytest.mark.parametrize(("link_down", "refused"), [(True, True), (False, False)])
async def test_a_setpoint_is_refused_only_while_the_broker_link_is_down(
    api: Api, link_down: bool, refused: bool
) -> None:
    """While the sites reconnect (the link is back) the signals reach them: a setpoint is
    taken; while the cloud's link is down no site could hear it."""
    hold = HoldRecord(pool_id="north", since=api.now() - 30, reason="test", link_down=link_down)
    api.redis.set(hold_key("north"), hold.to_json())
    body = {"target_w": -30_000, "kind": "delta", "valid_for_s": 60}
    r = await api.client.post(SETPOINT, json=body, headers=api.auth())
    if refused:
        assert r.status_code == 503
        assert r.json()["reason"] == "pool_unreachable"
        assert "setpoint" in r.json()["detail"]
    else:
        assert r.status_code == 201, r.text


async def test_setpoint_with_valid_for_and_valid_until(api: Api) -> None:
    r = await api.client.post(
        SETPOINT, json={"target_w": -30_000, "kind": "delta", "valid_for_s": 10}, headers=api.auth()
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["pool_id"], body["target_w"], body["kind"]) == ("north", -30_000, "delta")
    assert 9.9 <= ts(body["valid_until"]) - ts(body["created"]) <= 10.1
    act = api.registry.active_activation("north", api.now())
    assert act.activation_id == body["activation_id"]
    until = datetime.fromtimestamp(api.now() + 120).astimezone().isoformat()  # local offset
    body = {"target_w": 25_000, "kind": "absolute", "valid_until": until}
    r = await api.client.post(SETPOINT, json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    assert abs(ts(r.json()["valid_until"]) - ts(until)) < 1e-3
    assert api.registry.active_activation("north", api.now()).target_w == 25_000


INVALID_SETPOINTS: list[tuple[dict[str, Any], str, str]] = [
    ({"target_w": 0}, "expiry", "valid_for_s"),
    (
        {"target_w": 0, "valid_for_s": 5, "valid_until": "2024-06-01T10:01:00Z"},
        "expiry",
        "valid_for_s",
    ),
    ({"target_w": 0, "valid_for_s": 0}, "expiry", "valid_for_s"),
    ({"target_w": 0, "valid_for_s": -3}, "expiry", "valid_for_s"),
    ({"target_w": 0, "valid_for_s": 301}, "expiry", "valid_for_s"),
    ({"target_w": 0, "valid_until": "2024-06-01T09:59:00Z"}, "expiry", "valid_until"),
    ({"target_w": 0, "valid_until": "2024-06-01T11:00:00Z"}, "expiry", "valid_until"),
    ({"target_w": 0, "valid_until": "2024-06-01T10:01:00"}, "naive_time", "valid_until"),
    ({"target_w": float("nan"), "valid_for_s": 5}, "non_finite", "target_w"),
    ({"target_w": 31_000, "kind": "absolute", "valid_for_s": 5}, "out_of_range", "target_w"),
    ({"target_w": -50_200, "kind": "delta", "valid_for_s": 5}, "out_of_range", "target_w"),
    ({"target_w": 0, "kind": "both", "valid_for_s": 5}, "schema", "kind"),
    ({"valid_for_s": 5}, "schema", "target_w"),
    ({"target_w": False, "valid_for_s": 5}, "schema", "target_w"),  # was taken as 0 W
    ({"target_w": "-3000", "valid_for_s": 5}, "schema", "target_w"),
    ({"target_w": 0, "valid_for_s": True}, "schema", "valid_for_s"),
]


@pytest.mark.parametrize(("body", "reason", "field"), INVALID_SETPOINTS)
async def test_invalid_setpoints_are_refused_with_reason(
    api: Api, body: dict[str, Any], reason: str, field: str
) -> None:
    r = await api.client.post(
        SETPOINT,
        content=json.dumps(body),
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert (r.json()["reason"], r.json()["field"]) == (reason, field), r.json()
    assert api.rejected(reason) == 1
    assert api.registry.active_activation("north", api.now()) is None


async def test_setpoint_without_fresh_flexibility_is_503(api: Api) -> None:
    api.redis.flushdb()
    r = await api.client.post(SETPOINT, json={"target_w": 0, "valid_for_s": 5}, headers=api.auth())
    assert r.status_code == 503
    assert r.json()["reason"] == "no_fresh_data"
