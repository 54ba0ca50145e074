"""Audio search: `wavlink-index` builds an index file, `WavLinkIndex` / `wavlink-search` query it."""

from .searcher import Hit, WavLinkIndex

__all__ = ["Hit", "WavLinkIndex"]
