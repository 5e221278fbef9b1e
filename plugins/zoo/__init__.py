"""Released models by name: python -m framework.zoo list | show NAME | prepare NAME."""
