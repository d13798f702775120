"""The progress line: in a log (stderr not a terminal), whole lines, few of them, the last one once."""

from blurdiff.progress import Progress


def test_log_gets_first_and_last_line_once(capsys):
    with Progress(1000, "sampling", unit="step") as bar:
        for _ in range(1000):
            bar.update(1, loss=0.5)
    lines = capsys.readouterr().err.splitlines()
    # One line at the first update, then at most every 30 s (this loop takes far less), and the
    # final state once: the update that reached the total drew it, close() does not repeat it.
    assert [line.split()[1] for line in lines] == ["1/1000", "1000/1000"]
    assert lines[-1].startswith("sampling: 1000/1000 [100.0%]") and "loss=0.5" in lines[-1]


def test_nothing_to_do_does_not_flood_the_log(capsys):
    """A total of 0 (every image already there) is 'finished' from the start: draw it once,
    not on every one of the updates that follow (a sampler reports each of its 1000 steps)."""
    with Progress(0, "sampling", unit="img") as bar:
        for step in range(1000):
            bar.update(0, step=step)
    assert len(capsys.readouterr().err.splitlines()) <= 2


def test_disabled_is_silent(capsys):
    with Progress(10, "x", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
