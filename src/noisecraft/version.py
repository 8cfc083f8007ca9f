"""The version of noisecraft: one number, read by the package, the PNG parameters and the server."""

__version__ = "0.1.0"
