"""Names every layer shares: the original variant, the DeepPrivacy2 methods, and the error of a bad parameter.

They live apart from :mod:`anonbench.config` because the method registry (:mod:`anonbench.anonymizers.plugins`),
which config consults while it validates, needs them too: one module below both keeps the import graph acyclic.
"""

ORIGINAL = "org"
DP2_METHODS = ("dp2_fullbody", "dp2_face")


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key."""
