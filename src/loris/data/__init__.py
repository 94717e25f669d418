"""Data utilities: chat templates, ShareGPT standardising, response-only label masks, and the
tokenizing and packing the trainers run (`loris.data.sft`).

Importing this package has no side effects; the public names live in ``loris.chat_templates``.
"""

IGNORE_INDEX = -100
"""The label value the loss skips (PyTorch's and transformers' convention)."""
