"""Built-in data sources, evaluators, presets and the demo data set."""
