"""The process-wide group flush: every request answered by a flush that started after it, flushes shared."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from appliance.durable import flush


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The real syncfs, with the start of every call recorded."""
    import time

    starts: list[float] = []
    real = flush.sync_filesystem

    def recorded(fd: int) -> None:
        starts.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(flush, "sync_filesystem", recorded)
    return starts


def test_one_flusher_per_filesystem(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert flush.flusher_for(tmp_path / "a") is flush.flusher_for(tmp_path / "b")


def test_concurrent_requests_share_flushes_and_each_waits_for_a_later_one(tmp_path: Path,
                                                                           counted: list[float]) -> None:
    flusher = flush.GroupFlush(tmp_path)

    async def writer(n: int) -> tuple[float, float]:
        (tmp_path / f"f{n}").write_bytes(b"x" * 4096)
        asked = asyncio.get_running_loop().time()
        await flusher.request()
        return asked, asyncio.get_running_loop().time()

    async def run() -> list[tuple[float, float]]:
        return await asyncio.gather(*(writer(n) for n in range(200)))

    results = asyncio.run(run())
    assert len(results) == 200
    assert 1 <= len(counted) < 200  # shared: far fewer flushes than requests
    for asked, answered in results:  # loop.time() is time.monotonic()
        assert any(asked <= start <= answered for start in counted), "answered by a flush begun before it"


def test_requests_from_several_event_loops_are_all_answered(tmp_path: Path) -> None:
    flusher = flush.GroupFlush(tmp_path)
    done: list[int] = []

    def loop_thread(n: int) -> None:
        async def run() -> None:
            for _ in range(20):
                await flusher.request()
            done.append(n)

        asyncio.run(run())

    threads = [threading.Thread(target=loop_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == [0, 1, 2, 3]
