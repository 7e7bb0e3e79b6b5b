"""Data sources: where the original COCO files come from and how they are checked."""
