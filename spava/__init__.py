"""Spava: APB for long video (frame-parallel vision, zigzag virtual hosts, fused query pass)."""
