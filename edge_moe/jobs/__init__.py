"""APEX: workflows that combine roles (plan, calibrate, profile, demo)."""
