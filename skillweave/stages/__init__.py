"""The pipeline's stages, one plugin module each; `skillweave.app.load_plugins` imports them all."""
