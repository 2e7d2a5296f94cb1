"""Backends: the device-specific code behind the engine's small interfaces."""
