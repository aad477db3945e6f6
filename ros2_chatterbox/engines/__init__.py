"""Engine implementations (see ros2_chatterbox/engine.py for the interface)."""
