"""tisynth: transferable image synthesis for remote-sensing semantic segmentation."""

__version__ = "0.1.0"
