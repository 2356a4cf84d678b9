"""Models: SPyNet, BasicVSR, IconVSR (BasicSR-compatible parameter names)."""
