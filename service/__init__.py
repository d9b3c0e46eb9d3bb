"""TurboVid service package."""
