import numpy as np
import pytest
import torch

from hdlm.errors import ConfigError
from hdlm.schedules import (
    block,
    flat,
    from_spec,
    from_table,
    plot_schedule,
    quenched_ar,
    slide,
)

h = 0.5  # shorthand for hand-written tables


def all_schedules(length):
    """Every built-in constructor over a few widths and step counts."""
    yield quenched_ar(length)
    for steps in (1, 3):
        yield flat(length, steps)
    for width in (1, 2, 3, 4):
        for k in (1, 2, 5):
            yield block(length, width, k)
            yield slide(length, width, k)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (quenched_ar(3), [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]]),
        (flat(2, 2), [[1, 1], [h, h], [0, 0]]),
        (block(4, 2, 2), [[1, 1, 1, 1], [h, h, 1, 1], [0, 0, 1, 1], [0, 0, h, h], [0, 0, 0, 0]]),
        (block(3, 2, 1), [[1, 1, 1], [0, 0, 1], [0, 0, 0]]),  # last block shorter
        (
            slide(4, 2, 2),
            [[1, 1, 1, 1], [h, 1, 1, 1], [0, h, 1, 1], [0, 0, h, 1], [0, 0, 0, h], [0, 0, 0, 0]],
        ),
        (
            slide(5, 4, 2),
            [[1, 1, 1, 1, 1], [h, h, 1, 1, 1], [0, 0, h, h, 1], [0, 0, 0, 0, h], [0, 0, 0, 0, 0]],
        ),
        (slide(2, 1, 3), [[1, 1], [2 / 3, 1], [1 / 3, 1], [0, 1], [0, 2 / 3], [0, 1 / 3], [0, 0]]),
    ],
)
def test_tables_by_hand(schedule, expected):
    assert schedule.table.dtype == torch.float32
    torch.testing.assert_close(schedule.table, torch.tensor(expected, dtype=torch.float32))
    assert (schedule.num_steps, schedule.length) == (len(expected) - 1, len(expected[0]))


@pytest.mark.parametrize("length", [1, 5, 7, 16])
def test_invariants(length):
    for schedule in all_schedules(length):
        table = schedule.table
        assert table.shape == (schedule.num_steps + 1, length)
        assert (table[0] == 1).all() and (table[-1] == 0).all()
        assert (table[1:] <= table[:-1]).all()
        assert all(schedule.active(s).any() for s in range(1, schedule.num_steps + 1)), "idle step"
        torch.testing.assert_close(from_spec(schedule.name, length).table, table)


@pytest.mark.parametrize("length", [7, 16])
def test_slide_special_cases(length):
    assert torch.equal(slide(length, 1, 1).table, quenched_ar(length).table)
    assert torch.equal(slide(length, 3, 1).table, block(length, 3, 1).table)
    assert torch.equal(block(length, 1, 1).table, quenched_ar(length).table)


@pytest.mark.parametrize("width, tau", [(1, 3), (3, 2), (4, 2), (4, 4), (4, 8), (5, 3)])
def test_slide_band(width, tau):
    schedule = slide(40, width, tau)
    in_flight = [int(schedule.active(s).sum()) for s in range(1, schedule.num_steps + 1)]
    assert max(in_flight) == width and in_flight[tau] == width  # away from the left edge
    steps_taken = sum(schedule.active(s).long() for s in range(1, schedule.num_steps + 1))
    assert (steps_taken == tau).all()  # every position takes tau steps from 1 to 0


@pytest.mark.parametrize("schedule", [quenched_ar(6), flat(5, 3), block(7, 3, 2), slide(9, 4, 3)])
def test_states_partition_positions(schedule):
    for s in range(1, schedule.num_steps + 1):
        before, after = schedule.levels(s)
        settled, active, untouched = (
            schedule.settled(s - 1),
            schedule.active(s),
            schedule.untouched(s),
        )
        assert (settled.long() + active.long() + untouched.long() == 1).all()
        assert torch.equal(active, before > after)  # built-in schedules never pause a position
        assert torch.equal(schedule.newly_settled(s), active & schedule.settled(s))
        assert torch.equal(schedule.settled(s), schedule.settle_step <= s)
        first, stop = schedule.active_span(s)
        assert active[first:stop].all() and active.sum() == stop - first


def test_custom_table_pause_stays_active():
    schedule = from_table([[1, 1], [h, 1], [h, 1], [0, h], [0, 0]])
    assert schedule.active(2).tolist() == [True, False]
    assert schedule.active_span(2) == (0, 1)
    assert schedule.newly_settled(3).tolist() == [True, False]
    assert schedule.settle_step.tolist() == [3, 4]


