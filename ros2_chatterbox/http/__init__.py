"""The HTTP door to the speech core, laid out as FastAPI's "bigger applications":

  app.py        create_app(core, settings): assembles the routers, error handlers and middleware
  deps.py       the dependencies handlers receive: the core, the HTTP settings
  routers/      openai.py (/v1/audio/speech, /v1/models), voices.py, custom.py (/tts, /api/model-info),
                health.py (/health, /health/ready), web.py (the web page)
  schemas.py    request and response models (limits follow the parameters)
  errors.py     OpenAI-shaped errors and how core errors map to statuses
  streaming.py  job listener -> event loop -> streamed bytes or server-sent events
  access.py     API key and body-size limits;  security.py  Host / Origin policy and hardening headers
  server.py     HttpServer: uvicorn on a thread of its owner (the node, or `python -m ros2_chatterbox.http`)

Nothing here imports rclpy; nothing below this package imports FastAPI.
"""
