"""Dependency audits and SBOMs: what the images are made of and what is known against it."""
