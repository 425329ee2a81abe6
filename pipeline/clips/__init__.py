"""Clips out of shards: `ClipLoader`, the pure sampling and batching rules, and the backends that decode
and augment (host threads on a CPU, DALI). Uses `pipeline.format` and `pipeline.io`; DALI is imported
only where a DALI backend is chosen."""
