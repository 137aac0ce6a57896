"""Streams of frames: their sources (`classifier publish --video/--frames`) and their results in order
(`classifier results`)."""
