"""Files in and out (PyAV): video decoding and encoding, sound, the MP4 360° metadata, image sequences."""