def test_step_out_of_range():
    schedule = quenched_ar(3)
    for bad in (
        lambda: schedule.active(0),
        lambda: schedule.levels(4),
        lambda: schedule.settled(-1),
    ):
        with pytest.raises(IndexError):
            bad()


@pytest.mark.parametrize(
    "table, problem",
    [
        ([1, 0], "shape (2,)"),
        ([[1, 1]], "at least 2 rows"),
        ([[1, 1], [0, 1.5], [0, 0]], "value 1.5 at step 1, column 1 is outside [0, 1]"),
        ([[1, 1], [float("nan"), 0]], "step 1, column 0 is outside"),
        ([[1, h], [0, 0]], "row 0 is not all ones (column 1"),
        ([[1, 1], [0, h]], "last row is not all zeros (column 1"),
        ([[1, 1, 1], [1, h, 1], [1, 1, h], [0, 0, 0]], "column 1 increases from step 1 to 2"),
        ([["a", "b"], ["c", "d"]], "not numeric"),
    ],
)
def test_from_table_errors(table, problem):
    with pytest.raises(ConfigError, match="row 0 all ones") as error:
        from_table(table)
    assert problem in str(error.value)


def test_from_table_accepts_arrays_and_copies():
    array = np.array([[1.0, 1.0], [0.25, 1.0], [0.0, 0.0]])
    schedule = from_table(array)
    array[1, 0] = 0.9
    assert schedule.table[1, 0] == 0.25 and schedule.name == "custom"


@pytest.mark.parametrize("spec", ["bogus", "flat", "flat:x", "flat:-2", "block:2", "slide:1:2:3"])
def test_from_spec_errors(spec):
    with pytest.raises(ConfigError, match="slide:WIDTH:TAU"):
        from_spec(spec, 8)


@pytest.mark.parametrize("spec", ["flat:0", "block:0:2", "slide:2:0"])
def test_non_positive_arguments(spec):
    with pytest.raises(ConfigError, match="must be a positive integer"):
        from_spec(spec, 8)


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".csv"])
def test_from_spec_file(tmp_path, suffix):
    table = block(5, 2, 2).table
    path = tmp_path / f"table{suffix}"
    if suffix == ".pt":
        torch.save(table, path)
    elif suffix == ".npy":
        np.save(path, table.numpy())
    else:
        np.savetxt(path, table.numpy(), delimiter=",")
    schedule = from_spec(f"file:{path}", 5)
    assert torch.equal(schedule.table, table) and schedule.name == f"file:{path}"
    with pytest.raises(ConfigError, match="has 5 columns but sequences have length 6"):
        from_spec(f"file:{path}", 6)


def test_from_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        from_spec(f"file:{tmp_path / 'missing.pt'}", 4)
    with pytest.raises(ConfigError, match=r"\.pt, \.npy or \.csv"):
        from_spec(f"file:{tmp_path / 'table.txt'}", 4)
    (tmp_path / "bad.csv").write_text("not,a,number\n")
    with pytest.raises(ConfigError, match="cannot read"):
        from_spec(f"file:{tmp_path / 'bad.csv'}", 3)


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_plot(tmp_path, suffix, magic):
    path = plot_schedule(slide(12, 4, 3), tmp_path / f"schedule{suffix}")
    assert path.read_bytes().startswith(magic)


def test_plot_bad_suffix(tmp_path):
    with pytest.raises(ConfigError, match=r"\.png or \.svg"):
        plot_schedule(flat(3, 2), tmp_path / "schedule.jpg")


def test_block_offset_narrows_the_first_block():
    """block:W:K:O: block (i + O) // W, so the first block has W - O positions (BD3-LM's BOS)."""
    schedule = from_spec("block:4:2:1", 7)
    assert schedule.name == "block:4:2:1"
    assert schedule.num_steps == 4  # ceil((7 + 1) / 4) blocks of 2 steps
    first_clean = (schedule.table == 0).float().argmax(0)  # the step each position settles
    assert first_clean.tolist() == [2, 2, 2, 4, 4, 4, 4]
    assert torch.equal(from_spec(schedule.name, 7).table, schedule.table)
    assert torch.equal(from_spec("block:4:2:0", 7).table, block(7, 4, 2).table)
    with pytest.raises(ConfigError, match="offset"):
        from_spec("block:4:2:4", 7)
