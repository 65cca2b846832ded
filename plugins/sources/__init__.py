"""Built-in data sources: ``jsonl`` manifests, ``webdataset`` shards, label data sets and the
digits-av demo set. Each module imports only `modaloom.core` (and its siblings here)."""
