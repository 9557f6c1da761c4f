"""Claim tokens in the registry and `vpp cloud claims ...`: the rules as tables, expiry on a
manual clock, single use, and the operator's commands with their one-line refusals."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

from cloud.registry import Registry
from cloud.registry.claims import (
    Claim,
    ClaimRefusedError,
    ClaimState,
    check_redemption,
    parse_ttl,
    site_id_for,
)
from cloud.registry.keys import parse_token
from cloud.registry.migrations import MIGRATIONS
from protocols.clock import ManualClock
from vpp.cli import app

T0 = 1_800_000_000.0
GW_A = "gateway-a-0123456789"
GW_B = "gateway-b-0123456789"


def claim(**changes) -> Claim:
    fields = {"claim_id": "c1", "pool_id": "north", "site_id": None, "created_by": "op"}
    return Claim(**{**fields, "created_ts": T0, "expires_ts": T0 + 3600, **changes})


# --- pure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "now", "state"),
    [
        ({}, T0, ClaimState.OPEN),
        ({}, T0 + 3600, ClaimState.EXPIRED),
        ({"redeemed_ts": T0 + 10, "gateway_id": GW_A}, T0 + 7200, ClaimState.REDEEMED),
        ({"revoked_ts": T0 + 5}, T0 + 10, ClaimState.REVOKED),
        ({"revoked_ts": T0 + 5, "redeemed_ts": T0 + 1}, T0 + 10, ClaimState.REVOKED),
    ],
)
def test_a_claims_state(changes, now, state) -> None:
    assert claim(**changes).state(now) is state


@pytest.mark.parametrize(
    ("found", "gateway", "now", "reason"),
    [
        (None, GW_A, T0, "unknown_claim"),
        (claim(), GW_A, T0, None),
        (claim(gateway_id=GW_A, redeemed_ts=T0), GW_A, T0 + 60, None),  # its answer was lost
        (claim(gateway_id=GW_A, redeemed_ts=T0), GW_B, T0 + 60, "claim_used"),
        (claim(gateway_id=GW_A), GW_B, T0 + 60, "claim_used"),  # A is redeeming right now
        (claim(), GW_A, T0 + 3600, "claim_expired"),
        (claim(gateway_id=GW_A, redeemed_ts=T0), GW_A, T0 + 3600, "claim_expired"),
        (claim(revoked_ts=T0), GW_A, T0 + 1, "claim_revoked"),
    ],
)
def test_who_may_redeem(found, gateway, now, reason) -> None:
    if reason is None:
        check_redemption(found, gateway, now)
        return
    with pytest.raises(ClaimRefusedError) as refused:
        check_redemption(found, gateway, now)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("72h", 259_200.0), ("30m", 1800.0), ("3d", 259_200.0), ("90", 90.0), (" 1.5h ", 5400.0)],
)
def test_ttl_forms(text, seconds) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5x", "ttl '5x' is invalid: use e.g. 72h, 30m, 3d or seconds"),
        ("0h", "ttl '0h' must be over 0 and at most 90 days"),
        ("91d", "ttl '91d' must be over 0 and at most 90 days"),
        ("-3h", "ttl '-3h' is invalid"),
    ],
)
def test_bad_ttls(text, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_ttl(text)


# --- the registry ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


@pytest.fixture
def reg(tmp_path: Path, clock: ManualClock):
    with Registry(tmp_path / "r.db", clock) as registry:
        registry.create_pool("north")
        yield registry


def redeem(reg: Registry, token: str, gateway: str, partitions: int = 8):
    begun = reg.begin_redemption(token, gateway)
    return reg.finish_redemption(begun, partitions=partitions, gateway={"software_version": "1"})


def test_a_token_is_random_shown_once_and_stored_as_its_hash(reg: Registry) -> None:
    (made, token), (_other, token2) = reg.create_claims("north", 3600, count=2)
    assert parse_token(token, "vppclaim") == made.claim_id
    assert token != token2
    assert len(token.split("_", 2)[2]) >= 43  # 256 random bits, URL-safe
    raw = sqlite3.connect(reg.path).execute("SELECT * FROM claims").fetchall()
    assert token not in repr(raw)
    assert token2 not in repr(raw)
    assert parse_token(token) is None  # a claim is no API key


def test_redeeming_gives_the_next_free_site_and_is_single_use(reg: Registry) -> None:
    reg.add_site(site_id_for(1), "north", partitions=8)  # taken already: skipped
    (made, token), (_, token2) = reg.create_claims("north", 3600, count=2, created_by="ops")
    site = redeem(reg, token, GW_A)
    assert (site.site_id, site.pool_id) == (site_id_for(2), "north")
    assert site.meta["gateway_id"] == GW_A
    assert site.meta["software_version"] == "1"
    assert redeem(reg, token, GW_A).site_id == site.site_id  # again: the same site
    assert redeem(reg, token2, GW_B).site_id == site_id_for(3)
    with pytest.raises(ClaimRefusedError, match="redeemed by another gateway"):
        reg.begin_redemption(token, GW_B)
    first = reg.get_claim(made.claim_id)
    assert (first.state(T0), first.gateway_id, first.redemptions) == ("redeemed", GW_A, 2)


def test_a_claim_expires_on_the_clock(reg: Registry, clock: ManualClock) -> None:
    [(made, token)] = reg.create_claims("north", 3600)
    clock.advance(3599)
    assert reg.get_claim(made.claim_id).state(clock.time()) is ClaimState.OPEN
    clock.advance(1)
    with pytest.raises(ClaimRefusedError, match="has expired") as refused:
        reg.begin_redemption(token, GW_A)
    assert refused.value.reason == "claim_expired"
    assert reg.get_claim(made.claim_id).state(clock.time()) is ClaimState.EXPIRED


def test_an_aborted_redemption_leaves_the_claim_open(reg: Registry) -> None:
    [(made, token)] = reg.create_claims("north", 3600, site_id="home-7")
    begun = reg.begin_redemption(token, GW_A)
    assert (begun.site_id, begun.gateway_id) == ("home-7", GW_A)
    reg.abort_redemption(begun)
    after = reg.get_claim(made.claim_id)
    assert (after.state(T0), after.gateway_id, reg.get_site("home-7")) == ("open", None, None)
    assert redeem(reg, token, GW_B).site_id == "home-7"  # another gateway may have it now


def test_a_revoked_claim_cannot_be_redeemed(reg: Registry) -> None:
    [(made, token)] = reg.create_claims("north", 3600)
    assert reg.revoke_claim(made.claim_id)
    assert not reg.revoke_claim(made.claim_id)
    with pytest.raises(ClaimRefusedError, match=f"claim {made.claim_id} was revoked"):
        reg.begin_redemption(token, GW_A)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("vppclaim_0123456789ab_" + "A" * 43, "unknown_claim"),  # well-formed, not known
        ("not a token", "unknown_claim"),
        ("", "unknown_claim"),
    ],
)
def test_unknown_tokens(reg: Registry, token: str, reason: str) -> None:
    reg.create_claims("north", 3600)
    with pytest.raises(ClaimRefusedError) as refused:
        reg.begin_redemption(token, GW_A)
    assert refused.value.reason == reason


def test_a_wrong_secret_of_a_known_claim_is_unknown(reg: Registry) -> None:
    [(_made, token)] = reg.create_claims("north", 3600)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(ClaimRefusedError, match="not known"):
        reg.begin_redemption(forged, GW_A)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_id": "south"}, "pool 'south' does not exist"),
        ({"count": 2, "site_id": "home-1"}, "a fixed site id goes with one claim"),
        ({"count": 0}, "count must be 1..1000"),
        ({"site_id": "bad id"}, "site id 'bad id' is invalid"),
        ({"ttl_s": 0}, "ttl must be over 0 s"),
    ],
)
def test_bad_claims_are_refused(reg: Registry, kwargs, message) -> None:
    args = {"pool_id": "north", "ttl_s": 3600, **kwargs}
    with pytest.raises(ValueError, match=message):
        reg.create_claims(args.pop("pool_id"), args.pop("ttl_s"), **args)
    assert reg.list_claims() == []


def test_one_open_claim_per_fixed_site(reg: Registry) -> None:
    [(made, _)] = reg.create_claims("north", 3600, site_id="home-1")
    with pytest.raises(ValueError, match=f"named by open claim {made.claim_id}"):
        reg.create_claims("north", 3600, site_id="home-1")


def test_m004_expands_a_release_3_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    MIGRATIONS.apply(db, stop_before="m004_claims")
    db.execute("INSERT INTO pools (pool_id, name, created_ts) VALUES ('north', '', 0)")
    db.conn.commit()
    db.close()
    with Registry(path, ManualClock(start=T0)) as reg:
        assert reg.migrated[0] == "m004_claims"  # and the releases after it
        assert reg.list_pools()[0].pool_id == "north"
        assert reg.list_claims() == []


# --- the commands ---------------------------------------------------------------------------


def cli(*args: str):
    return CliRunner().invoke(app, ["cloud", "claims", *args])


def test_create_list_revoke_from_the_shell(tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "r.db")]
    assert CliRunner().invoke(app, ["cloud", "pools", "create", "north", *db]).exit_code == 0
    made = cli("create", "--pool", "north", "--ttl", "2h", "--count", "2", "--json", *db)
    assert made.exit_code == 0, made.stderr
    claims = json.loads(made.stdout)["claims"]
    assert [c["state"] for c in claims] == ["open", "open"]
    assert all(c["token"].startswith(f"vppclaim_{c['claim_id']}_") for c in claims)
    plain = cli("create", "--pool", "north", "--site-id", "home-9", *db)
    assert plain.exit_code == 0
    assert "site home-9" in plain.stdout
    assert plain.stdout.splitlines()[-1].startswith("vppclaim_")  # the token alone, last
    assert cli("revoke", claims[0]["claim_id"], *db).exit_code == 0
    listed = cli("list", "--pool", "north", *db).stdout
    assert f"{claims[0]['claim_id']}\tnorth\trevoked" in listed
    assert f"{claims[1]['claim_id']}\tnorth\topen" in listed
    assert "vppclaim_" not in listed  # never a token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "--pool", "south"), "error: pool 'south' does not exist"),
        (("create", "--pool", "north", "--ttl", "soon"), "error: ttl 'soon' is invalid"),
        (
            ("create", "--pool", "north", "--site-id", "h", "--count", "3"),
            "error: a fixed site id goes with one claim: give --count 1",
        ),
        (("list", "--pool", "south"), "error: pool 'south' does not exist"),
        (("revoke", "0123456789ab"), "error: no unrevoked claim '0123456789ab'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, message) -> None:
    db = ["--db", str(tmp_path / "r.db")]
    CliRunner().invoke(app, ["cloud", "pools", "create", "north", *db])
    result = cli(*args, *db)
    assert result.exit_code == 2
    assert result.stderr.strip() == message or result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    with Registry(tmp_path / "r.db", ManualClock(start=T0)) as reg:
        assert reg.list_claims() == []  # nothing made half-way
