"""The L1 snapshot: bounded, restored as stale (due for a refresh), a bad file starts cold."""

from __future__ import annotations

from pathlib import Path

from sidecar.cache.memory import MemoryStore
from sidecar.cache.snapshot import FILE_NAME, L1Snapshot
from sidecar.cache.store import CacheEntry
from sidecar.entitlements.model import EntitlementsState
from tests.unit.test_entitlement_service import stigg_state

CODEC = (EntitlementsState.to_json, EntitlementsState.from_json)

NOW = 1_000_000.0


def l1() -> MemoryStore[EntitlementsState]:
    return MemoryStore(10_000_000, EntitlementsState.approx_bytes, lambda: NOW)


def filled(count: int) -> MemoryStore[EntitlementsState]:
    store = l1()
    for n in range(count):
        state = EntitlementsState.from_stigg(f"c{n}", None, stigg_state(), NOW)
        store.set_nowait((f"c{n}", None), CacheEntry(state, NOW + 30, NOW + 3600))
    return store


def test_restored_entries_are_stale_but_servable(tmp_path: Path) -> None:
    written = L1Snapshot(tmp_path, filled(3), *CODEC, clock=lambda: NOW).write()
    assert written == 3
    restored_into = l1()
    assert L1Snapshot(tmp_path, restored_into, *CODEC, clock=lambda: NOW + 10).restore() == 3
    entry = restored_into.get_nowait(("c1", None))
    assert entry is not None
    assert not entry.is_fresh(NOW + 10)  # Stigg is asked first
    assert entry.is_usable(NOW + 10)
    assert entry.value.entitlements["sso"].is_granted


def test_snapshot_is_bounded_and_expired_entries_are_left_out(tmp_path: Path) -> None:
    snapshot = L1Snapshot(tmp_path, filled(100), *CODEC, max_bytes=4000, clock=lambda: NOW)
    written = snapshot.write()
    assert 0 < written < 100
    assert (tmp_path / FILE_NAME).stat().st_size < 4200
    later = L1Snapshot(tmp_path, l1(), *CODEC, clock=lambda: NOW + 7200)  # past stale_until
    assert later.restore() == 0


def test_a_corrupt_snapshot_starts_cold(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b'{"version": 1, "entries": [[1, 2]]}')
    assert L1Snapshot(tmp_path, l1(), *CODEC, clock=lambda: NOW).restore() == 0
    (tmp_path / FILE_NAME).write_bytes(b"not json")
    assert L1Snapshot(tmp_path, l1(), *CODEC, clock=lambda: NOW).restore() == 0
