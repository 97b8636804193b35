"""The one stored-event layout and its by-name conversion."""

from __future__ import annotations

import numpy as np
import pytest

from whyprobe.events import EVENT_ROW_COLUMNS, EVENT_ROW_DTYPE, as_event_rows


def test_conversion_goes_by_field_name_not_position():
    # GIVEN rows in another order, without id and cpu, with a field the layout lacks
    other = np.dtype([("pid", "<i8"), ("timestamp", "<i8"), ("duration", "<i8"), ("source", "<i8"), ("op", "<i8"), ("extra", "<i8")])
    rows = np.zeros(2, other)
    rows["pid"], rows["timestamp"], rows["duration"] = [7, 8], [1_000, 2_000], [30, 40]
    rows["source"], rows["op"], rows["extra"] = [1, 3], [3, 1], [99, 99]
    # WHEN converted
    got = as_event_rows(rows)
    # THEN every field lands under its own name, missing ones take their defaults
    assert got.dtype == EVENT_ROW_DTYPE
    assert got["timestamp"].tolist() == [1_000, 2_000]
    assert got["pid"].tolist() == [7, 8]
    assert got["duration"].tolist() == [30, 40]
    assert (got["source"].tolist(), got["op"].tolist()) == ([1, 3], [3, 1])
    assert got["cpu"].tolist() == [-1, -1]
    assert got["id"].tolist() == [0, 0]


def test_rows_already_in_the_layout_are_not_copied():
    rows = np.zeros(3, EVENT_ROW_DTYPE)
    assert as_event_rows(rows) is rows


def test_plain_arrays_are_refused():
    with pytest.raises(TypeError):
        as_event_rows(np.zeros(3, np.int64))


def test_writer_and_reader_share_the_layout(tmp_path):
    from whyprobe.store.reader import open_trace
    from whyprobe.store.writer import Writer

    rows = np.zeros(4, EVENT_ROW_DTYPE)
    for i, name in enumerate(EVENT_ROW_COLUMNS[1:], start=1):
        rows[name] = np.arange(4) * 100 + i
    rows["timestamp"] += 10**18
    with Writer(tmp_path / "t.db") as w:
        w.put_events(rows)
    with open_trace(tmp_path / "t.db") as db:
        got = db.load_events()
    assert got.dtype == EVENT_ROW_DTYPE
    assert got["id"].tolist() == [1, 2, 3, 4]
    for name in EVENT_ROW_COLUMNS[1:]:
        assert got[name].tolist() == rows[name].tolist(), name
