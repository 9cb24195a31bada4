"""Encryption at rest for the share service (DESIGN.md §7).

- ``envelope``: AES-256-GCM sealing of resource bodies, bound to their type, id and version.
- ``keyring``: the versioned key-encryption keys (KEKs) and the separate blind-index key.
- ``datakeys``: per-patient (and per-network) data keys, wrapped by a KEK; rotation and crypto-shredding.
- ``blind``: keyed hashes of normalised names and identifiers, so search columns hold no plain text.
"""
