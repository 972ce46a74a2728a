"""Staging: one host with every role; its name here or in EMAILSERVICE_STAGING_HOST."""

import os

staging = [(os.environ.get("EMAILSERVICE_STAGING_HOST", "staging.example.com"), {"_sudo": True})]
