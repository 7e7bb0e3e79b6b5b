"""Anonymization methods: ground-truth person masks, classic filters, the DeepPrivacy2 adapter."""
