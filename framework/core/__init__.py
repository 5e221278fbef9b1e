"""The core: every error type, the registries of parts and how they find their plugins, the config schema's markers, the config loader and validator, and where shipped configs are found."""
