"""anonbench: measure what anonymizing people in images does to object detection."""

__version__ = "0.1.0"
