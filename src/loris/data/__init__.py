"""Data utilities: chat templates, ShareGPT standardising, response-only label masks.

Importing this package has no side effects; the public names live in ``loris.chat_templates``.
"""
