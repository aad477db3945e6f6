"""Chatterbox Turbo text-to-speech for ROS 2 and HTTP.

The generated interfaces (``ros2_chatterbox.srv``, ``ros2_chatterbox.action``) are installed by the ROS build
into the interpreter's site-packages; when this package is imported from a source checkout, extend the package
path so that they are found there too.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
