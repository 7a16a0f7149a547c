"""One router per resource: health, models, inference."""
