"""Domain services: receive their session and collaborators explicitly; know nothing of Flask."""
