"""TurboVid worker package."""
