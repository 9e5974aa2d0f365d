"""Small helpers every layer shares: atomic file writes and memory accounting."""
