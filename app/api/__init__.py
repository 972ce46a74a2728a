"""HTTP only: blueprints that validate input, call a service and shape the output."""
