"""Adding a device's own records to the node's answer to an upstream's record search."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sensing_node.cascade.records import DEVICE_PREFIX, add_device_records, uncovered
from sensing_node.recording.service import RecordAnswer

TZ = timezone(timedelta(hours=8))
CHANNEL = "31011200001310000101"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


def test_uncovered_parts_of_a_range():
    start, end = at("2026-12-06T08:00:00"), at("2026-12-06T12:00:00")
    spans = [(at("2026-12-06T09:00:00"), at("2026-12-06T10:00:00")),
             (at("2026-12-06T10:00:00.5"), at("2026-12-06T11:00:00"))]
    assert uncovered(start, end, spans) == [
        (start, at("2026-12-06T09:00:00")), (at("2026-12-06T11:00:00"), end)]
    assert uncovered(start, end, [(start - 10, end + 10)]) == []
    assert uncovered(start, end, []) == [(start, end)]


def test_device_items_fill_the_holes_clipped_and_marked():
    start, end = at("2026-12-06T08:00:00"), at("2026-12-06T12:00:00")
    own = {"DeviceID": CHANNEL, "Name": "gate", "FilePath": f"{CHANNEL}@1.000",
           "StartTime": "2026-12-06T10:00:00", "EndTime": "2026-12-06T11:00:00",
           "Secrecy": 0, "Type": "time"}
    answer = RecordAnswer(7, CHANNEL, "gate", start, end, [own],
                          [(at("2026-12-06T10:00:00"), at("2026-12-06T11:00:00"))])
    holes = uncovered(start, end, answer.spans)
    device = [
        {"DeviceID": CHANNEL, "FilePath": "/rec/a.mp4", "StartTime": "2026-12-06T07:30:00",
         "EndTime": "2026-12-06T10:30:00", "Type": "time", "Vendor": "x"},
        {"DeviceID": CHANNEL, "FilePath": "/rec/b.mp4", "StartTime": "2026-12-06T10:10:00",
         "EndTime": "2026-12-06T10:20:00"},  # inside the node's own span: left out
        {"DeviceID": CHANNEL, "StartTime": "garbage", "EndTime": "2026-12-06T10:20:00"},
        {"DeviceID": CHANNEL, "FilePath": "/rec/c.mp4", "StartTime": "2026-12-06T11:30:00",
         "EndTime": "2026-12-06T13:00:00"},
    ]
    assert add_device_records(answer, holes, device, TZ) == 2
    assert [item["FilePath"] for item in answer.items] == [
        DEVICE_PREFIX + "/rec/a.mp4", own["FilePath"], DEVICE_PREFIX + "/rec/c.mp4"]
    first, _, last = answer.items
    assert (first["StartTime"], first["EndTime"]) == ("2026-12-06T08:00:00",
                                                      "2026-12-06T10:00:00")
    assert (last["StartTime"], last["EndTime"]) == ("2026-12-06T11:30:00", "2026-12-06T12:00:00")
    assert "Vendor" not in first and first["Secrecy"] == 0
    assert len(answer.bodies()) == 1 and b"<SumNum>3</SumNum>" in answer.bodies()[0]
