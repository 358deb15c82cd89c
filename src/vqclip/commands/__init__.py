"""The commands: each module parses its flags, calls the library and reports. The only layer that prints."""
