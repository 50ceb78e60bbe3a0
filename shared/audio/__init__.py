"""Audio: containers and resampling, compressed codecs, served formats, tempo."""
