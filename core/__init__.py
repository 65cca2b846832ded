"""modaloom core: registry, specs, composition, runner, data plumbing and CLI."""
