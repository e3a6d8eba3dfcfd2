"""Moderation on the worker: pictures screened before anyone sees them, photos of people refused."""
