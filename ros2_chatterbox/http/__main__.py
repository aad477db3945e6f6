"""`python -m ros2_chatterbox.http`: the HTTP API without ROS (see server.main)."""
import sys

from .server import main

sys.exit(main())
