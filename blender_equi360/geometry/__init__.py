"""The sphere and the camera: the camera model, flat ↔ equirect projection, the poles' repair (numpy)."""
