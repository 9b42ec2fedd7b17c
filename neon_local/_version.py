"""The package's version, in a module of its own so that modules needing it (the emulator's state, `version`)
do not import the package's __init__, which re-exports them."""

__version__ = "0.1.0"
