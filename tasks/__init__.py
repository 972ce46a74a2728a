"""The deploy's steps, one module per service; deploy.py runs them in order. Imports nothing
from app/: the deploy ships the service as a wheel, it does not run it."""
