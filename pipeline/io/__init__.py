"""Bytes and places: a local path or a URL (`storage`), crash-safe files (`files`), byte ranges of many
files (`filepool`). Knows nothing of the shard format."""
