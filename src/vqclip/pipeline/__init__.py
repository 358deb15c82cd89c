"""One run end to end, continuing and chaining runs, the memory plan and the media files. Prints nothing."""
