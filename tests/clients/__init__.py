"""Real clients (Node ws, Chromium) through the proxy."""
