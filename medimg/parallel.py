"""The one way this project spreads work over processes."""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def process_map(function: Callable[..., Any], *iterables: Iterable, workers: int,
                chunksize: int = 1, **pool_options: Any) -> Iterator[Any]:
    """`map(function, *iterables)`: in this process when `workers` <= 1, else in a pool of
    that many processes (`pool_options` go to ProcessPoolExecutor). Results come in input
    order as they are ready, so a caller can store each one before the next arrives."""
    if workers <= 1:
        yield from map(function, *iterables)
        return
    with ProcessPoolExecutor(max_workers=workers, **pool_options) as pool:
        yield from pool.map(function, *iterables, chunksize=chunksize)
