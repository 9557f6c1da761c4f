"""One partition's sites, as numpy columns: per-message bookkeeping and vectorised aggregates.

Pure: no I/O, no clock of its own (every call takes the time), so it is tested without any
server and the worker decides when things happen.

Why numpy: a worker may hold 100k sites. Applying a message touches one row (a few
scalar writes), while the cycle's aggregate is a handful of masked ``bincount`` calls over
whole columns, so a cycle costs milliseconds however the sites are split over pools.

Rules (see :meth:`PartitionState.apply`):

* **Dedupe by site seq.** ``seq == last`` is a duplicate, ``seq < last`` is out of order; both
  are ignored. (Exception: a lower seq whose source ``ts`` is newer than the state by more
  than an interval means the agent's counter restarted, e.g. a reinstalled gateway; it is
  accepted as ``seq_reset`` instead of ignoring the site until its seq catches up.)
* **The newest seq is the newest measurement**, whatever the gateway's clock says: a message
  with a newer seq but an *older* source ``ts`` than the state (the gateway's clock went
  back, e.g. NTP correcting it) is accepted and counted as ``accepted_clock_back``. An agent
  replays its buffer behind live data, with lower seqs: those are out of order.
* **A source ``ts`` in the future** by more than ``future_tolerance_s`` of the receive time
  (a gateway clock run ahead: a flat RTC battery, an NTP glitch) is refused as ``future_ts``
  and counted; it never becomes the state, so the site follows its measurements again as
  soon as its clock is back.
* **Sequence continuity.** A seq above the site's last + 1 skipped the numbers between:
  they are counted in :attr:`PartitionState.seq_gaps` (telemetry lost on its way, or sent
  while nobody here listened). A site's first message sets its start, not a gap; a worker
  taking a partition over checks the starts against the last owner's with
  :meth:`PartitionState.gaps_after`.
* **Live vs backlog.** A message whose source ``ts`` is older than its receive time by more
  than ``backlog_intervals`` of its own interval is backlog; it still updates the state when
  it is the newest we have, but it cannot make the site fresh (freshness is by source ts).
* **Fresh / stale / offline.** A site is *offline* when its latest status says so (a status
  at least as new as its telemetry), or when it has been silent longer than
  ``max(offline_after_s, its fresh window)``; otherwise *fresh* while
  ``now <= ts + max(stale_intervals * interval_s, heartbeat_s)``; otherwise *stale*. A source
  ``ts`` in the future counts as its receive time, so a fast agent clock cannot keep a site
  fresh. A site known only from the registry counts as silent since its slot was made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum

import numpy as np

from cloud.hotstate import DURATIONS_S, PartitionAggregate, SiteStatus, SiteSummary
from protocols.messages import Mode, SiteState, Status, Telemetry
from protocols.units import SETTLEMENT_INTERVAL_S

__all__ = ["FUTURE_TOLERANCE_S", "PLAN_GRACE_S", "Outcome", "PartitionState"]

FUTURE_TOLERANCE_S = 30.0  # a source ts this far ahead of its receive time is still taken


class Outcome(StrEnum):
    """What :meth:`PartitionState.apply` did with a telemetry message (counter names)."""

    ACCEPTED_LIVE = "accepted_live"  # newest state, measured recently
    ACCEPTED_BACKLOG = "accepted_backlog"  # newest state, but an old measurement (replay)
    ACCEPTED_CLOCK_BACK = "accepted_clock_back"  # newer seq, older ts: the clock went back
    FUTURE_TS = "future_ts"  # source ts too far ahead of its receive time: refused
    SEQ_RESET = "seq_reset"  # lower seq, clearly newer ts: the agent's counter restarted
    DUPLICATE = "duplicate"  # seq already seen: ignored
    OUT_OF_ORDER = "out_of_order"  # seq below the newest seen: ignored


# float columns of PartitionState._num
_TS, _RX, _INTERVAL, _HEARTBEAT = 0, 1, 2, 3
_GRID, _BASELINE, _PMIN, _PMAX, _EABS, _EDEL, _PV, _LOAD, _BATT, _SOC = range(4, 14)
_STATUS_TS, _SINCE = 14, 15
_SLOT_START, _SLOT_DEV, _SLOT_COV = 16, 17, 18  # the message's slot_energy (NaN: none)
_NCOLS = 19
SLOT_S = SETTLEMENT_INTERVAL_S  # the quarter hours of the sites' slot energy

_MODE_CODE = {Mode.CLOUD: 0, Mode.FALLBACK: 1, Mode.DEGRADED: 2, Mode.LOCAL_AUTONOMY: 3}
_MODE_NAME = {code: mode.value for mode, code in _MODE_CODE.items()}
_MODE_JSON = {code: f'"{name}"' for code, name in _MODE_NAME.items()}
_DEGRADED = _MODE_CODE[Mode.DEGRADED]
_CLOUD = _MODE_CODE[Mode.CLOUD]
_AUTONOMY = _MODE_CODE[Mode.LOCAL_AUTONOMY]
_NO_MODE = -1

# status codes (site_summaries change detection)
_FRESH, _STALE, _OFFLINE = 0, 1, 2
_STATUS_OF_CODE = {_FRESH: SiteStatus.FRESH, _STALE: SiteStatus.STALE, _OFFLINE: SiteStatus.OFFLINE}

#: A stale site that follows a plan keeps its envelope in the pool this long past its fresh
#: window (clock seconds): long enough for a late message or two, short enough that a site
#: lost for good is announced (the early warning) well within 2 minutes.
PLAN_GRACE_S = 60.0

_NOT_REPORTED = -1

_NO_POOL = -1
_NAN = float("nan")


def _json_num(v: float) -> str:
    return "null" if v != v else repr(v)


def _opt(value: float | None) -> float:
    return _NAN if value is None else value


class PartitionState:
    """The sites of one partition: latest state per site and the partition's aggregates.

    Slots are assigned on first sight (telemetry, status, or registry) and never reused;
    arrays grow by doubling, so a message for a new site costs amortised O(1).
    """

    def __init__(
        self,
        partition: int,
        *,
        stale_intervals: float = 3.0,
        offline_after_s: float = 120.0,
        backlog_intervals: float = 2.0,
        plan_grace_s: float = PLAN_GRACE_S,
        future_tolerance_s: float = FUTURE_TOLERANCE_S,
        capacity: int = 64,
    ) -> None:
        if stale_intervals <= 0 or offline_after_s <= 0 or backlog_intervals <= 0:
            raise ValueError("stale_intervals, offline_after_s, backlog_intervals must be > 0")
        if plan_grace_s < 0:
            raise ValueError(f"plan_grace_s must be >= 0, got {plan_grace_s}")
        if not future_tolerance_s > 0:
            raise ValueError(f"future_tolerance_s must be > 0, got {future_tolerance_s}")
        self.future_tolerance_s = float(future_tolerance_s)
        self.partition = partition
        self.stale_intervals = float(stale_intervals)
        self.offline_after_s = float(offline_after_s)
        self.backlog_intervals = float(backlog_intervals)
        self.plan_grace_s = float(plan_grace_s)
        self._index: dict[str, int] = {}
        self._site_ids: list[str] = []
        self._n = 0
        cap = max(1, capacity)
        self._num = np.full((cap, _NCOLS), np.nan)
        self._seq = np.full(cap, -1, dtype=np.int64)
        self._first_seq = np.full(cap, -1, dtype=np.int64)  # the first seq applied here
        self.seq_gaps = 0  # seq numbers skipped by sites tracked here (see module docstring)
        self._mode = np.full(cap, _NO_MODE, dtype=np.int8)
        self._pool = np.full(cap, _NO_POOL, dtype=np.int32)
        self._has = np.zeros(cap, dtype=bool)
        self._planned = np.zeros(cap, dtype=bool)
        self._status_off = np.zeros(cap, dtype=bool)
        self._changed = np.zeros(cap, dtype=bool)
        self._reported = np.full(cap, _NOT_REPORTED, dtype=np.int8)
        self._pool_ids: list[str] = []
        self._pool_index: dict[str, int] = {}
        self._site_pools: Mapping[str, str] = {}

    # --- slots ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._index

    @property
    def site_ids(self) -> list[str]:
        return list(self._site_ids)

    def _grow(self) -> None:
        cap = len(self._seq) * 2

        def grown(a: np.ndarray, fill: object) -> np.ndarray:
            out = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._num = grown(self._num, np.nan)
        self._seq = grown(self._seq, -1)
        self._first_seq = grown(self._first_seq, -1)
        self._mode = grown(self._mode, _NO_MODE)
        self._pool = grown(self._pool, _NO_POOL)
        self._has = grown(self._has, False)
        self._planned = grown(self._planned, False)
        self._status_off = grown(self._status_off, False)
        self._changed = grown(self._changed, False)
        self._reported = grown(self._reported, _NOT_REPORTED)

    def _slot(self, site_id: str, now: float) -> int:
        i = self._index.get(site_id)
        if i is not None:
            return i
        i = self._n
        if i == len(self._seq):
            self._grow()
        self._index[site_id] = i
        self._site_ids.append(site_id)
        self._n = i + 1
        self._num[i, _SINCE] = now
        self._pool[i] = self._pool_of(site_id)
        self._changed[i] = True
        return i

    def _pool_of(self, site_id: str) -> int:
        pool_id = self._site_pools.get(site_id)
        if pool_id is None:
            return _NO_POOL
        k = self._pool_index.get(pool_id)
        if k is None:
            k = self._pool_index[pool_id] = len(self._pool_ids)
            self._pool_ids.append(pool_id)
        return k

    def set_pools(self, site_pools: Mapping[str, str], now: float) -> None:
        """Take the registry's site -> pool mapping for this partition's sites.

        Every registered site gets a slot (so a site never heard from counts, as stale and
        then offline, instead of being invisible); sites absent from the mapping leave
        their pool and count as unregistered. Call again whenever the registry changes.
        """
        self._site_pools = site_pools
        self._pool_ids = []
        self._pool_index = {}
        for site_id in site_pools:
            self._slot(site_id, now)
        old = self._pool[: self._n].copy()
        for i, site_id in enumerate(self._site_ids):
            self._pool[i] = self._pool_of(site_id)
        self._changed[: self._n] |= old != self._pool[: self._n]

    # --- per message ----------------------------------------------------------------------

    def apply(self, t: Telemetry, receive_time: float) -> Outcome:
        """Apply one validated telemetry message; O(1), a few scalar writes."""
        i = self._index.get(t.site_id)
        if i is None:
            i = self._slot(t.site_id, receive_time)
        seq = t.seq
        last = int(self._seq[i])
        if seq == last:
            return Outcome.DUPLICATE
        ts = t.ts
        if ts > receive_time + self.future_tolerance_s:
            return Outcome.FUTURE_TS
        has = bool(self._has[i])
        row = self._num[i]
        if seq < last:
            if not (has and ts > row[_TS] + row[_INTERVAL]):
                return Outcome.OUT_OF_ORDER
            outcome = Outcome.SEQ_RESET
        elif has and ts < row[_TS]:
            outcome = Outcome.ACCEPTED_CLOCK_BACK
        elif receive_time - ts > self.backlog_intervals * t.interval_s:
            outcome = Outcome.ACCEPTED_BACKLOG
        else:
            outcome = Outcome.ACCEPTED_LIVE
        flex = t.flex
        row[_TS : _SOC + 1] = (
            ts,
            receive_time,
            t.interval_s,
            _opt(t.heartbeat_s),
            t.grid_w,
            t.baseline_w,
            flex.p_min_w,
            flex.p_max_w,
            flex.e_absorb_wh,
            flex.e_deliver_wh,
            _opt(t.pv_w),
            _opt(t.load_w),
            _opt(t.battery_w),
            _opt(t.soc_pct),
        )
        slot = t.slot_energy
        row[_SLOT_START : _SLOT_COV + 1] = (
            (np.nan, np.nan, np.nan)
            if slot is None
            else (slot.start_ts, slot.deviation_wh, slot.covered_s)
        )
        if last < 0:
            self._first_seq[i] = seq
        elif seq > last + 1:
            self.seq_gaps += seq - last - 1
        self._seq[i] = seq
        self._mode[i] = _MODE_CODE[t.effective_mode]
        self._planned[i] = t.plan_id is not None
        self._has[i] = True
        self._changed[i] = True
        return outcome

    def apply_status(self, s: Status, receive_time: float) -> bool:
        """Apply a site's online/offline status (retained, last will). False if older than
        the status already held (a stale retained message must not undo a newer one)."""
        i = self._index.get(s.site_id)
        if i is None:
            i = self._slot(s.site_id, receive_time)
        row = self._num[i]
        if s.ts < row[_STATUS_TS]:  # NaN compares False: the first status always applies
            return False
        row[_STATUS_TS] = s.ts
        self._status_off[i] = s.state == SiteState.OFFLINE
        self._changed[i] = True
        return True

    def last_seqs(self) -> dict[str, int]:
        """Site id -> the newest seq applied (sites heard from)."""
        return {self._site_ids[i]: int(self._seq[i]) for i in np.flatnonzero(self._has[: self._n])}

    def gaps_after(self, last_seqs: Mapping[str, int]) -> int:
        """Seq numbers between another owner's last seq of each site (``last_seqs``) and the
        first this state applied: what nobody ingested across a hand-over. Added to
        :attr:`seq_gaps` and returned."""
        gaps = 0
        for site_id, last in last_seqs.items():
            i = self._index.get(site_id)
            if i is None:
                continue
            first = int(self._first_seq[i])
            if first > last + 1:
                gaps += first - last - 1
        self.seq_gaps += gaps
        return gaps

    # --- vectorised views -----------------------------------------------------------------

    def _heard(self) -> tuple[np.ndarray, np.ndarray]:
        """Per slot: when the site was last heard (its source ts, never later than received)
        and how long it stays fresh after that."""
        n = self._n
        num = self._num[:n]
        has = self._has[:n]
        heard = np.where(has, np.fmin(num[:, _TS], num[:, _RX]), num[:, _SINCE])
        window = np.fmax(self.stale_intervals * num[:, _INTERVAL], num[:, _HEARTBEAT])
        return heard, np.where(has, window, 0.0)

    def status_codes(self, now: float) -> np.ndarray:
        """Per slot: 0 fresh, 1 stale, 2 offline (see the module docstring for the rules)."""
        n = self._n
        num = self._num[:n]
        has = self._has[:n]
        ts = num[:, _TS]
        heard, window = self._heard()
        status_off = self._status_off[:n] & ~(num[:, _STATUS_TS] < np.where(has, ts, -np.inf))
        offline = status_off | (now - heard > np.maximum(self.offline_after_s, window))
        fresh = has & ~offline & (now <= heard + window)
        codes = np.full(n, _STALE, dtype=np.int8)
        codes[fresh] = _FRESH
        codes[offline] = _OFFLINE
        return codes

    def unregistered(self) -> int:
        """Sites heard from that the registry does not place in a pool (kept out of pools)."""
        n = self._n
        return int(np.count_nonzero(self._has[:n] & (self._pool[:n] == _NO_POOL)))

    def aggregate(self, now: float, worker_id: str = "") -> list[PartitionAggregate]:
        """One :class:`PartitionAggregate` per pool with sites in this partition.

        ``measured_w``, ``pv_w``, ``load_w``, ``battery_w``: every fresh site;
        ``uncontrolled_w``: the part of ``measured_w`` from degraded sites and sites in local
        autonomy (the dispatcher subtracts it from what it asks of the others);
        ``sites_following``: flexible sites whose latest telemetry says they follow a cloud
        command (the signals' acknowledgement). Baseline, range, energies and the sustainable
        powers: fresh sites neither degraded nor in local autonomy (neither offers
        flexibility; a site in local autonomy is no fault, so it counts in
        ``sites_autonomous``, not ``sites_degraded``). ``sustain_absorb_w[d]`` sums per site
        ``min(p_max - baseline, e_absorb_wh * 3600 / D)`` clipped at 0; deliver likewise
        with ``baseline - p_min`` and ``e_deliver_wh``.
        """
        n_pools = len(self._pool_ids)
        if n_pools == 0 or self._n == 0:
            return []
        n = self._n
        pool = self._pool[:n]
        in_pool = pool >= 0
        codes = self.status_codes(now)
        num = self._num[:n]
        fresh = (codes == _FRESH) & in_pool
        degraded = fresh & (self._mode[:n] == _DEGRADED)
        autonomous = fresh & (self._mode[:n] == _AUTONOMY)
        flex = fresh & ~degraded & ~autonomous

        def count(mask: np.ndarray) -> np.ndarray:
            return np.bincount(pool[mask], minlength=n_pools)

        def total(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
            return np.bincount(pool[mask], weights=values[mask], minlength=n_pools)

        def col(c: int) -> np.ndarray:
            return np.nan_to_num(num[:, c], nan=0.0)

        sites_total = count(in_pool)
        sites_fresh = count(fresh)
        sites_stale = count((codes == _STALE) & in_pool)
        sites_offline = count((codes == _OFFLINE) & in_pool)
        sites_degraded = count(degraded)
        sites_autonomous = count(autonomous)
        sites_following = count(flex & (self._mode[:n] == _CLOUD))
        sites_planned = count(flex & self._planned[:n])
        measured = total(fresh, col(_GRID))
        uncontrolled = total(degraded | autonomous, col(_GRID))
        pv, load, batt = total(fresh, col(_PV)), total(fresh, col(_LOAD)), total(fresh, col(_BATT))
        baseline = col(_BASELINE)
        p_min, p_max = col(_PMIN), col(_PMAX)
        e_abs, e_del = col(_EABS), col(_EDEL)
        sums = [total(flex, x) for x in (baseline, p_min, p_max, e_abs, e_del)]
        up, down = p_max - baseline, baseline - p_min
        absorb = [
            total(flex, np.clip(np.minimum(up, e_abs * (3600.0 / d)), 0.0, None))
            for d in DURATIONS_S
        ]
        deliver = [
            total(flex, np.clip(np.minimum(down, e_del * (3600.0 / d)), 0.0, None))
            for d in DURATIONS_S
        ]
        # the quarter hour's deviation energy: every site that reported on this quarter hour,
        # a fresh one carried from its message to now with its last deviation
        slot_start = now // SLOT_S * SLOT_S
        in_slot = in_pool & (num[:, _SLOT_START] == slot_start)
        carry_s = np.where(fresh, np.clip(now - num[:, _TS], 0.0, None), 0.0)
        slot_dev = col(_SLOT_DEV) + (col(_GRID) - baseline) * carry_s / 3600.0
        slot_cov = np.minimum(col(_SLOT_COV) + carry_s, SLOT_S)
        slot_sites = count(in_slot)
        slot_dev_wh, slot_cov_s = total(in_slot, slot_dev), total(in_slot, slot_cov)
        heard_ts = np.where(self._has[:n] & in_pool, num[:, _TS], -np.inf)
        newest = np.full(n_pools, -np.inf)
        np.maximum.at(newest, pool[in_pool], heard_ts[in_pool])

        out = []
        for k, pool_id in enumerate(self._pool_ids):
            if sites_total[k] == 0:
                continue
            out.append(
                PartitionAggregate(
                    pool_id=pool_id,
                    partition=self.partition,
                    ts=now,
                    worker_id=worker_id,
                    sites_total=int(sites_total[k]),
                    sites_fresh=int(sites_fresh[k]),
                    sites_stale=int(sites_stale[k]),
                    sites_offline=int(sites_offline[k]),
                    sites_degraded=int(sites_degraded[k]),
                    sites_autonomous=int(sites_autonomous[k]),
                    measured_w=float(measured[k]),
                    baseline_w=float(sums[0][k]),
                    p_min_w=float(sums[1][k]),
                    p_max_w=float(sums[2][k]),
                    e_absorb_wh=float(sums[3][k]),
                    e_deliver_wh=float(sums[4][k]),
                    pv_w=float(pv[k]),
                    load_w=float(load[k]),
                    battery_w=float(batt[k]),
                    newest_source_ts=float(newest[k]) if np.isfinite(newest[k]) else None,
                    sustain_absorb_w=[float(a[k]) for a in absorb],
                    sustain_deliver_w=[float(d[k]) for d in deliver],
                    uncontrolled_w=float(uncontrolled[k]),
                    sites_following=int(sites_following[k]),
                    sites_planned=int(sites_planned[k]),
                    slot_start_ts=slot_start,
                    slot_sites=int(slot_sites[k]),
                    slot_deviation_wh=float(slot_dev_wh[k]),
                    slot_covered_s=float(slot_cov_s[k]),
                )
            )
        return out

    def flexible_sites(self, now: float) -> dict[str, list[str]]:
        """Pool id -> the sites whose flexibility (and so whose envelopes) the pool may count
        on now: fresh sites neither degraded nor in local autonomy, and stale ones whose latest
        telemetry said they follow a plan, for :attr:`plan_grace_s` past their fresh window.
        Those deliver their share open loop until the plan expires: a few telemetry messages
        late (a loaded gateway, a slow uplink) is no reason to shrink the promise and re-plan
        the others;
        a site silent longer is taken as lost, and the early warning goes out."""
        n = self._n
        if n == 0:
            return {}
        pool = self._pool[:n]
        codes = self.status_codes(now)
        heard, window = self._heard()
        late = (codes == _STALE) & self._planned[:n] & (now <= heard + window + self.plan_grace_s)
        counted = (codes == _FRESH) | late
        mode = self._mode[:n]
        flex = counted & (pool >= 0) & (mode != _DEGRADED) & (mode != _AUTONOMY)
        out: dict[str, list[str]] = {}
        for i in np.flatnonzero(flex).tolist():
            out.setdefault(self._pool_ids[int(pool[i])], []).append(self._site_ids[i])
        return out

    def site_summaries(self, now: float, changed_only: bool = True) -> list[SiteSummary]:
        """Summaries of sites whose data or fresh/stale/offline status changed since the last
        call (all sites with ``changed_only=False``); marks them reported."""
        n = self._n
        codes = self.status_codes(now)
        if changed_only:
            idx = np.flatnonzero(self._changed[:n] | (codes != self._reported[:n]))
        else:
            idx = np.arange(n)
        self._changed[idx] = False
        self._reported[idx] = codes[idx]
        return [self._summary(int(i), int(codes[i])) for i in idx]

    def site_summaries_json(self, now: float, changed_only: bool = True) -> list[tuple[str, str]]:
        """Like :meth:`site_summaries`, as ``(site_id, SiteSummary JSON)`` pairs ready for
        ``HSET``, built from whole columns (``tolist``) and f-strings.

        Why not ``SiteSummary.to_json``: ``asdict`` + ``json.dumps`` cost ~17 µs a site,
        and a busy partition changes tens of thousands of sites per cycle. The text is the
        same as ``to_json`` gives (``SiteSummary.from_json`` reads it; a test holds them
        equal): keys in field order, ``repr`` floats, site ids need no escaping (their
        alphabet is ``[A-Za-z0-9_.-]``) and pool ids are escaped once per pool.
        """
        n = self._n
        codes = self.status_codes(now)
        if changed_only:
            idx = np.flatnonzero(self._changed[:n] | (codes != self._reported[:n]))
        else:
            idx = np.arange(n)
        self._changed[idx] = False
        self._reported[idx] = codes[idx]
        if len(idx) == 0:
            return []
        pools = [json.dumps(p) for p in self._pool_ids]
        pool_json = [pools[k] if k >= 0 else "null" for k in self._pool[idx].tolist()]
        status = [_STATUS_OF_CODE[c].value for c in codes[idx].tolist()]
        modes = [_MODE_JSON.get(m, "null") for m in self._mode[idx].tolist()]
        has = self._has[idx].tolist()
        sub = self._num[idx]
        cols = [
            [_json_num(v) for v in sub[:, c].tolist()]
            for c in (_TS, _GRID, _BASELINE, _PMIN, _PMAX, _SOC)
        ]
        seqs = self._seq[idx].tolist()
        site_ids = self._site_ids
        out = []
        for j, i in enumerate(idx.tolist()):
            sid = site_ids[i]
            if has[j]:
                ts, grid, base, pmin, pmax, soc = (c[j] for c in cols)
                seq = str(seqs[j])
            else:
                ts = grid = base = pmin = pmax = soc = seq = "null"
            out.append(
                (
                    sid,
                    f'{{"site_id":"{sid}","pool_id":{pool_json[j]},"status":"{status[j]}",'
                    f'"mode":{modes[j]},"ts":{ts},"seq":{seq},"grid_w":{grid},'
                    f'"baseline_w":{base},"p_min_w":{pmin},"p_max_w":{pmax},"soc_pct":{soc}}}',
                )
            )
        return out

    def _summary(self, i: int, code: int) -> SiteSummary:
        row = self._num[i]
        has = bool(self._has[i])
        k = int(self._pool[i])

        def val(c: int) -> float | None:
            v = float(row[c])
            return None if not has or v != v else v

        return SiteSummary(
            site_id=self._site_ids[i],
            pool_id=self._pool_ids[k] if k >= 0 else None,
            status=_STATUS_OF_CODE[code],
            mode=_MODE_NAME.get(int(self._mode[i])),
            ts=val(_TS),
            seq=int(self._seq[i]) if has else None,
            grid_w=val(_GRID),
            baseline_w=val(_BASELINE),
            p_min_w=val(_PMIN),
            p_max_w=val(_PMAX),
            soc_pct=val(_SOC),
        )

    def pools(self) -> list[str]:
        """Pool ids with at least one site slot here (aggregates may be written for them)."""
        present = set(np.unique(self._pool[: self._n]).tolist()) - {_NO_POOL}
        return [self._pool_ids[k] for k in sorted(present)]
