"""TurboVid models package."""
