"""Small helpers every layer shares: atomic file writes, memory accounting and table formatting."""
