"""The package version (also written into every converted model), in a module of its own so that any
module can read it without importing the package's top level."""

__version__ = "0.1.0"
