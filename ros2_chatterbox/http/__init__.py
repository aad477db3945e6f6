"""The HTTP side of ros2_chatterbox. Importing this package imports nothing heavy (no FastAPI, no torch)."""
