"""Audio search: the incremental SQLite index behind `wavlink-index` and `wavlink-search` (`index`)."""
