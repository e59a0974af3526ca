"""The documentation, shipped in the wheel as package data: `dualmcu docs NAME` shows a page."""
