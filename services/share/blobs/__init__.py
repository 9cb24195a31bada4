"""Attachment content (Binary) kept outside the row store, encrypted (DESIGN.md §7).

- ``store``: the blob-store interface (put / open / delete, streamed) and its filesystem implementation.
- ``crypto``: chunked AES-256-GCM of a blob under its patient's data key, detecting tampering, truncation and
  reordering chunk by chunk.
- ``content``: the content types we accept and the magic-number check of the bytes against the declared type.
"""
