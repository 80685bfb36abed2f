"""`Store.write` updates a device's row where it lies: the row then holds exactly the values
of the last write (NULLs included), and the other rows are left as they were."""

from __future__ import annotations

from pathlib import Path

from sensing_node.devices.store import DEVICE_COLUMNS, Store


def row(device_id: str, **values: object) -> tuple[object, ...]:
    base: dict[str, object] = {column: None for column in DEVICE_COLUMNS}
    base.update(id=device_id, transport="udp", remote="10.0.0.1:5060", online=1,
                registered_at=1.5, last_keepalive=2.25, expires_at=3601.5, quirks="")
    base.update(values)
    return tuple(base[column] for column in DEVICE_COLUMNS)


def test_a_row_written_again_holds_the_last_values_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.db")
    first = row("31011200001320000001", name="Gate", manufacturer="Hikvision", online=1)
    other = row("31011200001320000002", name="Yard")

    def write_and_load(rows: list[tuple[object, ...]]) -> dict[str, dict[str, object]]:
        store.executor.submit(store.write, rows, []).result()
        devices, _ = store.executor.submit(store.load).result()
        return {d["id"]: d for d in devices}

    try:
        write_and_load([first, other])
        again = row("31011200001320000001", name=None, manufacturer="Dahua", online=0,
                    remote="10.0.0.9:5070", last_keepalive=1e9 + 0.1)
        stored = write_and_load([again])
        assert tuple(stored["31011200001320000001"][c] for c in DEVICE_COLUMNS) == again
        assert tuple(stored["31011200001320000002"][c] for c in DEVICE_COLUMNS) == other
        assert len(stored) == 2
    finally:
        store.close()
