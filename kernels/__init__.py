"""TurboVid kernels package."""
