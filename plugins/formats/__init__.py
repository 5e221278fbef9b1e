"""Foreign weight formats: python -m framework.convert --from NAME / --to NAME."""
