"""One APIRouter per area of the HTTP API; app.create_app includes them all."""
