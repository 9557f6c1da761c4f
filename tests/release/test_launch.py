"""The process launcher's bookkeeping: ERROR lines counted per log, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpp.release.launch import ErrorCount, ProcessLauncher, count_errors


@pytest.mark.parametrize(
    ("lines", "errors"),
    [
        ([], 0),
        (["2026-11-30 03:00:00,000 INFO cloud.ingest.worker: started"], 0),
        (["2026-11-30 03:00:00,000 ERROR cloud.ingest.worker: cycle failed"], 1),
        (
            [
                "2026-11-30 03:00:00,000 WARNING cloud.ingest.worker: an ERROR word in a warning",
                "2026-11-30 03:00:01,000 ERROR cloud.rollout: x",
                "ERROR: a bare line",
                "Traceback (most recent call last):",
            ],
            2,
        ),
    ],
)
def test_error_lines_are_counted(tmp_path: Path, lines: list[str], errors: int) -> None:
    log = tmp_path / "worker.log"
    log.write_text("".join(f"{line}\n" for line in lines))
    assert count_errors(log) == errors


def test_no_log_yet_is_no_error(tmp_path: Path) -> None:
    assert count_errors(tmp_path / "missing.log") == 0


def test_a_growing_log_is_counted_on_as_a_fresh_count_would(tmp_path: Path) -> None:
    """The launcher's counter reads on from where it stopped: the same figure as a count
    from the start after each append, a half-written last line, a shrunken or lost file."""
    log = tmp_path / "worker.log"
    counter = ErrorCount(log)
    assert counter() == 0
    steps = [
        "2026-11-30 03:00:00,000 ERROR cloud.ingest.worker: one\n",
        "2026-11-30 03:00:01,000 INFO cloud.ingest.worker: fine\nERROR: bare",
        " line, now whole\n2026-11-30 03:00:02,000 ERR",
        "OR cloud.rollout: split mid-word\n",
        "2026-11-30 03:00:03,000 WARNING cloud.x: an ERROR word\n",
    ]
    seen = []
    for text in steps:
        with log.open("a") as f:
            f.write(text)
        seen.append(counter())
        assert seen[-1] == count_errors(log)
    assert seen == [1, 2, 2, 3, 3]
    log.write_text("ERROR: after a truncation\n")
    assert counter() == count_errors(log) == 1
    log.unlink()
    assert counter() == 0


async def test_a_release_that_is_not_installed_is_refused(tmp_path: Path) -> None:
    launcher = ProcessLauncher(tmp_path / "releases", [], {}, tmp_path / "logs")
    with pytest.raises(FileNotFoundError, match=r"release 0\.9\.9 is not installed in"):
        await launcher.start("worker", "0.9.9", "worker-0.9.9-1")
    with pytest.raises(ValueError, match=r"'\.\./x' is not a release version"):
        await launcher.start("worker", "../x", "worker-x")
    assert launcher.instances() == []
