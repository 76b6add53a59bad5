"""The engine: registry, errors, artifacts, distributed helpers, config composition, stage specs and
planning. It imports no stage, eval configuration, method or domain (tests/test_layers.py checks)."""
