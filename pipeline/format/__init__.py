"""The shard format, read: which tars a folder holds, a sample's members and their rules, the `.idx`
files, `classes.json`, the cached per-sample arrays and `ShardSet`. Uses only `pipeline.io` below it."""
