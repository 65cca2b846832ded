"""Built-in evaluators: retrieval, captioning, QA and zero-shot classification. Each module
imports only `modaloom.core` (and its siblings here)."""
