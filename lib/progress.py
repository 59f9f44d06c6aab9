"""Progress bars: one switchable helper over ``tqdm.auto`` for every long loop in ``lib``."""
from __future__ import annotations


class _Silent:
    """What :func:`bar` returns when disabled: iterates and accepts tqdm's calls, shows nothing."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, line: str) -> None:
        pass


def bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, or a silent stand-in when not ``enabled``.

    Either way the result iterates over ``iterable`` and has ``update``, ``set_postfix``,
    ``write`` (a line above the bar) and ``close``, so callers never branch on whether a bar
    is shown.
    """
    if not enabled:
        return _Silent(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
