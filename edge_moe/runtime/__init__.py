"""BASE: the torch-free artifact runtime (manifest, chat templates, runners, gate file, liveness, toy models)."""
