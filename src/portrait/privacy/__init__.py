"""Privacy by construction (issue #6): erasure so far (:mod:`portrait.privacy.erasure`)."""
