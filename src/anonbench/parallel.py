"""Per-image work over all cores, with a progress bar, and sharding over pods or GPUs."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/n`` (0-based shard ``i`` of ``n``).

    Raises:
        ValueError: If the text is not ``i/n`` with ``0 <= i < n``.
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, for example 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def take_shard(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every n-th item starting at i: shards are disjoint, cover everything and stay balanced."""
    index, count = shard
    return list(items[index::count])


def map_with_progress(
    fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, unit: str = "img"
) -> Iterator[R]:
    """Apply ``fn`` to every item, in order, over ``workers`` processes, showing items/s.

    Args:
        fn: A picklable top-level function.
        items: Work items.
        workers: Processes; 1 runs in this process (easier to debug and profile).
        desc: Progress bar label.
        unit: Progress bar unit.

    Yields:
        Results in the order of ``items``.
    """
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)
    results: Iterable[R]
    with bar:
        if workers <= 1 or len(items) <= 1:
            results = map(fn, items)
            for result in results:
                bar.update()
                yield result
            return
        ctx = mp.get_context("forkserver")
        with ctx.Pool(min(workers, len(items))) as pool:
            for result in pool.imap(fn, items, chunksize=1):
                bar.update()
                yield result
