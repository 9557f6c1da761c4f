"""The demo's ground truth of a meter reading (vpp.demo.observe.TruthLog): the physics of the
last tick before the simulator served that read, not of the tick nearest the reading's
completion (under load a tick or more passes between the two)."""

from __future__ import annotations

import numpy as np
import pytest

from vpp.demo.observe import TruthLog

TICKS = [(0.0, [100.0, 1000.0]), (1.0, [200.0, 2000.0]), (2.0, [300.0, 3000.0])]

# reads served per site, (site, reading completed at) -> truth W
CASES = [
    ("served before the tick that came before the completion", {0: [0.5]}, (0, 1.2), 100.0),
    ("the last read served before the completion", {0: [0.5, 1.4]}, (0, 2.5), 200.0),
    ("a read served after the completion is another reading", {0: [0.5, 2.2]}, (0, 2.1), 100.0),
    ("no read recorded: the tick before the completion", {}, (1, 1.5), 2000.0),
]


@pytest.mark.parametrize(("what", "reads", "reading", "truth"), CASES, ids=[c[0] for c in CASES])
def test_a_reading_is_judged_against_what_was_served(what, reads, reading, truth):
    log = TruthLog(2)
    for t, grid in TICKS:
        log.add(t, np.array(grid))
    for site, times in reads.items():
        for t in times:
            log.served(site, t)
    site, completed = reading
    assert log.site_powers_at([site], [completed]).tolist() == [truth], what


def test_before_the_window_there_is_no_truth():
    log = TruthLog(1)
    log.add(5.0, np.array([1.0]))
    assert log.site_powers_at([0], [4.0]) is None
