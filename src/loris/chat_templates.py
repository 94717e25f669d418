"""Chat templates and dataset helpers under the names Unsloth users know.

``from loris.chat_templates import get_chat_template, standardize_sharegpt, train_on_responses_only``
"""

from __future__ import annotations

from loris.data.chat_templates import get_chat_template
from loris.data.custom_template import CustomChatTemplate, apply_chat_template
from loris.data.masking import detect_response_parts, response_only_labels, train_on_responses_only
from loris.data.registry import TEMPLATES as CHAT_TEMPLATES
from loris.data.registry import template_names
from loris.data.sharegpt import standardize_data_formats, standardize_sharegpt, to_sharegpt

__all__ = [
    "CHAT_TEMPLATES",
    "CustomChatTemplate",
    "apply_chat_template",
    "detect_response_parts",
    "get_chat_template",
    "response_only_labels",
    "standardize_data_formats",
    "standardize_sharegpt",
    "template_names",
    "to_sharegpt",
    "train_on_responses_only",
]
