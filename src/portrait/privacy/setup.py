"""Turning privacy on for a new database: one place for the CLI, the server and the demo."""

from __future__ import annotations

from portrait.store.embedded import EmbeddedStore


def protect(store: EmbeddedStore, *, pseudonymise: bool, encrypt: bool) -> None:
    """Pseudonymise user ids and/or encrypt personal fields from now on.

    The keys are loaded from the environment or their files and made there
    (mode 0600) when absent (privacy/pseudonym.py, privacy/crypto.py). A
    database that already has either stays as it is; one that already holds
    data cannot be switched on (re-ingest into a new one).
    """
    if pseudonymise:
        from portrait.privacy.pseudonym import Pseudonymizer, load_key

        key = load_key(create=True)
        assert key is not None
        store.enable_pseudonyms(Pseudonymizer(key))
    if encrypt:
        from portrait.privacy.crypto import load_master

        master = load_master(create=True)
        assert master is not None
        store.enable_encryption(master)
